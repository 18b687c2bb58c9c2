//! `natgw up` / `natgw plan`: make the system match the desired gateway, then verify.

use anyhow::anyhow;
use natgw_core::{Desired, Observed, Plan, Settings};
use natgw_linux::netlink::Netlink;
use natgw_linux::{Dataplane, Target};
use serde::Serialize;

use super::gateway;
use crate::cli::GatewayArgs;
use crate::exit::{self, problem};
use crate::output;

#[derive(Serialize)]
struct Report<'a> {
    desired: &'a Desired,
    plan: &'a Plan,
    applied: bool,
    /// How new detection differs from the recorded gateway (not adopted).
    rediscovered: &'a [String],
    /// The nftables table the desired gateway renders to.
    ruleset: String,
}

pub fn run(args: &GatewayArgs, dry_run: bool, json: bool) -> exit::Result<i32> {
    let gateway::Prepared {
        netlink,
        dataplane,
        observed,
        desired,
        rediscovered,
        settings,
        lock: _lock,
    } = gateway::prepare(args, if dry_run { "plan" } else { "up" }, false)?;
    if let Some(why) = &observed.state_problem {
        return Err(problem(anyhow!(
            "{why}\nnatgw cannot know what it changed before; run `natgw down` first: it removes natgw's table and routes, names the sysctls to check, and sets the record aside"
        )));
    }
    if !dry_run && desired.dataplane.ebpf().is_some() {
        ebpf_carried(desired.public.name.as_str())?;
    }
    if !dry_run {
        switch_carried(&desired, &observed)?;
    }
    let plan = natgw_core::plan(&desired, &observed);
    for change in &plan.changes {
        tracing::debug!(change = %change, "planned");
    }

    if !json {
        print!("{}", output::describe(&desired));
        for line in &rediscovered {
            println!("note: {line}");
        }
        if plan.is_empty() {
            println!("no changes: the gateway is already in place");
        } else {
            println!(
                "{}:\n{plan}",
                if dry_run {
                    "plan (dry run, nothing changed)"
                } else {
                    "changes"
                }
            );
        }
    }
    if !dry_run && !plan.is_empty() {
        apply_and_verify(
            &plan,
            &observed,
            &settings,
            &desired,
            &netlink,
            dataplane.as_ref(),
            true,
        )?;
    } else if !dry_run {
        // Nothing to change is a claim too: the gateway must still work.
        natgw_core::plan::verify(&desired, &observed).map_err(|e| problem(anyhow!(e)))?;
    }
    if !dry_run {
        no_foreign_blocker(&settings, &observed)?;
    }
    if json {
        output::json(&Report {
            desired: &desired,
            plan: &plan,
            applied: !dry_run && !plan.is_empty(),
            rediscovered: &rediscovered,
            ruleset: natgw_core::render::render(&desired).text,
        });
    } else if !dry_run && !plan.is_empty() {
        println!(
            "applied {} change(s); verified: the system matches the desired gateway",
            plan.changes.len()
        );
    }
    Ok(exit::OK)
}

/// The eBPF data plane on a kernel without what its programs need (TCX, BTF), or in a
/// natgw without the capabilities to load them: a configuration this host cannot
/// carry, refused before anything changes.
pub fn ebpf_carried(public: &str) -> exit::Result<()> {
    let observed = natgw_linux::ebpf::doctor_observed(public, false);
    match natgw_core::doctor::ebpf::findings(&observed)
        .into_iter()
        .find(|f| f.status == natgw_core::doctor::Status::Fail)
    {
        None => Ok(()),
        Some(f) => Err(crate::exit::usage(anyhow!(
            "dataplane = \"ebpf\": {}; nothing was changed\nfix:\n{}",
            f.detail,
            indent(f.fix.as_deref().unwrap_or(""))
        ))),
    }
}

/// A switch between data planes hands the running flows over by deleting the ones
/// conntrack tracked untranslated (otherwise they would leave with private addresses
/// while they live), with the `conntrack` tool; without it the switch is refused before
/// anything changes.
pub fn switch_carried(desired: &Desired, observed: &Observed) -> exit::Result<()> {
    let recorded = observed
        .state
        .as_ref()
        .and_then(|s| s.gateway.as_ref())
        .map(|g| g.dataplane.kind());
    let wanted = desired.dataplane.kind();
    let switching = recorded.is_some_and(|kind| kind != wanted)
        || (desired.dataplane.ebpf().is_none() && natgw_linux::ebpf::has_pins());
    if !switching || natgw_linux::conntrack::tool().is_some() {
        return Ok(());
    }
    Err(crate::exit::usage(anyhow!(
        "dataplane = \"{}\": switching data planes hands the running flows over with the conntrack tool, which is not installed; nothing was changed\nfix:\n  apt-get install conntrack",
        wanted
    )))
}

/// natgw's part is in place; another firewall must not stop the traffic all the same
/// (Docker's FORWARD policy drop, say). natgw leaves foreign rules alone: it says what
/// blocks and how to fix it, and exits 1 rather than print "verified" over a gateway
/// that carries nothing.
fn no_foreign_blocker(settings: &Settings, observed: &Observed) -> exit::Result<()> {
    let Ok(firewall) = natgw_linux::firewall::chains() else {
        return Ok(());
    };
    let inputs = natgw_core::doctor::Inputs {
        settings,
        observed,
        firewall: Ok(firewall),
        nat_check: None,
        nameservers: Vec::new(),
        conntrack_stats: None,
        last_run: None,
        now: 0,
        translations: None,
    };
    match natgw_core::doctor::checks::foreign_blockers(&inputs).first() {
        None => Ok(()),
        Some(blocker) => Err(problem(anyhow!(
            "natgw's rules are in place, but another firewall stops the gateway: {}\nfix (natgw will not touch it):\n{}",
            blocker.detail,
            indent(blocker.fix.as_deref().unwrap_or("# see natgw doctor"))
        ))),
    }
}

/// Applies `plan` (journaled, rolled back on failure), then re-reads the system: it
/// must need no further change and, with `check_uplink`, the uplink must keep its
/// default route; otherwise everything is rolled back too. (The daemon repairs without
/// the uplink check: its repairs must not wait for the admin's network manager.)
pub fn apply_and_verify(
    plan: &Plan,
    observed: &Observed,
    settings: &Settings,
    desired: &Desired,
    netlink: &Netlink,
    dataplane: &dyn Dataplane,
    check_uplink: bool,
) -> exit::Result<()> {
    let target = Target {
        observed,
        settings,
        desired,
        netlink,
        dataplane,
    };
    let recorded = observed.state.as_ref().and_then(|s| s.gateway.clone());
    natgw_linux::apply(plan, &target, |committed| {
        let mut after = natgw_linux::observe(netlink, dataplane).map_err(|e| e.to_string())?;
        // Judge the system against the record as it will be once committed, and the
        // uplink against the gateway as it was recorded before.
        let mut prospective = committed.clone();
        prospective.gateway = recorded.clone();
        after.state = Some(prospective);
        if check_uplink {
            natgw_core::plan::verify(desired, &after)
        } else {
            natgw_core::plan::verify_applied(desired, &after)
        }
    })
    .map_err(problem)?;
    Ok(())
}

/// A fix under its heading, each line indented as it will be pasted.
fn indent(fix: &str) -> String {
    fix.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
