//! `natgw install` / `natgw uninstall`: the config file (from detection, never over an
//! admin's file) and the systemd unit, enabled where systemd runs. Nothing here
//! changes the network; detection only reads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context};
use natgw_core::dataplane::DataplaneKind;
use natgw_core::{config_template, Settings};
use serde::Serialize;

use super::gateway;
use crate::cli::{GatewayArgs, InstallArgs, UninstallArgs};
use crate::exit::{self, problem, usage};
use crate::output;
use crate::root_dir::{Replace, RootDir, Written};
use crate::systemd_unit;

/// The config below the root (`etc/natgw/natgw.toml`).
fn config_path() -> &'static str {
    gateway::DEFAULT_CONFIG.trim_start_matches('/')
}
/// Exists while systemd is the running init (sd_booted(3)).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

#[derive(Serialize)]
struct InstallReport {
    dry_run: bool,
    config: FileReport,
    /// Why detection failed, when the config is the example template.
    detection_problem: Option<String>,
    unit: FileReport,
    /// The drop-in for the eBPF plane: written when the config selects it, else removed.
    ebpf_dropin: FileReport,
    systemd: Vec<String>,
}

#[derive(Serialize)]
struct FileReport {
    path: PathBuf,
    /// created, replaced, unchanged, kept, removed, absent, or would_* with --dry-run.
    action: String,
}

pub fn install(args: &InstallArgs) -> exit::Result<i32> {
    let root = open_root(args.root.as_deref(), args.dry_run)?;
    // Bad input first: nothing is written when the given config is wrong.
    let given = match &args.config {
        Some(path) => Some(gateway::settings(&GatewayArgs {
            config: Some(path.clone()),
            ..GatewayArgs::default()
        })?),
        None => None,
    };
    let config_exists = root.exists(config_path()).map_err(problem)?;
    let (config_text, detection_problem) = if config_exists {
        (None, None)
    } else {
        let (text, problem) = config_text(given.as_ref())?;
        (Some(text), problem)
    };
    let ebpf = selects_ebpf(&root, config_exists, given.as_ref());

    let config_action = match &config_text {
        None => "kept".to_string(),
        Some(_) if args.dry_run => "would_create".into(),
        Some(text) => action(
            root.write(config_path(), text.as_bytes(), 0o644, Replace::Never)
                .map_err(problem)?,
        ),
    };
    let unit_action = if args.dry_run {
        "would_write".into()
    } else {
        action(
            root.write(
                systemd_unit::INSTALL_PATH,
                systemd_unit::TEXT.as_bytes(),
                0o644,
                Replace::Always,
            )
            .map_err(problem)?,
        )
    };
    let dropin_action = match (ebpf, args.dry_run) {
        (None, _)
            if root
                .exists(systemd_unit::EBPF_DROPIN_PATH)
                .map_err(problem)? =>
        {
            "kept".into()
        }
        (None, _) => "absent".into(),
        (Some(true), true) => "would_write".into(),
        (Some(true), false) => action(
            root.write(
                systemd_unit::EBPF_DROPIN_PATH,
                systemd_unit::EBPF_DROPIN.as_bytes(),
                0o644,
                Replace::Always,
            )
            .map_err(problem)?,
        ),
        (Some(false), true) => "absent".into(),
        (Some(false), false) => removed(&root, systemd_unit::EBPF_DROPIN_PATH)?,
    };
    let systemd = systemd_steps(args.root.is_some(), args.dry_run, &["enable"])?;

    let report = InstallReport {
        dry_run: args.dry_run,
        config: FileReport {
            path: root.show(config_path()),
            action: config_action,
        },
        detection_problem,
        unit: FileReport {
            path: root.show(systemd_unit::INSTALL_PATH),
            action: unit_action,
        },
        ebpf_dropin: FileReport {
            path: root.show(systemd_unit::EBPF_DROPIN_PATH),
            action: dropin_action,
        },
        systemd,
    };
    if args.json {
        output::json(&report);
    } else {
        print_install(&report, config_text.as_deref());
    }
    Ok(exit::OK)
}

