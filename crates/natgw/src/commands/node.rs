//! `natgw node up/down/check/persist`: the private-node end of the recipe.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use natgw_core::doctor::{Finding, Fix, Status};
use natgw_core::node::{self, NodeChange, NodeState};
use natgw_core::{Observed, RouteSpec, NODE_ROUTE_PROTOCOL};
use natgw_linux::netlink::Netlink;
use natgw_linux::observe::{gateway_answers, observe_network};
use natgw_linux::state_store;
use serde::Serialize;

use super::{gateway, persist};
use crate::cli::NodeAction;
use crate::exit::{self, problem, usage};
use crate::output;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(action: NodeAction) -> exit::Result<i32> {
    match action {
        NodeAction::Up {
            gateway,
            replace,
            json,
        } => up(gateway, replace, json),
        NodeAction::Down { json } => down(json),
        NodeAction::Check { json } => check(json),
        NodeAction::Persist {
            gateway,
            dry_run,
            root,
            json,
        } => persist::run(gateway, dry_run, &root, json),
    }
}

fn default_via(gateway: IpAddr) -> RouteSpec {
    RouteSpec {
        to: node::default_for(gateway),
        via: gateway,
        origin: "natgw node".into(),
    }
}

/// The record of the default route of `gateway`'s family: IPv4 and IPv6 defaults are
/// set, recorded and restored independently.
fn record_of(gateway: IpAddr) -> &'static str {
    match gateway {
        IpAddr::V4(_) => state_store::NODE,
        IpAddr::V6(_) => state_store::NODE6,
    }
}

/// How a gateway's presence is checked: ARP (IPv4) or neighbour discovery (IPv6).
fn asked_by(gateway: IpAddr) -> &'static str {
    match gateway {
        IpAddr::V4(_) => "ARP",
        IpAddr::V6(_) => "neighbour discovery",
    }
}

fn observe(netlink: &Netlink) -> exit::Result<Observed> {
    observe_network(netlink).map_err(problem)
}

#[derive(Serialize)]
struct UpReport<'a> {
    plan: &'a node::NodePlan,
    applied: bool,
}

fn up(gateway_ip: IpAddr, replace: bool, json: bool) -> exit::Result<i32> {
    gateway::require_privilege()?;
    let _lock = gateway::lock("node up")?;
    let netlink = gateway::connect()?;
    let observed = observe(&netlink)?;
    let plan = node::plan(gateway_ip, &observed, replace).map_err(usage)?;
    if plan.change == NodeChange::None {
        if json {
            output::json(&UpReport {
                plan: &plan,
                applied: false,
            });
        } else {
            println!(
                "no changes: the default route already goes through {gateway_ip} (dev {})",
                plan.interface
            );
        }
        return Ok(exit::OK);
    }
    if !answers_now(&netlink, &observed, plan.ifindex, gateway_ip)? {
        return Err(problem(anyhow!(
            "gateway {gateway_ip} does not answer {} on {} within {ANSWER_TIMEOUT:?}; is the headnode up with that address? (nothing was changed)",
            asked_by(gateway_ip),
            plan.interface
        )));
    }
    // Record first: if the route change then fails, the record only says what was there.
    let state = NodeState {
        gateway: gateway_ip,
        previous: plan.previous.clone(),
    };
    let record = record_of(gateway_ip);
    let recorded: Option<NodeState> = state_store::load_named(record).map_err(problem)?;
    let keep = recorded.clone().map_or(state.clone(), |old| NodeState {
        gateway: gateway_ip,
        previous: old.previous,
    });
    state_store::save_named(record, &keep).map_err(problem)?;
    let result = match plan.change {
        NodeChange::Add => netlink.add_route(&default_via(gateway_ip), NODE_ROUTE_PROTOCOL),
        // Replace the metric-0 default (or add), then delete every other default
        // exactly, so that one default remains and `down` can put them all back.
        _ => netlink
            .replace_route(&default_via(gateway_ip), NODE_ROUTE_PROTOCOL)
            .and_then(|()| {
                plan.existing
                    .iter()
                    .filter(|r| r.protocol != NODE_ROUTE_PROTOCOL)
                    .try_for_each(|r| netlink.del_route_exact(r))
            }),
    };
    if let Err(e) = result {
        // The record as it was: it may hold the admin's original default route.
        let _ = match &recorded {
            Some(old) => state_store::save_named(record, old),
            None => state_store::remove_named(record),
        };
        return Err(problem(e));
    }
    if json {
        output::json(&UpReport {
            plan: &plan,
            applied: true,
        });
    } else {
        let what = if plan.change == NodeChange::Add {
            "added"
        } else {
            "replaced"
        };
        println!(
            "{what} default route via {gateway_ip} dev {} (gateway answers {})",
            plan.interface,
            asked_by(gateway_ip)
        );
    }
    Ok(exit::OK)
}

#[derive(Serialize, Default)]
struct DownReport {
    done: Vec<String>,
}

