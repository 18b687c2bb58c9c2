//! Carries out a plan, journaled and verified.
//!
//! Before each change the record (`state_store`) is written durably with what is
//! about to change and its original value, and it says "apply in progress" until
//! the result is verified. Every step that succeeded registers how to undo it; when a
//! later step or the verification fails, the undo list runs in reverse so the previous
//! state is back, and so is the previous record. A crash at any point leaves a record
//! from which `down` restores everything and `up` finishes the job.
//!
//! Teardown (`down`) is the opposite: it keeps going after an error, reports all, and
//! keeps in the record whatever it could not undo yet.

use std::time::{SystemTime, UNIX_EPOCH};

use natgw_core::plan::{owned_routes, Change};
use natgw_core::render::render;
use natgw_core::state::{is_managed_sysctl, is_sysctl_value, Applying, InstalledTable};
use natgw_core::{Desired, Observed, Plan, RecordedState, RouteSpec, Settings, ROUTE_PROTOCOL};
use tracing::{info, warn};

use crate::dataplane::{Dataplane, Snapshot};
use crate::netlink::Netlink;
use crate::{state_store, sysctl};

/// Test hook: `NATGW_TEST_FAIL_AT=table` (or `sysctl`, `route`, `verify`) makes that
/// step fail, to prove that a failure half-way rolls back what was already changed.
const FAIL_AT_ENV: &str = "NATGW_TEST_FAIL_AT";

#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {cause}{}", rollback_note(.rollback_errors))]
pub struct ApplyError {
    /// The change that failed, as printed in the plan.
    pub step: String,
    pub cause: String,
    /// Errors while undoing earlier steps (empty when the rollback was clean).
    pub rollback_errors: Vec<String>,
}

fn rollback_note(errors: &[String]) -> String {
    if errors.is_empty() {
        "; every earlier change was rolled back".into()
    } else {
        format!(
            "; rollback incomplete ({}); `natgw down` or `natgw up` completes it",
            errors.join("; ")
        )
    }
}

enum Undo {
    Sysctl { name: String, value: String },
    AddRoute(RouteSpec),
    DelRoute(RouteSpec),
    Table(Snapshot),
}

/// Everything `apply` works with.
pub struct Target<'a> {
    pub observed: &'a Observed,
    pub settings: &'a Settings,
    pub desired: &'a Desired,
    pub netlink: &'a Netlink,
    pub dataplane: &'a dyn Dataplane,
}

