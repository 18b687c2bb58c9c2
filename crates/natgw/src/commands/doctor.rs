//! `natgw doctor [--fix]`: run every check, print one line each; with --fix, repair what
//! is safe (interfaces natgw was told to use, forwarding, natgw's own rules), say what
//! it will not touch, and check again.

use anyhow::anyhow;
use natgw_core::doctor::{self, CounterRecord, Finding, Inputs, Repair, Status};
use natgw_core::Settings;
use natgw_linux::netlink::Netlink;
use serde::Serialize;

use super::{gateway, up};
use crate::cli::GatewayArgs;
use crate::exit::{self, problem};
use crate::output;

#[derive(Serialize)]
struct Report<'a> {
    checks: &'a [Finding],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fixed: Vec<String>,
}

pub fn run(args: &GatewayArgs, fix: bool, json: bool) -> exit::Result<i32> {
    let settings = gateway::settings(args)?;
    gateway::require_privilege()?;
    let _lock = gateway::lock("doctor")?;
    let netlink = gateway::connect()?;
    // Both passes of --fix compare with the same earlier run.
    let last_run = last_run();
    let mut findings = diagnose(args, &settings, &netlink, last_run)?;
    let mut fixed = Vec::new();
    if fix {
        if !json {
            print_findings(&findings);
        }
        fixed = repair(args, &settings, &netlink, &findings)?;
        findings = diagnose(args, &settings, &netlink, last_run)?;
        if !json {
            println!("\nfixed:");
            fixed.iter().for_each(|f| println!("  {f}"));
            if fixed.is_empty() {
                println!("  nothing natgw may fix by itself");
            }
            println!("\nafter --fix:");
        }
    }
    if json {
        output::json(&Report {
            checks: &findings,
            fixed,
        });
    } else {
        print_findings(&findings);
    }
    let failed = findings.iter().any(|f| f.status == Status::Fail);
    Ok(if failed { exit::PROBLEM } else { exit::OK })
}

/// Where doctor keeps the conntrack counters it saw, per namespace.
const COUNTER_RECORD: &str = "doctor.json";

/// The counters of the previous run; a missing or unreadable record only means the
/// totals are reported as totals.
fn last_run() -> Option<CounterRecord> {
    natgw_linux::state_store::load_named(COUNTER_RECORD)
        .ok()
        .flatten()
}

