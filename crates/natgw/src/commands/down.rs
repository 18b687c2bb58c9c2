//! `natgw down`: remove what natgw added, restore what it changed, nothing else.

use super::gateway;
use crate::exit;
use crate::output;

pub fn run(json: bool) -> exit::Result<i32> {
    gateway::require_privilege()?;
    let netlink = gateway::connect()?;
    let observed = natgw_linux::observe(&netlink).map_err(exit::problem)?;
    let report = natgw_linux::teardown(&observed, &netlink);
    if json {
        output::json(&report);
    } else if report.done.is_empty() && report.errors.is_empty() {
        println!("nothing to remove: natgw is not up in this network namespace");
    } else {
        for line in &report.done {
            println!("  {line}");
        }
        for line in &report.errors {
            eprintln!("natgw: error: {line}");
        }
    }
    Ok(if report.errors.is_empty() {
        exit::OK
    } else {
        exit::PROBLEM
    })
}
