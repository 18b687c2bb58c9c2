//! Desired vs observed → the list of changes that makes the system match. An empty
//! plan means the gateway is in place; after an apply, the plan must be empty.

use std::fmt;

use serde::Serialize;

use crate::config::RouteSpec;
use crate::desired::Desired;
use crate::observed::Observed;
use crate::render::render;
use crate::{ROUTE_PROTOCOL, TABLE_FAMILY, TABLE_NAME};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Write a sysctl (`sysctl -w name=to`); `from` is recorded for `down`.
    SetSysctl {
        name: String,
        from: String,
        to: String,
    },
    /// `ip route add TO via VIA proto 88`.
    AddRoute { route: RouteSpec },
    /// A route natgw added earlier that is no longer configured.
    DelRoute { route: RouteSpec },
    /// Install the desired rules in the data plane (for nftables: replace the table
    /// `inet natgw` atomically); `from` is the digest the live rules carry (none when
    /// there are none), `digest` the new one. The rules themselves are rendered from
    /// the desired gateway by the data plane when it applies the change.
    ReplaceTable {
        reason: TableReason,
        from: Option<String>,
        digest: String,
        /// With the eBPF data plane: the public interface its programs are attached to
        /// (the change installs them too, or re-attaches them when they went missing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ebpf: Option<String>,
    },
    /// An earlier apply stopped half-way (killed, crashed): finish it and record the
    /// gateway, even when the system already matches.
    FinishApply { pid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableReason {
    /// No table yet.
    Create,
    /// The desired rules changed (interfaces, prefixes, address).
    Update,
    /// The live table is no longer what natgw installed: someone edited it.
    Drift,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut changes = Vec::new();

    // accept_ra = 2 first, before forwarding: turning forwarding on purges the default
    // routes learnt from router advertisements on interfaces that do not accept them
    // then. Forwarding and the other sysctls come last, after the table: until the
    // table (and the eBPF plane's programs) are in, forwarding would let private sources
    // out untranslated and the public side in unfiltered.
    let (accept_ra, sysctls): (Vec<_>, Vec<_>) = desired
        .sysctls
        .iter()
        .partition(|(name, _)| name.ends_with(".accept_ra"));
    let set_sysctls = |changes: &mut Vec<Change>, sysctls: Vec<(&String, &String)>| {
        for (name, want) in sysctls {
            let have = observed.sysctls.get(name);
            if have != Some(want) {
                changes.push(Change::SetSysctl {
                    name: name.clone(),
                    from: have.cloned().unwrap_or_else(|| "unset".into()),
                    to: want.clone(),
                });
            }
        }
    };
    set_sysctls(&mut changes, accept_ra);

    // Deletes first: a route whose `via` changed is deleted and added again, and the
    // kernel refuses a second route to the same destination.
    for route in owned_routes(observed) {
        let wanted = desired
            .routes
            .iter()
            .any(|s| s.to == route.to && s.via == route.via);
        if !wanted {
            changes.push(Change::DelRoute { route });
        }
    }
    let present = |spec: &RouteSpec| {
        observed
            .routes
            .iter()
            .any(|r| r.destination == spec.to && r.gateway == Some(spec.via))
    };
    for spec in &desired.routes {
        if !present(spec) {
            changes.push(Change::AddRoute {
                route: spec.clone(),
            });
        }
    }

    // nft 1.0.6 leaves table comments out of its JSON, so the digest of what was
    // installed is read from natgw's record; the fingerprint tells whether the live
    // table is still exactly that.
    let digest = render(desired).digest;
    let installed = observed.state.as_ref().and_then(|s| s.table.as_ref());
    let reason = match (&observed.table, installed) {
        (None, _) => Some(TableReason::Create),
        (Some(_), None) => Some(TableReason::Update),
        (Some(_), Some(installed)) if installed.digest != digest => Some(TableReason::Update),
        (Some(live), Some(installed)) if installed.fingerprint != live.fingerprint => {
            Some(TableReason::Drift)
        }
        _ => None,
    };
    if let Some(reason) = reason {
        changes.push(Change::ReplaceTable {
            reason,
            from: observed
                .table
                .as_ref()
                .and(installed)
                .map(|t| t.digest.clone()),
            digest,
            ebpf: desired
                .dataplane
                .ebpf()
                .map(|_| desired.public.name.as_str().to_string()),
        });
    }
    set_sysctls(&mut changes, sysctls);
    if let Some(applying) = observed.state.as_ref().and_then(|s| s.applying) {
        changes.push(Change::FinishApply { pid: applying.pid });
    }
    Plan { changes }
}

/// The gateway's routes in the main table: natgw's mark, never a default route (the
/// gateway never adds one; a default route with a natgw mark belongs to `node up`).
pub fn owned_routes(observed: &Observed) -> Vec<RouteSpec> {
    observed
        .routes
        .iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && r.destination.prefix_len() > 0)
        .filter_map(|r| {
            Some(RouteSpec {
                to: r.destination,
                via: r.gateway?,
                origin: "natgw".into(),
            })
        })
        .collect()
}