fn record_counters(stats: Option<doctor::ConntrackStats>, now: u64) {
    let Some(stats) = stats else { return };
    let record = CounterRecord {
        stats,
        taken_at: now,
    };
    if let Err(e) = natgw_linux::state_store::save_named(COUNTER_RECORD, &record) {
        eprintln!(
            "natgw: the next doctor run will report conntrack totals again: {:#}",
            anyhow::Error::from(e)
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn diagnose(
    args: &GatewayArgs,
    settings: &Settings,
    netlink: &Netlink,
    last_run: Option<CounterRecord>,
) -> exit::Result<Vec<Finding>> {
    let observed = natgw_linux::observe(netlink, gateway::select(settings, true, args).as_ref())
        .map_err(problem)?;
    // The gateway `up` made, unless the admin names another on the command line.
    let settings = &remembered(args, settings, &observed);
    let (firewall, nat_check) = if observed.nft_present {
        let firewall =
            natgw_linux::firewall::chains().map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        let check = natgw_linux::nft::check_nat_support().map_err(|e| e.to_string());
        (firewall, Some(check))
    } else {
        (Err("the nft tool is not installed".to_string()), None)
    };
    let conntrack_stats = natgw_linux::firewall::conntrack_stats();
    let now = unix_now();
    // Port use needs the gateway's addresses: the desired gateway, when it resolves.
    let desired = natgw_core::desired(settings, &observed).ok();
    let translations = desired.as_ref().and_then(super::status::translations);
    let mut findings = doctor::diagnose(&Inputs {
        settings,
        observed: &observed,
        firewall,
        nat_check,
        nameservers: natgw_linux::firewall::nameservers(),
        conntrack_stats,
        last_run,
        now,
        translations,
    });
    record_counters(conntrack_stats, now);
    if let Some(ha) = &settings.ha {
        findings.extend(super::ha::findings(ha, &observed));
    }
    // Other tools' programs on the gateway interfaces' TC hooks (either data plane).
    let hooks = desired.as_ref().map(|d| {
        let interfaces: Vec<String> = std::iter::once(&d.public)
            .chain(&d.private)
            .map(|i| i.name.as_str().to_string())
            .collect();
        natgw_linux::ebpf::tc_hooks(netlink, &interfaces)
    });
    findings.push(doctor::tc_programs::finding(hooks.as_deref()));
    if settings.dataplane == natgw_core::dataplane::DataplaneKind::Ebpf {
        let public = observed
            .state
            .as_ref()
            .and_then(|s| s.gateway.as_ref())
            .map(|g| g.public.name.as_str().to_string())
            .or_else(|| settings.public.clone())
            .unwrap_or_default();
        let up = observed.table.is_some();
        findings.extend(doctor::ebpf::findings(&natgw_linux::ebpf::doctor_observed(
            &public, up,
        )));
    }
    Ok(findings)
}

fn repair(
    args: &GatewayArgs,
    settings: &Settings,
    netlink: &Netlink,
    findings: &[Finding],
) -> exit::Result<Vec<String>> {
    let mut done = Vec::new();
    // --fix repairs the gateway `up` made; it never creates one on a host where natgw
    // was never brought up (what would it be? `plan` shows, `up` decides).
    let observed = natgw_linux::observe(netlink, gateway::select(settings, true, args).as_ref())
        .map_err(problem)?;
    if observed.state.is_none() && observed.state_problem.is_none() {
        done.push(
            "nothing: natgw was never brought up here (run `natgw plan`, then `natgw up`)".into(),
        );
        return Ok(done);
    }
    // Several findings can name the same repair (a down interface also loses its
    // routes): each is done once.
    let mut repairs: Vec<&Repair> = Vec::new();
    for repair in findings
        .iter()
        .filter(|f| matches!(f.status, Status::Warn | Status::Fail))
        .filter_map(|f| f.repair.as_ref())
    {
        if !repairs.contains(&repair) {
            repairs.push(repair);
        }
    }
    let links = netlink.links().map_err(problem)?;
    for repair in &repairs {
        if let Repair::LinkUp(name) = repair {
            let link = links
                .iter()
                .find(|l| &l.name == name)
                .ok_or_else(|| problem(anyhow!("interface {name} vanished")))?;
            netlink.set_link_up(link.index).map_err(problem)?;
            done.push(format!("ip link set {name} up"));
        }
    }
    if repairs.contains(&&Repair::ApplyGateway) || !done.is_empty() {
        let dataplane = gateway::select(settings, true, args);
        if !done.is_empty() {
            let observed = gateway::observe(netlink, dataplane.as_ref())?;
            done.extend(restore_uplink_default(netlink, &observed)?);
        }
        let observed = gateway::observe(netlink, dataplane.as_ref())?;
        if observed.state_problem.is_some() {
            // Applying now would write a fresh record over the one that holds the
            // original values: `down` must recover first.
            done.push(
                "natgw's rules: not applied, the record is unusable (run natgw down first)".into(),
            );
            return Ok(done);
        }
        let settings = remembered(args, settings, &observed);
        let desired = gateway::desired(&settings, &observed)?;
        let plan = natgw_core::plan(&desired, &observed);
        if !plan.is_empty() {
            up::apply_and_verify(
                &plan,
                &observed,
                &settings,
                &desired,
                netlink,
                dataplane.as_ref(),
                true,
            )?;
            done.extend(plan.changes.iter().map(|c| c.to_string()));
        }
    }
    Ok(done)
}

/// An uplink that went down took the admin's default route with it; once the link is
/// back, the route `up` recorded is put back as it was (same gateway and protocol).
fn restore_uplink_default(
    netlink: &Netlink,
    observed: &natgw_core::Observed,
) -> exit::Result<Option<String>> {
    let Some(recorded) = observed.state.as_ref().and_then(|s| s.gateway.as_ref()) else {
        return Ok(None);
    };
    let (Some(uplink), Some(link)) = (
        recorded.uplink_default,
        observed.link(recorded.public.name.as_str()),
    ) else {
        return Ok(None);
    };
    let Some(via) = uplink.gateway else {
        return Ok(None);
    };
    if observed.ipv4_defaults().any(|r| r.oif == Some(link.index)) {
        return Ok(None);
    }
    let route = natgw_core::RouteSpec {
        to: natgw_core::node::default_v4(),
        via,
        origin: "recorded uplink default route".into(),
    };
    netlink
        .restore_route(&route, uplink.protocol)
        .map_err(problem)?;
    Ok(Some(format!(
        "ip route add default via {via} dev {} (the default route recorded by natgw up)",
        link.name
    )))
}

/// The gateway `up` made, unless the admin names another on the command line.
fn remembered(
    args: &GatewayArgs,
    settings: &Settings,
    observed: &natgw_core::Observed,
) -> Settings {
    let settings = gateway::recorded_settings(args, settings.clone(), observed);
    let recorded = observed.state.as_ref().and_then(|s| s.gateway.as_ref());
    natgw_core::remember::recall(&settings, recorded, observed).settings
}

pub fn print_findings(findings: &[Finding]) {
    for f in findings {
        let status = match f.status {
            Status::Pass => "pass",
            Status::Skip => "skip",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        println!("{status}  {:<18} {}", f.id, f.detail);
        if let (Some(fix), false) = (&f.fix, matches!(f.status, Status::Pass | Status::Skip)) {
            let who = if f.repair.is_some() {
                "fix (doctor --fix does it)"
            } else {
                "fix (natgw will not touch this)"
            };
            println!("      {who}:");
            for line in fix.lines() {
                println!("        {line}");
            }
        }
    }
}