/// Applies `plan`, then `verify`s the system against the record it is about to
/// commit; returns that record. On any failure the system and the record are put back.
pub fn apply(
    plan: &Plan,
    target: &Target,
    verify: impl FnOnce(&RecordedState) -> Result<(), String>,
) -> Result<RecordedState, ApplyError> {
    // The kernel validates the rules first: a kernel without nftables NAT fails here,
    // before anything changed.
    if plan
        .changes
        .iter()
        .any(|c| matches!(c, Change::ReplaceTable { .. }))
    {
        target
            .dataplane
            .check(target.desired)
            .map_err(|e| ApplyError {
                step: "check of the rules by the kernel".into(),
                cause: error_chain(&e),
                rollback_errors: vec![],
            })?;
    }

    let previous = target.observed.state.clone();
    let mut journal = previous.clone().unwrap_or_default();
    // Every route about to be added, journaled in the one write below rather than one
    // write per route (deleting a recorded route that was never added is harmless: the
    // kernel matches natgw's mark).
    for change in &plan.changes {
        if let Change::AddRoute { route } = change {
            journal.routes.push(route.clone());
        }
    }
    journal.applying = Some(Applying {
        pid: std::process::id(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    state_store::save(&journal).map_err(|e| ApplyError {
        step: "record of the changes about to be made".into(),
        cause: error_chain(&e),
        rollback_errors: vec![],
    })?;

    let mut undo: Vec<Undo> = Vec::new();
    for change in &plan.changes {
        if let Err(cause) = apply_one(change, target, &mut journal, &mut undo) {
            warn!(change = %change, %cause, "change failed; rolling back");
            return Err(failed(change.to_string(), cause, undo, previous, target));
        }
        info!(change = %change, "applied");
    }

    let mut committed = journal.clone();
    committed.applying = None;
    committed.gateway = Some(target.desired.clone());
    committed.settings = Some(target.settings.clone());
    let verified = injected("verify")
        .and_then(|()| verify(&committed))
        .and_then(|()| state_store::save(&committed).map_err(|e| error_chain(&e)));
    if let Err(cause) = verified {
        warn!(%cause, "verification failed; rolling back");
        return Err(failed("verification".into(), cause, undo, previous, target));
    }
    Ok(committed)
}

/// Rolls back and puts the previous record back; when the rollback is incomplete the
/// journal stays, so that the next `up` or `down` finishes it.
fn failed(
    step: String,
    cause: String,
    undo: Vec<Undo>,
    previous: Option<RecordedState>,
    target: &Target,
) -> ApplyError {
    let mut rollback_errors = roll_back(undo, target);
    if rollback_errors.is_empty() {
        let restored = match &previous {
            Some(state) => state_store::save(state),
            None => state_store::remove(),
        };
        if let Err(e) = restored {
            rollback_errors.push(format!("restore the record: {}", error_chain(&e)));
        }
    }
    ApplyError {
        step,
        cause,
        rollback_errors,
    }
}

fn injected(step: &str) -> Result<(), String> {
    match std::env::var(FAIL_AT_ENV) {
        Ok(at) if at == step => Err(format!("injected failure ({FAIL_AT_ENV}={step})")),
        _ => Ok(()),
    }
}

/// One change: journal first, then the system.
fn apply_one(
    change: &Change,
    target: &Target,
    journal: &mut RecordedState,
    undo: &mut Vec<Undo>,
) -> Result<(), String> {
    let save = |journal: &RecordedState| state_store::save(journal).map_err(|e| error_chain(&e));
    match change {
        Change::SetSysctl { name, from, to } => {
            injected("sysctl")?;
            // Writing ip_forward rewrites every interface's `forwarding` too: those are
            // recorded as well, restored after it, and put back first on rollback.
            let side_effects = side_effects_of(name, target.observed);
            // Only the value from before natgw's first change is what `down` restores.
            for &(key, value) in side_effects.iter().chain(&[(name, from)]) {
                journal
                    .sysctls
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
            save(journal)?;
            sysctl::write(name, to).map_err(|e| error_chain(&e))?;
            for (key, value) in side_effects.into_iter().chain([(name, from)]) {
                undo.push(Undo::Sysctl {
                    name: key.clone(),
                    value: value.clone(),
                });
            }
        }
        Change::AddRoute { route } => {
            injected("route")?;
            if let Err(e) = target.netlink.add_route(route, ROUTE_PROTOCOL) {
                // Never record a route natgw did not add.
                journal.routes.retain(|r| r != route);
                return Err(error_chain(&e));
            }
            undo.push(Undo::AddRoute(route.clone()));
        }
        Change::DelRoute { route } => {
            injected("route")?;
            target
                .netlink
                .del_route(route, ROUTE_PROTOCOL)
                .map_err(|e| error_chain(&e))?;
            undo.push(Undo::DelRoute(route.clone()));
            journal
                .routes
                .retain(|r| !(r.to == route.to && r.via == route.via));
        }
        Change::ReplaceTable { .. } => {
            injected("table")?;
            let snapshot = target
                .dataplane
                .snapshot(target.desired)
                .map_err(|e| error_chain(&e))?;
            let installed = target.dataplane.install(target.desired);
            undo.push(Undo::Table(snapshot));
            let installed = installed.map_err(|e| error_chain(&e))?;
            journal.table = Some(InstalledTable {
                digest: render(target.desired).digest,
                fingerprint: installed.fingerprint,
            });
            save(journal)?;
        }
        Change::FinishApply { .. } => {}
    }
    Ok(())
}

/// The per-interface `forwarding` values a write of `name` would overwrite
/// (`net.ipv4.ip_forward` rewrites the IPv4 ones, `net.ipv6.conf.all.forwarding` the
/// IPv6 ones and `default`'s).
fn side_effects_of<'a>(name: &str, observed: &'a Observed) -> Vec<(&'a String, &'a String)> {
    let family = match name {
        natgw_core::detect::IP_FORWARD => "net.ipv4.conf.",
        natgw_core::ipv6::IPV6_FORWARD => "net.ipv6.conf.",
        _ => return Vec::new(),
    };
    observed
        .sysctls
        .iter()
        .filter(|(key, _)| key.as_str() != name)
        .filter(|(key, _)| key.starts_with(family) && key.ends_with(".forwarding"))
        .collect()
}

/// The switches that rewrite other sysctls go first when restoring, so the values
/// they overwrite are put back after them.
fn is_master_switch(name: &str) -> bool {
    name == natgw_core::detect::IP_FORWARD || name == natgw_core::ipv6::IPV6_FORWARD
}

fn roll_back(undo: Vec<Undo>, target: &Target) -> Vec<String> {
    let mut errors = Vec::new();
    for step in undo.into_iter().rev() {
        let result = match &step {
            Undo::Sysctl { name, value } => sysctl::write(name, value).map_err(|e| error_chain(&e)),
            Undo::AddRoute(route) => target
                .netlink
                .del_route(route, ROUTE_PROTOCOL)
                .map_err(|e| error_chain(&e)),
            Undo::DelRoute(route) => target
                .netlink
                .add_route(route, ROUTE_PROTOCOL)
                .map_err(|e| error_chain(&e)),
            Undo::Table(snapshot) => target
                .dataplane
                .restore(snapshot)
                .map_err(|e| error_chain(&e)),
        };
        match result {
            Ok(()) => info!("rolled back"),
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// What `down` did and what it could not do.
#[derive(Debug, Default, serde::Serialize)]
pub struct Teardown {
    pub done: Vec<String>,
    pub errors: Vec<String>,
    /// Sysctls natgw may have changed but whose original value it no longer knows
    /// (the record was corrupt), with their current values.
    pub unknown: Vec<String>,
}

impl Teardown {
    /// Notes a step's outcome; true when it succeeded.
    fn record(&mut self, what: String, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                info!(change = %what, "removed");
                self.done.push(what);
                true
            }
            Err(e) => {
                self.errors.push(format!("{what}: {e}"));
                false
            }
        }
    }
}

/// Removes everything natgw added and restores recorded sysctls, continuing past
/// errors. What could not be undone stays in the record for the next `down`.
pub fn teardown(observed: &Observed, netlink: &Netlink, dataplane: &dyn Dataplane) -> Teardown {
    let mut report = Teardown::default();
    let mut remaining = observed.state.clone().unwrap_or_default();

    // Forwarding goes back first: while natgw's forwarding is on, a gateway without its
    // table or programs would forward private sources untranslated and let the public
    // side in unfiltered. ip_forward first: writing it rewrites every interface's
    // `forwarding`, which are restored after it, each compared with a fresh read.
    let mut sysctls: Vec<(String, String)> =
        std::mem::take(&mut remaining.sysctls).into_iter().collect();
    sysctls.sort_by_key(|(name, _)| !is_master_switch(name));
    let mut forwarding_stays_on = false;
    for (name, value) in sysctls {
        if !is_managed_sysctl(&name) || !is_sysctl_value(&value) {
            report.errors.push(format!(
                "refusing to write sysctl {name:?} = {value:?} from the record: natgw never manages it (the record was tampered with)"
            ));
            continue;
        }
        if sysctl::read(&name).ok().as_ref() == Some(&value) {
            continue;
        }
        if !report.record(
            format!("restore sysctl {name} = {value}"),
            sysctl::write(&name, &value).map_err(|e| error_chain(&e)),
        ) {
            if is_master_switch(&name) && value == "0" {
                forwarding_stays_on = true;
            }
            remaining.sysctls.insert(name, value);
        }
    }

    let table_removed = if forwarding_stays_on {
        // Without natgw's rules the gateway would go on forwarding, untranslated and
        // unfiltered: they stay until a `down` can turn forwarding off.
        report.errors.push(format!(
            "kept natgw's {} rules: forwarding could not be turned back off, and without them private sources would leave untranslated; fix the error above and run `natgw down` again",
            dataplane.name()
        ));
        false
    } else if !dataplane.available() {
        report.record(
            format!("delete the {} rules", dataplane.name()),
            Err(crate::nft::NftError::Missing.to_string()),
        )
    } else if observed.table.is_some() || dataplane.has_leftovers() {
        report.record(
            match dataplane.name() {
                "ebpf" => "detach the eBPF programs, remove their pinned links and maps, delete nftables table inet natgw".into(),
                _ => "delete nftables table inet natgw".into(),
            },
            dataplane.remove().map_err(|e| error_chain(&e)),
        )
    } else {
        true
    };
    if table_removed {
        remaining.table = None;
    }

    // Routes natgw recorded and routes carrying its mark (the record may be gone).
    let mut routes = remaining.routes.clone();
    for route in owned_routes(observed) {
        if !routes
            .iter()
            .any(|r| r.to == route.to && r.via == route.via)
        {
            routes.push(route);
        }
    }
    remaining.routes.clear();
    for route in routes {
        let result = netlink
            .del_route(&route, ROUTE_PROTOCOL)
            .map_err(|e| error_chain(&e));
        if !report.record(
            format!("delete route {} via {}", route.to, route.via),
            result,
        ) {
            remaining.routes.push(route);
        }
    }

    if let Some(problem) = &observed.state_problem {
        // Without a trustworthy record natgw cannot know what it changed there.
        let ipv6 = observed
            .sysctls
            .contains_key(natgw_core::ipv6::IPV6_FORWARD)
            .then_some(natgw_core::ipv6::IPV6_FORWARD);
        for name in crate::observe::SYSCTLS.into_iter().chain(ipv6) {
            let now = observed.sysctls.get(name).map_or("unknown", String::as_str);
            report.unknown.push(format!(
                "{name} is {now}; natgw may have changed it but its record is unusable ({problem}); set it back yourself if needed: sysctl -w {name}=0"
            ));
        }
        match state_store::set_aside() {
            Ok(path) => report.done.push(format!(
                "moved the unusable record aside to {}",
                path.display()
            )),
            Err(e) => report.errors.push(error_chain(&e)),
        }
    } else if observed.state.is_some() {
        let finished = report.errors.is_empty();
        let result = if finished {
            state_store::remove()
        } else {
            remaining.gateway = None;
            remaining.settings = None;
            state_store::save(&remaining)
        };
        let what = if finished {
            "remove natgw state"
        } else {
            "keep in natgw state what is left to undo"
        };
        report.record(what.into(), result.map_err(|e| error_chain(&e)));
    }
    report
}

/// An error with its sources, `outer: inner: root`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