/// What must hold after an apply besides an empty plan: the uplink keeps the default
/// route it had when the gateway was recorded (another tool or owner may have taken
/// it away; translated traffic would then have nowhere to go).
pub fn verify(desired: &Desired, observed: &Observed) -> Result<(), String> {
    verify_applied(desired, observed)?;
    match uplink_lost(desired, observed) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The system needs no further change.
pub fn verify_applied(desired: &Desired, observed: &Observed) -> Result<(), String> {
    let remaining = plan(desired, observed);
    if !remaining.is_empty() {
        return Err(format!(
            "the system still differs from the desired gateway:\n{remaining}"
        ));
    }
    Ok(())
}

/// The uplink had a default route when the gateway was recorded and has none now.
pub fn uplink_lost(desired: &Desired, observed: &Observed) -> Option<String> {
    let recorded = observed
        .state
        .as_ref()
        .and_then(|s| s.gateway.as_ref())
        .filter(|g| g.public.name == desired.public.name)
        .and_then(|g| g.uplink_default);
    let (Some(was), None) = (recorded, desired.uplink_default) else {
        return None;
    };
    let via = was.gateway.map_or(String::new(), |g| format!(" via {g}"));
    Some(format!(
        "the public interface {} lost its IPv4 default route (it had default{via}); restore it: ip route add default{via} dev {}",
        desired.public.name, desired.public.name
    ))
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetSysctl { name, from, to } => write!(f, "set sysctl {name}: {from} -> {to}"),
            Change::AddRoute { route } => write!(
                f,
                "add route {} via {} (proto {ROUTE_PROTOCOL})",
                route.to, route.via
            ),
            Change::DelRoute { route } => write!(
                f,
                "delete route {} via {} (no longer configured)",
                route.to, route.via
            ),
            Change::ReplaceTable {
                reason,
                from,
                digest,
                ebpf,
            } => {
                let what = match reason {
                    TableReason::Create => "create",
                    TableReason::Update => "update (rules changed)",
                    TableReason::Drift if ebpf.is_some() => {
                        "restore (the live table or the eBPF programs changed outside natgw)"
                    }
                    TableReason::Drift => "restore (the live table was modified outside natgw)",
                };
                let from = from
                    .as_deref()
                    .map_or("none".to_string(), |d| format!("digest {d}"));
                write!(
                    f,
                    "{what} nftables table {TABLE_FAMILY} {TABLE_NAME}: {from} -> digest {digest}"
                )?;
                match ebpf {
                    Some(public) => write!(
                        f,
                        ", with natgw's eBPF programs attached to {public} (kept when they already run this configuration)"
                    ),
                    None => Ok(()),
                }
            }
            Change::FinishApply { pid } => write!(
                f,
                "finish the apply that natgw (pid {pid}) left unfinished, and record the gateway"
            ),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no changes");
        }
        for change in &self.changes {
            writeln!(f, "  {change}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Interface, SnatMode};
    use crate::observed::{LiveTable, Route};
    use crate::state::RecordedState;
    use crate::state::{Applying, InstalledTable};
    use std::collections::BTreeMap;

    fn desired() -> Desired {
        let iface = |n: &str| Interface {
            name: crate::IfName::new(n).unwrap(),
            addresses: vec![],
        };
        Desired {
            public: iface("wan0"),
            private: vec![iface("lan0")],
            private_prefixes: vec!["10.0.0.0/24".parse().unwrap()],
            snat: SnatMode::To("203.0.113.1".parse().unwrap()),
            routes: vec![RouteSpec {
                to: "10.20.0.0/16".parse().unwrap(),
                via: "10.0.0.254".parse().unwrap(),
                origin: String::new(),
            }],
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            uplink_default: None,
            mss_clamp: false,
            port_selection: Default::default(),
            timeouts: Default::default(),
            warnings: vec![],
            ha_public_vip: None,
            dataplane: Default::default(),
            ipv6: None,
            public_ingress_hook: false,
        }
    }

    fn route(to: &str, via: &str, protocol: u8) -> Route {
        Route {
            destination: to.parse().unwrap(),
            gateway: Some(via.parse().unwrap()),
            oif: Some(3),
            protocol,
            metric: 0,
        }
    }

    /// The system right after a successful apply of `desired()`.
    fn applied() -> Observed {
        let table = LiveTable {
            fingerprint: "as-installed".into(),
        };
        Observed {
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            routes: vec![route("10.20.0.0/16", "10.0.0.254", ROUTE_PROTOCOL)],
            table: Some(table),
            state: Some(RecordedState {
                table: Some(InstalledTable {
                    digest: render(&desired()).digest,
                    fingerprint: "as-installed".into(),
                }),
                ..Default::default()
            }),
            ..Observed::default()
        }
    }

    #[test]
    fn fresh_system_needs_everything() {
        let p = plan(&desired(), &Observed::default());
        let text = p.to_string();
        assert_eq!(p.changes.len(), 3, "{text}");
        assert!(text.contains("set sysctl net.ipv4.ip_forward: unset -> 1"));
        assert!(text.contains("add route 10.20.0.0/16 via 10.0.0.254"));
        // Forwarding last: never on while the table is not in yet.
        assert!(matches!(
            p.changes[1],
            Change::ReplaceTable {
                reason: TableReason::Create,
                ..
            }
        ));
        assert!(
            matches!(&p.changes[2], Change::SetSysctl { name, .. } if name == "net.ipv4.ip_forward")
        );
    }

    #[test]
    fn accept_ra_is_set_before_ipv6_forwarding() {
        let mut d = desired();
        d.sysctls
            .insert("net.ipv6.conf.all.forwarding".into(), "1".into());
        d.sysctls
            .insert("net.ipv6.conf.wan0.accept_ra".into(), "2".into());
        let names: Vec<String> = plan(&d, &Observed::default())
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::SetSysctl { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            [
                "net.ipv6.conf.wan0.accept_ra",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding"
            ]
        );
    }

    #[test]
    fn applied_system_needs_nothing() {
        let p = plan(&desired(), &applied());
        assert!(p.is_empty(), "{p}");
        assert_eq!(p.to_string(), "no changes\n");
    }

    #[test]
    fn forwarding_turned_off_is_planned_back_on() {
        let mut o = applied();
        o.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
        let p = plan(&desired(), &o);
        assert_eq!(
            p.changes,
            vec![Change::SetSysctl {
                name: "net.ipv4.ip_forward".into(),
                from: "0".into(),
                to: "1".into()
            }]
        );
    }

    #[test]
    fn changed_desire_updates_and_edited_table_is_drift() {
        let mut d = desired();
        d.snat = SnatMode::Masquerade;
        assert!(matches!(
            plan(&d, &applied()).changes[..],
            [Change::ReplaceTable {
                reason: TableReason::Update,
                ..
            }]
        ));

        let mut o = applied();
        o.table.as_mut().unwrap().fingerprint = "edited".into();
        assert!(matches!(
            plan(&desired(), &o).changes[..],
            [Change::ReplaceTable {
                reason: TableReason::Drift,
                ..
            }]
        ));
    }

    #[test]
    fn stale_owned_routes_are_removed_and_foreign_routes_left_alone() {
        let mut o = applied();
        o.routes
            .push(route("10.30.0.0/16", "10.0.0.254", ROUTE_PROTOCOL));
        o.routes.push(route("10.40.0.0/16", "10.0.0.254", 4));
        let p = plan(&desired(), &o);
        assert_eq!(p.changes.len(), 1, "{p}");
        assert!(p.to_string().contains("delete route 10.30.0.0/16"));
    }

    #[test]
    fn an_equal_foreign_route_satisfies_the_desire() {
        let mut o = applied();
        o.routes = vec![route("10.20.0.0/16", "10.0.0.254", 4)];
        assert!(plan(&desired(), &o).is_empty());
    }

    #[test]
    fn an_unfinished_apply_is_never_no_changes() {
        let mut o = applied();
        o.state.as_mut().unwrap().applying = Some(Applying {
            pid: 42,
            started: 0,
        });
        let p = plan(&desired(), &o);
        assert_eq!(p.changes, vec![Change::FinishApply { pid: 42 }]);
    }

    #[test]
    fn default_routes_and_other_owners_are_never_deleted() {
        let mut o = applied();
        o.routes
            .push(route("0.0.0.0/0", "203.0.113.81", ROUTE_PROTOCOL));
        o.routes.push(route(
            "0.0.0.0/0",
            "203.0.113.81",
            crate::NODE_ROUTE_PROTOCOL,
        ));
        assert!(plan(&desired(), &o).is_empty());
    }

    #[test]
    fn verification_fails_when_the_uplink_lost_its_default_route() {
        let uplink = crate::UplinkDefault {
            gateway: Some("203.0.113.80".parse().unwrap()),
            protocol: 4,
            metric: 0,
        };
        let mut recorded = desired();
        recorded.uplink_default = Some(uplink);
        let mut o = applied();
        o.state.as_mut().unwrap().gateway = Some(recorded.clone());
        assert_eq!(verify(&recorded, &o), Ok(()));
        let err = verify(&desired(), &o).unwrap_err();
        assert!(err.contains("wan0 lost its IPv4 default route"), "{err}");
    }
}
