//! `natgw down`: remove what natgw added, restore what it changed, nothing else.

use super::gateway;
use crate::exit;
use crate::output;

pub fn run(json: bool) -> exit::Result<i32> {
    gateway::require_privilege()?;
    let _lock = gateway::lock("down")?;
    let netlink = gateway::connect()?;
    let dataplane = natgw_linux::dataplane::recorded();
    let observed = natgw_linux::observe(&netlink, dataplane.as_ref()).map_err(exit::problem)?;
    let report = natgw_linux::teardown(&observed, &netlink, dataplane.as_ref());
    if json {
        output::json(&report);
    } else if report.done.is_empty() && report.errors.is_empty() && report.unknown.is_empty() {
        println!("nothing to remove: natgw is not up in this network namespace");
    } else {
        for line in &report.done {
            println!("  {line}");
        }
        for line in &report.unknown {
            println!("  check: {line}");
        }
        for line in &report.errors {
            eprintln!("natgw: error: {line}");
        }
        if !report.errors.is_empty() {
            eprintln!("natgw: what could not be undone stays recorded; run `natgw down` again once the cause is fixed");
        }
    }
    Ok(if report.errors.is_empty() && report.unknown.is_empty() {
        exit::OK
    } else {
        exit::PROBLEM
    })
}
