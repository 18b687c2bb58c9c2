//! Carries out a plan. Every step that succeeded registers how to undo it; when a later
//! step fails, the undo list runs in reverse so the previous state is back in place.
//! Teardown (`down`) is the opposite: it keeps going after an error and reports all.

use natgw_core::plan::Change;
use natgw_core::{Observed, Plan, RecordedState, ROUTE_PROTOCOL};

use crate::netlink::Netlink;
use crate::{nft, state_store, sysctl};

/// Test hook: `NATGW_TEST_FAIL_AT=table` (or `sysctl`, `route`, `state`) makes that step
/// fail, to prove that a failure half-way rolls back what was already changed.
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
        format!("; rollback incomplete: {}", errors.join("; "))
    }
}

enum Undo {
    Sysctl { name: String, value: String },
    AddRoute(natgw_core::RouteSpec),
    DelRoute(natgw_core::RouteSpec),
    Table(Option<String>),
}

/// Applies `plan` to a system last seen as `observed`; returns the new records.
pub fn apply(
    plan: &Plan,
    observed: &Observed,
    netlink: &Netlink,
) -> Result<RecordedState, ApplyError> {
    // Validate the ruleset against the kernel first: a kernel without nftables NAT
    // fails here, before anything changed.
    for change in &plan.changes {
        if let Change::ReplaceTable { ruleset, .. } = change {
            nft::check(ruleset).map_err(|e| failed(change, e.to_string(), vec![]))?;
        }
    }

    let mut state = observed.state.clone().unwrap_or_default();
    let mut undo: Vec<Undo> = Vec::new();
    for change in &plan.changes {
        if let Err(cause) = apply_one(change, observed, netlink, &mut state, &mut undo) {
            let rollback_errors = roll_back(undo, netlink);
            return Err(failed(change, cause, rollback_errors));
        }
    }
    let saved =
        injected("state").and_then(|_| state_store::save(&state).map_err(|e| format!("{e:#}")));
    if let Err(cause) = saved {
        let rollback_errors = roll_back(undo, netlink);
        return Err(ApplyError {
            step: "record natgw state".into(),
            cause,
            rollback_errors,
        });
    }
    Ok(state)
}

fn failed(change: &Change, cause: String, rollback_errors: Vec<String>) -> ApplyError {
    ApplyError {
        step: change.to_string(),
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

fn apply_one(
    change: &Change,
    observed: &Observed,
    netlink: &Netlink,
    state: &mut RecordedState,
    undo: &mut Vec<Undo>,
) -> Result<(), String> {
    let text = |e: &dyn std::error::Error| error_chain(e);
    match change {
        Change::SetSysctl { name, from, to } => {
            injected("sysctl")?;
            sysctl::write(name, to).map_err(|e| text(&e))?;
            undo.push(Undo::Sysctl {
                name: name.clone(),
                value: from.clone(),
            });
            // Only the value from before natgw's first change is what `down` restores.
            state
                .sysctls
                .entry(name.clone())
                .or_insert_with(|| from.clone());
        }
        Change::AddRoute { route } => {
            injected("route")?;
            netlink.add_route(route).map_err(|e| text(&e))?;
            undo.push(Undo::AddRoute(route.clone()));
            state.routes.push(route.clone());
        }
        Change::DelRoute { route } => {
            injected("route")?;
            netlink.del_route(route).map_err(|e| text(&e))?;
            undo.push(Undo::DelRoute(route.clone()));
            state
                .routes
                .retain(|r| !(r.to == route.to && r.via == route.via));
        }
        Change::ReplaceTable { ruleset, .. } => {
            injected("table")?;
            nft::replace(ruleset).map_err(|e| text(&e))?;
            undo.push(Undo::Table(observed.table_listing.clone()));
            state.table_listing = nft::list_table().map_err(|e| text(&e))?;
        }
    }
    Ok(())
}

fn roll_back(undo: Vec<Undo>, netlink: &Netlink) -> Vec<String> {
    let mut errors = Vec::new();
    for step in undo.into_iter().rev() {
        let result = match &step {
            Undo::Sysctl { name, value } => sysctl::write(name, value).map_err(|e| error_chain(&e)),
            Undo::AddRoute(route) => netlink.del_route(route).map_err(|e| error_chain(&e)),
            Undo::DelRoute(route) => netlink.add_route(route).map_err(|e| error_chain(&e)),
            Undo::Table(listing) => nft::restore(listing.as_deref()).map_err(|e| error_chain(&e)),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    errors
}

/// What `down` did and what it could not do.
#[derive(Debug, Default, serde::Serialize)]
pub struct Teardown {
    pub done: Vec<String>,
    pub errors: Vec<String>,
}

/// Removes everything natgw added and restores recorded sysctls, continuing past errors.
pub fn teardown(observed: &Observed, netlink: &Netlink) -> Teardown {
    let mut report = Teardown::default();
    let mut record = |what: String, result: Result<(), String>| match result {
        Ok(()) => report.done.push(what),
        Err(e) => report.errors.push(format!("{what}: {e}")),
    };
    if observed.table_listing.is_some() {
        record(
            "delete nftables table inet natgw".into(),
            nft::delete_table().map_err(|e| error_chain(&e)),
        );
    }
    let state = observed.state.clone().unwrap_or_default();
    let mut routes = state.routes.clone();
    for route in observed
        .routes
        .iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
    {
        if let Some(via) = route.gateway {
            if !routes
                .iter()
                .any(|r| r.to == route.destination && r.via == via)
            {
                routes.push(natgw_core::RouteSpec {
                    to: route.destination,
                    via,
                    origin: String::new(),
                });
            }
        }
    }
    for route in routes {
        let result = netlink.del_route(&route).map_err(|e| error_chain(&e));
        record(
            format!("delete route {} via {}", route.to, route.via),
            result,
        );
    }
    for (name, value) in &state.sysctls {
        if observed.sysctls.get(name) != Some(value) {
            record(
                format!("restore sysctl {name} = {value}"),
                sysctl::write(name, value).map_err(|e| error_chain(&e)),
            );
        }
    }
    if observed.state.is_some() {
        record(
            "remove natgw state".into(),
            state_store::remove().map_err(|e| error_chain(&e)),
        );
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
