//! `natgw up` / `natgw plan`: make the system match the desired gateway, then verify.

use anyhow::anyhow;
use natgw_core::{Desired, Plan};
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
}

pub fn run(args: &GatewayArgs, dry_run: bool, json: bool) -> exit::Result<i32> {
    let gateway::Prepared {
        netlink,
        observed,
        desired,
    } = gateway::prepare(args)?;
    let plan = natgw_core::plan(&desired, &observed);

    if !json {
        print!("{}", output::describe(&desired));
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
    if dry_run || plan.is_empty() {
        if json {
            output::json(&Report {
                desired: &desired,
                plan: &plan,
                applied: false,
            });
        }
        return Ok(exit::OK);
    }

    apply_and_verify(&plan, &observed, &desired, &netlink)?;
    if json {
        output::json(&Report {
            desired: &desired,
            plan: &plan,
            applied: true,
        });
    } else {
        println!(
            "applied {} change(s); verified: the system matches the desired gateway",
            plan.changes.len()
        );
    }
    Ok(exit::OK)
}

/// Applies `plan` (rolled back on failure), then re-reads the system: it must need no
/// further change.
pub fn apply_and_verify(
    plan: &Plan,
    observed: &natgw_core::Observed,
    desired: &Desired,
    netlink: &natgw_linux::netlink::Netlink,
) -> exit::Result<()> {
    natgw_linux::apply(plan, observed, netlink).map_err(problem)?;
    let after = gateway::observe(netlink)?;
    let remaining = natgw_core::plan(desired, &after);
    if !remaining.is_empty() {
        return Err(problem(anyhow!(
            "applied, but the system still differs from the desired gateway:\n{remaining}"
        )));
    }
    Ok(())
}