pub fn uninstall(args: &UninstallArgs) -> exit::Result<i32> {
    let root = open_root(args.root.as_deref(), args.dry_run)?;
    let unit = root.show(systemd_unit::INSTALL_PATH);
    let config = root.show(config_path());
    if !root.exists(systemd_unit::INSTALL_PATH).map_err(problem)? {
        println!("not installed: {} does not exist", unit.display());
    } else {
        // Disabled while the unit is still there: systemctl reads it to find its links.
        let mut systemd = systemd_steps(args.root.is_some(), args.dry_run, &["disable"])?;
        if args.dry_run {
            println!("would remove {}", unit.display());
        } else {
            root.remove(systemd_unit::INSTALL_PATH).map_err(problem)?;
            println!("removed {}", unit.display());
            systemd.extend(systemd_steps(args.root.is_some(), false, &[])?);
        }
        systemd.iter().for_each(|line| println!("{line}"));
    }
    // Also without the unit in /etc: the drop-in would apply to the packaged unit.
    let dropin = root.show(systemd_unit::EBPF_DROPIN_PATH);
    if args.dry_run
        && root
            .exists(systemd_unit::EBPF_DROPIN_PATH)
            .map_err(problem)?
    {
        println!("would remove {}", dropin.display());
    } else if !args.dry_run && removed(&root, systemd_unit::EBPF_DROPIN_PATH)? == "removed" {
        println!("removed {}", dropin.display());
    }
    if root.exists(config_path()).map_err(problem)? {
        println!(
            "kept {}: uninstall never removes the admin's config; delete it yourself if it is no longer wanted",
            config.display()
        );
    }
    if args.root.is_none() {
        println!("natgw's rules stay in place until `natgw down`; a running natgw runs until `systemctl stop natgw`");
    }
    Ok(exit::OK)
}

/// Whether the service will run the eBPF plane: the admin's existing config decides
/// (it is never overwritten), else the one given with `--config`; the template is
/// the nftables plane's. `None` for an existing config that does not parse: the
/// drop-in is left as it is (`natgw plan` reports the config's error).
fn selects_ebpf(root: &RootDir, exists: bool, given: Option<&Settings>) -> Option<bool> {
    let kind = if exists {
        let path = root.show(config_path());
        gateway::settings(&GatewayArgs {
            config: Some(path),
            ..GatewayArgs::default()
        })
        .ok()?
        .dataplane
    } else {
        given.map(|s| s.dataplane).unwrap_or_default()
    };
    Some(kind == DataplaneKind::Ebpf)
}

/// Removes a file natgw installed; "removed" or "absent".
fn removed(root: &RootDir, rel: &str) -> exit::Result<String> {
    let gone = root.remove(rel).map_err(problem)?;
    Ok(if gone { "removed" } else { "absent" }.into())
}

/// The config to write: the resolved gateway, or the example template with the reason
/// detection failed. A config the admin gave must resolve (exit 2 otherwise).
fn config_text(given: Option<&Settings>) -> exit::Result<(String, Option<String>)> {
    let settings = given.cloned().unwrap_or_default();
    match detect(&settings) {
        Ok(desired) => Ok((config_template::from_desired(&desired, &settings), None)),
        Err(e) if given.is_some() => Err(usage(
            e.context("the config given with --config does not resolve to a gateway here; nothing was written"),
        )),
        Err(e) => {
            let why = format!("{e:#}");
            Ok((config_template::example(Some(&why)), Some(why)))
        }
    }
}

/// Reads links, addresses and routes once and resolves the gateway; changes nothing.
fn detect(settings: &Settings) -> anyhow::Result<natgw_core::Desired> {
    let netlink = natgw_linux::netlink::Netlink::connect()?;
    let observed = natgw_linux::observe::observe_network(&netlink)?;
    Ok(natgw_core::desired(settings, &observed)?)
}

