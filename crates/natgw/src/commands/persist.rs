//! `natgw node persist`: reads the network configuration under `--root`, asks the core
//! which files to change, and writes them (or prints them with --dry-run).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use natgw_core::persist::{self, Files};

use super::gateway;
use crate::exit::{self, problem, usage};
use crate::output;

/// Where network managers keep what `persist` may change: (directory, file suffix).
const LOCATIONS: [(&str, &str); 5] = [
    ("/etc/systemd/network", ".network"),
    ("/etc/NetworkManager/system-connections", ".nmconnection"),
    ("/etc/network/interfaces.d", ""),
    ("/etc/network", "interfaces"),
    ("/etc/sysconfig", "network"),
];

pub fn run(gateway_ip: IpAddr, dry_run: bool, root: &Path, json: bool) -> exit::Result<i32> {
    let netlink = gateway::connect()?;
    let observed = natgw_linux::observe::observe_network(&netlink).map_err(problem)?;
    // Which interface reaches the gateway; the default route itself is not our concern here.
    let interface = natgw_core::node::plan(gateway_ip, &observed, true)
        .map_err(usage)?
        .interface;
    let files = read_files(root).map_err(problem)?;
    let plan = persist::plan(&files, &interface, gateway_ip);
    if !dry_run {
        for edit in &plan.edits {
            write(&under(root, &edit.path), &edit.after).map_err(problem)?;
        }
    }
    if json {
        output::json(
            &serde_json::json!({ "interface": interface, "dry_run": dry_run, "persist": plan }),
        );
    } else {
        if let Some(manager) = plan.manager {
            println!(
                "network manager: {}",
                serde_json::to_value(manager)
                    .expect("serialisable")
                    .as_str()
                    .unwrap_or("?")
            );
        }
        for edit in &plan.edits {
            let verb = if dry_run { "would write" } else { "wrote" };
            println!("{verb} {}:", under(root, &edit.path).display());
            for line in edit.after.lines() {
                let old = edit
                    .before
                    .as_deref()
                    .is_some_and(|b| b.lines().any(|l| l == line));
                println!("  {}{line}", if old { "  " } else { "+ " });
            }
        }
        plan.notes.iter().for_each(|n| println!("{n}"));
    }
    Ok(if plan.edits.is_empty() {
        exit::PROBLEM
    } else {
        exit::OK
    })
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn read_files(root: &Path) -> anyhow::Result<Files> {
    let mut files = Files::new();
    for (dir, suffix) in LOCATIONS {
        let Ok(entries) = std::fs::read_dir(under(root, dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(suffix) || !entry.path().is_file() {
                continue;
            }
            let text = std::fs::read_to_string(entry.path())
                .with_context(|| format!("cannot read {}", entry.path().display()))?;
            files.insert(format!("{dir}/{name}"), text);
        }
    }
    Ok(files)
}

fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("natgw-tmp");
    std::fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
