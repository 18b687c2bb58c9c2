//! `natgw status`: what natgw manages, whether the live system still matches it, and
//! what it translated.

use natgw_core::observed::Conntrack;
use natgw_core::{Desired, Plan};
use natgw_linux::nft::Counter;
use serde::Serialize;

use super::gateway;
use crate::cli::GatewayArgs;
use crate::exit;
use crate::output;

#[derive(Serialize)]
struct Status {
    /// `up`: natgw's table is installed; `down`: it is not.
    state: &'static str,
    in_sync: bool,
    desired: Desired,
    /// Changes `up` would make now: empty when nothing drifted.
    drift: Plan,
    /// How new detection differs from the recorded gateway.
    rediscovered: Vec<String>,
    /// Why natgw's record cannot be used, when it cannot.
    record_problem: Option<String>,
    counters: Vec<Counter>,
    conntrack: Option<Conntrack>,
    /// natgw's live translations, from one ctnetlink dump.
    translations: Option<natgw_core::mapping::Summary>,
    /// The data plane that translates (`nftables` or `ebpf`).
    dataplane: &'static str,
    /// The eBPF plane's programs: where pinned, whether attached, their counters and
    /// bindings (only with `dataplane = "ebpf"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ebpf: Option<natgw_linux::ebpf::PlaneStatus>,
    /// The HA pair, with `[ha]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ha: Option<super::ha::HaStatus>,
}

pub fn run(args: &GatewayArgs, json: bool) -> exit::Result<i32> {
    let gateway::Prepared {
        observed,
        desired,
        dataplane,
        rediscovered,
        settings,
        lock: _lock,
        ..
    } = gateway::prepare(args, "status", true)?;
    let drift = natgw_core::plan(&desired, &observed);
    for change in &drift.changes {
        tracing::info!(drift = %change, "the live system differs from the gateway");
    }
    let installed = observed.table.is_some();
    let counters = if installed {
        dataplane.counters().map_err(exit::problem)?
    } else {
        Vec::new()
    };
    let ebpf = match desired.dataplane.ebpf() {
        Some(_) => {
            natgw_linux::ebpf::status(Some(desired.public.name.as_str())).map_err(exit::problem)?
        }
        None => None,
    };
    // Conntrack's entries are not the eBPF plane's IPv4 translations (it sees those
    // flows untranslated, and leaves them out); its IPv6 ones (nat66, nptv6) are.
    let conntrack_translates = match desired.dataplane.ebpf() {
        None => ebpf.is_none(),
        Some(_) => desired
            .ipv6
            .as_ref()
            .is_some_and(|g| g.translation != natgw_core::Ipv6Translation::Routed),
    };
    let translations = (installed && conntrack_translates)
        .then(|| translations(&desired))
        .flatten();
    let status = Status {
        dataplane: dataplane.name(),
        ebpf,
        translations,
        state: if installed { "up" } else { "down" },
        in_sync: drift.is_empty() && observed.state_problem.is_none(),
        desired,
        drift,
        rediscovered,
        record_problem: observed.state_problem.clone(),
        counters,
        conntrack: observed.conntrack,
        ha: settings.ha.as_ref().and_then(super::ha::status),
    };
    if json {
        output::json(&status);
    } else {
        print_human(&status);
    }
    Ok(if status.in_sync {
        exit::OK
    } else {
        exit::PROBLEM
    })
}

/// How many hosts and destinations the top lists show.
const TOP: usize = 5;

/// natgw's live translations summarised, from one ctnetlink dump (`None` when
/// conntrack cannot be read).
pub fn translations(desired: &Desired) -> Option<natgw_core::mapping::Summary> {
    let mut view = natgw_core::mapping::TranslationView::new();
    natgw_linux::ctnetlink::Ctnetlink::open()
        .and_then(|mut ct| {
            ct.translations(|t| {
                view.insert(t);
            })
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot list the translations"))
        .ok()?;
    Some(view.summary(TOP, natgw_core::mapping::ports_allowed(desired)))
}

/// `--watch`: the human status again every `interval`, in place, until interrupted.
pub fn watch(args: &GatewayArgs, interval: std::time::Duration) -> exit::Result<i32> {
    loop {
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[H\x1b[2J");
        run(args, false)?;
        std::thread::sleep(interval);
    }
}

fn print_translations(t: &natgw_core::mapping::Summary) {
    let protocols: Vec<String> = t
        .by_protocol
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!(
        "translations: {} in use ({})",
        t.total,
        if protocols.is_empty() {
            "none".to_string()
        } else {
            protocols.join(", ")
        }
    );
    if !t.top_hosts.is_empty() {
        println!("  top private hosts:");
        for h in &t.top_hosts {
            println!("    {:<40} {:>8}", h.host, h.translations);
        }
    }
    if !t.top_destinations.is_empty() {
        println!("  top destinations:");
        for d in &t.top_destinations {
            println!(
                "    {:<40} {:>8}",
                format!("{} {}", d.protocol, d.destination),
                d.translations
            );
        }
    }
    for u in &t.port_use {
        println!(
            "  ports of {}: {} of {} used towards {} {} ({:.1} %)",
            u.public,
            u.ports_used,
            u.ports_allowed,
            u.protocol,
            u.destination,
            u.ports_used as f64 * 100.0 / f64::from(u.ports_allowed.max(1))
        );
    }
}

fn print_ebpf(e: &natgw_linux::ebpf::PlaneStatus) {
    let attached = if e.attached.is_empty() {
        "NOT ATTACHED".to_string()
    } else {
        e.attached.join(", ")
    };
    println!("ebpf:       programs {attached}; pinned in {}", e.pin_dir);
    let per: Vec<String> = e.bindings.iter().map(|(p, n)| format!("{p} {n}")).collect();
    let busiest = e.bindings.values().copied().max().unwrap_or(0);
    println!(
        "  bindings: {} (of {} per protocol, busiest {:.1} % full)",
        if per.is_empty() {
            "none".to_string()
        } else {
            per.join(", ")
        },
        e.bindings_capacity,
        busiest as f64 * 100.0 / e.bindings_capacity.max(1) as f64
    );
    for (name, value) in &e.counters {
        println!("  {name:<24} {value:>12}");
    }
}

fn print_human(status: &Status) {
    print!("{}", output::describe(&status.desired));
    if let Some(ha) = &status.ha {
        super::ha::print_status(ha);
    }
    if let Some(problem) = &status.record_problem {
        println!("record:     UNUSABLE: {problem}");
    }
    for line in &status.rediscovered {
        println!("note: {line}");
    }
    match (status.state, status.in_sync) {
        ("down", _) => println!(
            "state:      down (run `natgw up`)\nwould change:\n{}",
            status.drift
        ),
        (_, true) => println!("state:      up, in sync with the desired gateway"),
        _ => println!(
            "state:      up, DRIFTED; `natgw up` would change:\n{}",
            status.drift
        ),
    }
    if !status.counters.is_empty() {
        println!("counters:");
        for c in &status.counters {
            println!(
                "  {:<24} {:>12} packets {:>14} bytes",
                c.name, c.packets, c.bytes
            );
        }
    }
    if let Some(t) = &status.translations {
        print_translations(t);
    }
    if let Some(e) = &status.ebpf {
        print_ebpf(e);
    }
    if let Some(ct) = status.conntrack {
        let percent = ct.count as f64 * 100.0 / ct.max.max(1) as f64;
        println!(
            "conntrack:  {} of {} entries in use ({percent:.1} %)",
            ct.count, ct.max
        );
    }
}