fn open_root(root: Option<&Path>, dry_run: bool) -> exit::Result<RootDir> {
    if root.is_none() && !dry_run && !nix::unistd::geteuid().is_root() {
        return Err(usage(anyhow!(
            "writing /etc and running systemctl needs root: run it with sudo (or give --root DIR, or --dry-run)"
        )));
    }
    let path = root.unwrap_or(Path::new("/"));
    if !path.is_dir() {
        return Err(usage(anyhow!(
            "--root {} is not a directory; create it first",
            path.display()
        )));
    }
    RootDir::open(path).map_err(problem)
}

/// `systemctl daemon-reload` then `systemctl VERB natgw.service` for each verb, only
/// on the real root of a system that runs systemd; never starts or stops anything.
/// Returns what was done (or would be), one line each.
fn systemd_steps(has_root: bool, dry_run: bool, verbs: &[&str]) -> exit::Result<Vec<String>> {
    let mut lines = Vec::new();
    if has_root {
        return Ok(lines);
    }
    if !Path::new(SYSTEMD_RUNNING).exists() {
        if let Some(verb) = verbs.first() {
            lines.push(format!(
                "systemd is not running here: `systemctl {verb} {}` was not run",
                systemd_unit::NAME
            ));
        }
        return Ok(lines);
    }
    let mut commands = vec![vec!["daemon-reload"]];
    commands.extend(verbs.iter().map(|verb| vec![*verb, systemd_unit::NAME]));
    for args in commands {
        let shown = format!("systemctl {}", args.join(" "));
        if dry_run {
            lines.push(format!("would run: {shown}"));
            continue;
        }
        let status = Command::new("systemctl")
            .args(&args)
            .status()
            .with_context(|| format!("cannot run {shown}"))
            .map_err(problem)?;
        if !status.success() {
            return Err(problem(anyhow!("{shown} failed ({status})")));
        }
        lines.push(format!("ran: {shown}"));
    }
    Ok(lines)
}

fn action(written: Written) -> String {
    match written {
        Written::Created => "created",
        Written::Replaced => "replaced",
        Written::Unchanged => "unchanged",
        Written::Kept => "kept",
    }
    .into()
}

fn print_install(report: &InstallReport, config_text: Option<&str>) {
    let config = report.config.path.display();
    match report.config.action.as_str() {
        "kept" => println!(
            "kept {config}: an existing config is never overwritten (compare it with `natgw plan`)"
        ),
        "would_create" => {
            println!("would write {config}:");
            for line in config_text.unwrap_or_default().lines() {
                println!("  {line}");
            }
        }
        verb => println!("{verb} {config}"),
    }
    if let Some(why) = &report.detection_problem {
        println!(
            "note: detection failed ({why}); {config} is a commented template: set `public` and `private` (remove their '#'), then check with `natgw plan --config {config}`"
        );
    }
    let unit = report.unit.path.display();
    if report.dry_run {
        println!("would write {unit}:");
        systemd_unit::TEXT.lines().for_each(|l| println!("  {l}"));
    } else {
        println!("{} {unit}", report.unit.action);
    }
    let dropin = report.ebpf_dropin.path.display();
    match report.ebpf_dropin.action.as_str() {
        "absent" => {}
        "kept" => println!("kept {dropin}: the config does not parse, so which plane it selects is unknown (see `natgw plan`)"),
        "would_write" => {
            println!("would write {dropin} (the config selects dataplane = \"ebpf\"):");
            systemd_unit::EBPF_DROPIN
                .lines()
                .for_each(|l| println!("  {l}"));
        }
        "removed" => {
            println!("removed {dropin}: the config no longer selects dataplane = \"ebpf\"")
        }
        verb => println!("{verb} {dropin}: the eBPF plane's capabilities, bpf() and the bpffs"),
    }
    report.systemd.iter().for_each(|line| println!("{line}"));
    if !report.dry_run && report.systemd.iter().any(|l| l.contains(" enable ")) {
        println!("natgw.service is enabled, not started: start it with `systemctl start natgw`");
    }
}