fn down(json: bool) -> exit::Result<i32> {
    gateway::require_privilege()?;
    let _lock = gateway::lock("node down")?;
    let netlink = gateway::connect()?;
    let observed = observe(&netlink)?;
    let mut report = DownReport::default();
    let dev = |r: &natgw_core::Route| {
        r.oif
            .and_then(|i| observed.link_by_index(i))
            .map_or("?".into(), |l| l.name.clone())
    };
    let describe = |r: &natgw_core::Route| {
        let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
        format!(
            "default{via} dev {} metric {} proto {}",
            dev(r),
            r.metric,
            r.protocol
        )
    };
    // IPv4 first: without any record it still removes natgw's IPv4 default.
    for record in [state_store::NODE, state_store::NODE6] {
        let recorded: Option<NodeState> = state_store::load_named(record).map_err(problem)?;
        if record == state_store::NODE6 && recorded.is_none() {
            continue;
        }
        // Someone changed the defaults since `node up`: say so, keep the record, touch nothing.
        let down = node::down(recorded.as_ref(), &observed).map_err(problem)?;
        for route in &down.delete {
            netlink.del_route_exact(route).map_err(problem)?;
            report.done.push(format!("deleted {}", describe(route)));
        }
        for route in &down.restore {
            netlink.add_route_exact(route).map_err(problem)?;
            report.done.push(format!("restored {}", describe(route)));
        }
        state_store::remove_named(record).map_err(problem)?;
    }
    if json {
        output::json(&report);
    } else if report.done.is_empty() {
        println!("nothing to restore: natgw node up was not run here");
    } else {
        report.done.iter().for_each(|l| println!("  {l}"));
    }
    Ok(exit::OK)
}

/// Whether the gateway answers an ARP request now, from our address next to it; a
/// link without ARP falls back to the neighbour table.
fn answers_now(
    netlink: &Netlink,
    observed: &Observed,
    ifindex: u32,
    gateway: IpAddr,
) -> exit::Result<bool> {
    let source = observed
        .addresses
        .iter()
        .filter(|a| a.ifindex == ifindex)
        .filter(|a| a.network().contains(&gateway))
        .find_map(|a| match a.address {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
    if let (Some(source), IpAddr::V4(target)) = (source, gateway) {
        let probed = natgw_linux::arp::probe(ifindex, source, target, ANSWER_TIMEOUT)
            .with_context(|| format!("cannot send an ARP request for {gateway}"))
            .map_err(problem)?;
        if let Some(answered) = probed {
            return Ok(answered);
        }
    }
    gateway_answers(netlink, ifindex, gateway, ANSWER_TIMEOUT).map_err(problem)
}

fn check(json: bool) -> exit::Result<i32> {
    gateway::require_privilege()?;
    let netlink = gateway::connect()?;
    let observed = observe(&netlink)?;
    let mut findings = Vec::new();
    let defaults: Vec<_> = observed.ipv4_defaults().collect();
    match defaults.iter().min_by_key(|r| r.metric) {
        None => findings.push(Finding::fail(
            "default-route",
            "no IPv4 default route: outbound traffic has nowhere to go",
            Fix::say(
                "route through the headnode: natgw node up --gateway HEADNODE_PRIVATE_ADDRESS",
            ),
        )),
        Some(route) => {
            let gw = route.gateway;
            let dev = route
                .oif
                .and_then(|i| observed.link_by_index(i))
                .map_or("?".into(), |l| l.name.clone());
            findings.push(Finding::pass(
                "default-route",
                format!(
                    "default via {} dev {dev}",
                    gw.map_or("-".into(), |g| g.to_string())
                ),
            ));
            match (gw, route.oif) {
                (Some(gw), Some(oif)) if answers_now(&netlink, &observed, oif, gw)? => findings
                    .push(Finding::pass(
                        "gateway",
                        format!("{gw} answers ARP on {dev}"),
                    )),
                (Some(gw), _) => findings.push(Finding::fail(
                    "gateway",
                    format!("{gw} does not answer ARP on {dev}"),
                    Fix::say("check that the headnode is up and has this address on the private network"),
                )),
                (None, _) => findings.push(Finding::warn(
                    "gateway",
                    format!("the default route has no gateway (dev {dev})"),
                    Fix::say("route through the headnode: natgw node up --gateway HEADNODE_PRIVATE_ADDRESS --replace"),
                )),
            }
        }
    }
    findings.extend(ipv6_default(&observed));
    findings.push(natgw_core::doctor::checks::dns(
        &observed,
        &natgw_linux::firewall::nameservers(),
    ));
    if json {
        output::json(&serde_json::json!({ "checks": findings }));
    } else {
        super::doctor::print_findings(&findings);
    }
    Ok(if findings.iter().any(|f| f.status == Status::Fail) {
        exit::PROBLEM
    } else {
        exit::OK
    })
}

/// On a node with a ULA or global IPv6 address: whether IPv6 has a default route.
fn ipv6_default(observed: &Observed) -> Option<Finding> {
    const ID: &str = "default-route-ipv6";
    observed.addresses.iter().find(|a| match a.address {
        IpAddr::V6(v6) => !v6.is_loopback() && v6.segments()[0] & 0xffc0 != 0xfe80,
        IpAddr::V4(_) => false,
    })?;
    let route = observed
        .routes
        .iter()
        .filter(|r| r.destination == node::default_for(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)))
        .min_by_key(|r| r.metric);
    Some(match route {
        Some(r) => Finding::pass(
            ID,
            format!(
                "default via {} dev {}",
                r.gateway.map_or("-".into(), |g| g.to_string()),
                r.oif
                    .and_then(|i| observed.link_by_index(i))
                    .map_or("?", |l| l.name.as_str())
            ),
        ),
        None => Finding::warn(
            ID,
            "this node has IPv6 addresses but no IPv6 default route: IPv6 outbound has nowhere to go",
            Fix::say("route IPv6 through the headnode: natgw node up --gateway HEADNODE_PRIVATE_IPV6_ADDRESS"),
        ),
    })
}
