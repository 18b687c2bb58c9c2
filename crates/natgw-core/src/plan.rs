//! Desired vs observed → the list of changes that makes the system match. An empty
//! plan means the gateway is in place; after an apply, the plan must be empty.

use std::fmt;

use serde::Serialize;

use crate::config::RouteSpec;
use crate::desired::Desired;
use crate::observed::Observed;
use crate::render::{listed_digest, render};
use crate::ROUTE_PROTOCOL;

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
    /// Replace the table `inet natgw` atomically with `ruleset`; `from` is the digest the
    /// live table carries (none when there is no table), `digest` the new one.
    ReplaceTable {
        reason: TableReason,
        from: Option<String>,
        digest: String,
        ruleset: String,
    },
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

    for (name, want) in &desired.sysctls {
        let have = observed.sysctls.get(name);
        if have != Some(want) {
            changes.push(Change::SetSysctl {
                name: name.clone(),
                from: have.cloned().unwrap_or_else(|| "unset".into()),
                to: want.clone(),
            });
        }
    }

    let owned: Vec<_> = observed
        .routes
        .iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .collect();
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
    for route in owned {
        let wanted = desired
            .routes
            .iter()
            .any(|s| s.to == route.destination && Some(s.via) == route.gateway);
        if let (false, Some(via)) = (wanted, route.gateway) {
            changes.push(Change::DelRoute {
                route: RouteSpec {
                    to: route.destination,
                    via,
                    origin: "natgw".into(),
                },
            });
        }
    }

    let ruleset = render(desired);
    let reason = match &observed.table_listing {
        None => Some(TableReason::Create),
        Some(listing) if listed_digest(listing) != Some(ruleset.digest.as_str()) => {
            Some(TableReason::Update)
        }
        Some(listing) => match observed
            .state
            .as_ref()
            .and_then(|s| s.table_listing.as_ref())
        {
            Some(recorded) if recorded != listing => Some(TableReason::Drift),
            _ => None,
        },
    };
    if let Some(reason) = reason {
        changes.push(Change::ReplaceTable {
            reason,
            from: observed
                .table_listing
                .as_deref()
                .and_then(listed_digest)
                .map(str::to_string),
            digest: ruleset.digest,
            ruleset: ruleset.text,
        });
    }
    Plan { changes }
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
                ..
            } => {
                let what = match reason {
                    TableReason::Create => "create",
                    TableReason::Update => "update (rules changed)",
                    TableReason::Drift => "restore (the live table was modified outside natgw)",
                };
                let from = from
                    .as_deref()
                    .map_or("none".to_string(), |d| format!("digest {d}"));
                write!(
                    f,
                    "{what} nftables table inet natgw: {from} -> digest {digest}"
                )
            }
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
    use crate::observed::Route;
    use crate::state::RecordedState;
    use std::collections::BTreeMap;

    fn desired() -> Desired {
        let iface = |n: &str| Interface {
            name: n.into(),
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
            warnings: vec![],
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
        let listing = render(&desired()).text;
        Observed {
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            routes: vec![route("10.20.0.0/16", "10.0.0.254", ROUTE_PROTOCOL)],
            table_listing: Some(listing.clone()),
            state: Some(RecordedState {
                table_listing: Some(listing),
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
        assert!(matches!(
            p.changes[2],
            Change::ReplaceTable {
                reason: TableReason::Create,
                ..
            }
        ));
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
        o.table_listing = Some(o.table_listing.unwrap().replace(
            "\t\tct state invalid counter name \"dropped_invalid\" drop\n",
            "",
        ));
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
}
