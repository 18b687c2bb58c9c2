//! `natgw status`: what natgw manages, whether the live system still matches it, and
//! what it translated.

use natgw_core::observed::Conntrack;
use natgw_core::{Desired, Plan};
use natgw_linux::nft::Counter;
use natgw_linux::Dataplane;
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
}

pub fn run(args: &GatewayArgs, json: bool) -> exit::Result<i32> {
    let gateway::Prepared {
        observed,
        desired,
        dataplane,
        rediscovered,
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
    let status = Status {
        state: if installed { "up" } else { "down" },
        in_sync: drift.is_empty() && observed.state_problem.is_none(),
        desired,
        drift,
        rediscovered,
        record_problem: observed.state_problem.clone(),
        counters,
        conntrack: observed.conntrack,
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

fn print_human(status: &Status) {
    print!("{}", output::describe(&status.desired));
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
    if let Some(ct) = status.conntrack {
        let percent = ct.count as f64 * 100.0 / ct.max.max(1) as f64;
        println!(
            "conntrack:  {} of {} entries in use ({percent:.1} %)",
            ct.count, ct.max
        );
    }
}
