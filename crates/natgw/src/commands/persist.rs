//! `natgw node persist`: reads the network configuration under `--root`, asks the core
//! which files to change, and writes them (or prints the diff with --dry-run).

mod root_fs;

use std::net::IpAddr;
use std::path::Path;

use anyhow::anyhow;
use natgw_core::persist::{self, Interface};

use super::gateway;
use crate::exit::{self, problem, usage};
use crate::output;

pub fn run(gateway_ip: IpAddr, dry_run: bool, root: &Path, json: bool) -> exit::Result<i32> {
    let netlink = gateway::connect()?;
    let observed = natgw_linux::observe::observe_network(&netlink).map_err(problem)?;
    // Which interface reaches the gateway; the default route itself is not our concern here.
    let IpAddr::V4(gateway_v4) = gateway_ip else {
        return Err(usage(anyhow!(
            "node persist writes IPv4 gateways only; {gateway_ip} is IPv6: let the headnode's router advertisements give the nodes their IPv6 default route, or add it to the network configuration by hand"
        )));
    };
    let plan = natgw_core::node::plan(gateway_ip, &observed, true).map_err(usage)?;
    let interface = interface(&plan.interface, plan.ifindex);
    let root = root_fs::Root::open(root).map_err(problem)?;
    let (files, skipped) = root.read_tree(&persist::READ_DIRS, 2);
    let plan = persist::plan(&files, &interface, gateway_v4);
    if !dry_run && plan.refused.is_none() {
        for edit in &plan.edits {
            root.write(&edit.path, &edit.after, edit.like.as_deref())
                .map_err(problem)?;
        }
    }
    if json {
        output::json(&serde_json::json!({
            "interface": interface.name,
            "dry_run": dry_run,
            "skipped": skipped,
            "persist": plan,
        }));
    } else {
        skipped.iter().for_each(|s| println!("skipped {s}"));
        if let Some(manager) = plan.manager {
            println!(
                "network manager: {}",
                serde_json::to_value(manager)
                    .expect("serialisable")
                    .as_str()
                    .unwrap_or("?")
            );
        }
        if plan.up_to_date {
            println!(
                "nothing to write: the configuration already has gateway {gateway_ip} for {}",
                interface.name
            );
        }
        for edit in &plan.edits {
            let verb = if dry_run { "would change" } else { "changed" };
            println!("{verb} {}:", root.show(&edit.path).display());
            edit.diff.lines().for_each(|l| println!("  {l}"));
        }
        if plan.refused.is_none() {
            plan.notes.iter().for_each(|n| println!("{n}"));
        }
    }
    if let Some(why) = plan.refused {
        return Err(problem(anyhow!("{why} (nothing was written)")));
    }
    Ok(if plan.edits.is_empty() && !plan.up_to_date {
        exit::PROBLEM
    } else {
        exit::OK
    })
}

/// The interface as network managers match it: MAC address and networkd's type,
/// from sysfs (which `ip netns exec` mounts for the namespace).
fn interface(name: &str, index: u32) -> Interface {
    let sys = Path::new("/sys/class/net").join(name);
    let read = |file: &str| std::fs::read_to_string(sys.join(file)).ok();
    let mac = read("address")
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00");
    // networkd's Type=: udev's DEVTYPE when there is one, else the ARP hardware type.
    let devtype = read("uevent").and_then(|u| {
        u.lines()
            .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_string))
    });
    let kind = devtype.unwrap_or_else(|| {
        match read("type").as_deref().map(str::trim) {
            Some("1") => "ether",
            Some("772") => "loopback",
            Some("65534") => "none",
            _ => "unknown",
        }
        .to_string()
    });
    Interface {
        name: name.to_string(),
        index,
        mac,
        kind,
    }
}
