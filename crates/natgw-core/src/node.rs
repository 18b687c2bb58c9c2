//! Private-node side (recipe section 1): the default route must point at the headnode.
//! Pure planning of `natgw node up/down`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::observed::{Observed, Route};
use crate::NODE_ROUTE_PROTOCOL;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NodeError {
    #[error("gateway {0} is link-local, which every interface has; give the headnode's ULA or global address on the private network")]
    LinkLocal(IpAddr),
    #[error("gateway {0} is an address of this node itself; give the headnode's private address")]
    OwnAddress(IpAddr),
    #[error("gateway {gateway} is not on-link: no interface of this node is on its network (networks here: {networks}); give the headnode's address on the private network")]
    NotOnLink { gateway: IpAddr, networks: String },
    #[error("gateway {gateway} is the {which} address of {network}, not a host on it; give the headnode's address on that network")]
    NotAHost {
        gateway: IpAddr,
        which: &'static str,
        network: IpNet,
    },
    #[error("the default route changed after `natgw node up` (now: {now}; natgw set default via {gateway}); natgw changes nothing: restore the previous default by hand ({previous}) and delete natgw's with `ip route del default proto {NODE_ROUTE_PROTOCOL}`")]
    ChangedSinceUp {
        now: String,
        gateway: IpAddr,
        previous: String,
    },
    #[error("the previous default route used interface {0}, which no longer exists; natgw changes nothing")]
    PreviousInterfaceGone(String),
    #[error("a different default route exists ({current}); pass --replace to point it at {gateway} (natgw node down restores it)")]
    DefaultExists { current: String, gateway: IpAddr },
}

/// A default route as it was before natgw changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousDefault {
    pub gateway: Option<IpAddr>,
    pub interface: String,
    pub metric: u32,
    /// Route protocol it had (`boot`, `static`, `dhcp`...), so it comes back unchanged.
    pub protocol: u8,
}

impl std::fmt::Display for PreviousDefault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ip route add default")?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(
            f,
            " dev {} metric {} proto {}",
            self.interface, self.metric, self.protocol
        )
    }
}

/// What `node down` needs: every default route there was before, and the one natgw set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub gateway: IpAddr,
    /// Records of earlier versions hold one route or none here.
    #[serde(deserialize_with = "one_or_many")]
    pub previous: Vec<PreviousDefault>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PreviousDefault>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(Option<PreviousDefault>),
        Many(Vec<PreviousDefault>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(one) => one.into_iter().collect(),
        Either::Many(many) => many,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeChange {
    /// The default route already goes through the gateway.
    None,
    Add,
    Replace,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    pub gateway: IpAddr,
    /// The interface the gateway is reached on.
    pub interface: String,
    pub ifindex: u32,
    pub change: NodeChange,
    /// Every IPv4 default route there is now (recorded for `node down`).
    pub previous: Vec<PreviousDefault>,
    /// The same routes as observed, for deleting them exactly on `--replace`.
    #[serde(skip)]
    pub existing: Vec<Route>,
}

/// The default routes of `gateway`'s address family: IPv4 and IPv6 defaults are
/// separate, and `node up` with an IPv6 gateway leaves the IPv4 ones alone (and back).
fn defaults(observed: &Observed, gateway: IpAddr) -> Vec<&Route> {
    observed
        .routes
        .iter()
        .filter(|r| r.destination == default_for(gateway))
        .collect()
}

pub fn plan(gateway: IpAddr, observed: &Observed, replace: bool) -> Result<NodePlan, NodeError> {
    if matches!(gateway, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
        return Err(NodeError::LinkLocal(gateway));
    }
    if observed.addresses.iter().any(|a| a.address == gateway) {
        return Err(NodeError::OwnAddress(gateway));
    }
    let on_link = observed
        .addresses
        .iter()
        .filter(|a| a.address.is_ipv4() == gateway.is_ipv4())
        .find(|a| a.network().contains(&gateway))
        .and_then(|a| observed.link_by_index(a.ifindex).map(|l| (a, l)));
    let Some((address, link)) = on_link else {
        let networks: Vec<String> = observed
            .addresses
            .iter()
            .filter(|a| a.address.is_ipv4() == gateway.is_ipv4() && !a.address.is_loopback())
            .map(|a| a.network().to_string())
            .collect();
        return Err(NodeError::NotOnLink {
            gateway,
            networks: networks.join(", "),
        });
    };
    not_network_or_broadcast(gateway, address.network())?;
    let name = |oif: Option<u32>| {
        oif.and_then(|i| observed.link_by_index(i))
            .map_or("?".into(), |l| l.name.clone())
    };
    let defaults = defaults(observed, gateway);
    let previous = defaults
        .iter()
        .map(|r| PreviousDefault {
            gateway: r.gateway,
            interface: name(r.oif),
            metric: r.metric,
            protocol: r.protocol,
        })
        .collect();
    let change = match defaults.as_slice() {
        [] => NodeChange::Add,
        [only] if only.gateway == Some(gateway) => NodeChange::None,
        _ if replace => NodeChange::Replace,
        several => {
            let current: Vec<String> = several
                .iter()
                .map(|r| {
                    format!(
                        "default via {} dev {}",
                        r.gateway.map_or("-".into(), |g| g.to_string()),
                        name(r.oif)
                    )
                })
                .collect();
            return Err(NodeError::DefaultExists {
                current: current.join("; "),
                gateway,
            });
        }
    };
    Ok(NodePlan {
        gateway,
        interface: link.name.clone(),
        ifindex: link.index,
        change,
        previous,
        existing: defaults.into_iter().cloned().collect(),
    })
}

/// What `node down` does: delete natgw's default, put back the previous ones exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeDown {
    pub delete: Vec<Route>,
    pub restore: Vec<Route>,
}

/// Plans `node down`. With a record, the defaults must be exactly the one natgw set:
/// anything else means someone changed them since, and natgw changes nothing.
pub fn down(state: Option<&NodeState>, observed: &Observed) -> Result<NodeDown, NodeError> {
    let Some(state) = state else {
        // Without a record: natgw's IPv4 defaults (what `node up` made before IPv6).
        let delete = observed
            .ipv4_defaults()
            .filter(|r| r.protocol == NODE_ROUTE_PROTOCOL)
            .cloned()
            .collect();
        return Ok(NodeDown {
            delete,
            restore: Vec::new(),
        });
    };
    let (ours, others): (Vec<&Route>, Vec<&Route>) = defaults(observed, state.gateway)
        .into_iter()
        .partition(|r| r.protocol == NODE_ROUTE_PROTOCOL);
    let delete: Vec<Route> = ours.iter().map(|r| (*r).clone()).collect();
    let as_set = ours.len() == 1 && ours[0].gateway == Some(state.gateway);
    if !as_set || !others.is_empty() {
        let now: Vec<String> = defaults(observed, state.gateway)
            .into_iter()
            .map(|r| {
                let dev = r
                    .oif
                    .and_then(|i| observed.link_by_index(i))
                    .map_or("?".into(), |l| l.name.clone());
                let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
                format!(
                    "default{via} dev {dev} metric {} proto {}",
                    r.metric, r.protocol
                )
            })
            .collect();
        let previous: Vec<String> = state.previous.iter().map(|p| p.to_string()).collect();
        return Err(NodeError::ChangedSinceUp {
            now: if now.is_empty() {
                "no default route".into()
            } else {
                now.join("; ")
            },
            gateway: state.gateway,
            previous: if previous.is_empty() {
                "there was none".into()
            } else {
                previous.join("; ")
            },
        });
    }
    let restore = state
        .previous
        .iter()
        .map(|p| {
            let link = observed
                .links
                .iter()
                .find(|l| l.name == p.interface)
                .ok_or_else(|| NodeError::PreviousInterfaceGone(p.interface.clone()))?;
            Ok(Route {
                destination: default_for(state.gateway),
                gateway: p.gateway,
                oif: Some(link.index),
                protocol: p.protocol,
                metric: p.metric,
            })
        })
        .collect::<Result<_, NodeError>>()?;
    Ok(NodeDown { delete, restore })
}

/// A /31 or /32 has no network or broadcast address (RFC 3021); larger ones do, and
/// neither can be a gateway.
fn not_network_or_broadcast(gateway: IpAddr, network: IpNet) -> Result<(), NodeError> {
    // IPv6 has no broadcast, and its "network" address is the subnet-router anycast
    // address, which a router answers.
    let which = if network.prefix_len() >= network.max_prefix_len() - 1 || gateway.is_ipv6() {
        None
    } else if gateway == network.network() {
        Some("network")
    } else if gateway == network.broadcast() {
        Some("broadcast")
    } else {
        None
    };
    match which {
        Some(which) => Err(NodeError::NotAHost {
            gateway,
            which,
            network,
        }),
        None => Ok(()),
    }
}

/// Default routes natgw installed on this node.
pub fn owned_defaults(observed: &Observed) -> Vec<IpAddr> {
    observed
        .ipv4_defaults()
        .filter(|r| r.protocol == NODE_ROUTE_PROTOCOL)
        .filter_map(|r| r.gateway)
        .collect()
}

/// The IPv4 default destination.
pub fn default_v4() -> IpNet {
    "0.0.0.0/0".parse().expect("valid prefix")
}

/// The default destination of `gateway`'s family (`0.0.0.0/0` or `::/0`).
pub fn default_for(gateway: IpAddr) -> IpNet {
    match gateway {
        IpAddr::V4(_) => default_v4(),
        IpAddr::V6(_) => "::/0".parse().expect("valid prefix"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{Address, Link, Route};

    fn node(default_via: Option<&str>) -> Observed {
        Observed {
            links: vec![Link {
                index: 2,
                name: "eth0".into(),
                up: true,
                carrier: true,
                loopback: false,
                mtu: 1500,
                kind: None,
            }],
            addresses: vec![Address {
                ifindex: 2,
                address: "10.0.0.11".parse().unwrap(),
                prefix_len: 24,
                secondary: false,
                dynamic: false,
            }],
            routes: default_via
                .map(|gw| Route {
                    destination: default_v4(),
                    gateway: Some(gw.parse().unwrap()),
                    oif: Some(2),
                    protocol: 4,
                    metric: 0,
                })
                .into_iter()
                .collect(),
            ..Observed::default()
        }
    }

    fn gw(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn adds_when_no_default_and_is_idempotent() {
        let p = plan(gw("10.0.0.1"), &node(None), false).unwrap();
        assert_eq!(
            (p.change, p.interface.as_str(), p.previous.clone()),
            (NodeChange::Add, "eth0", vec![])
        );
        assert_eq!(
            plan(gw("10.0.0.1"), &node(Some("10.0.0.1")), false)
                .unwrap()
                .change,
            NodeChange::None
        );
    }

    #[test]
    fn a_different_default_needs_replace_and_is_recorded() {
        let e = plan(gw("10.0.0.1"), &node(Some("10.0.0.254")), false).unwrap_err();
        assert!(
            e.to_string().contains("default via 10.0.0.254 dev eth0")
                && e.to_string().contains("--replace"),
            "{e}"
        );
        let p = plan(gw("10.0.0.1"), &node(Some("10.0.0.254")), true).unwrap();
        assert_eq!(p.change, NodeChange::Replace);
        assert_eq!(p.previous[0].gateway, Some(gw("10.0.0.254")));
    }

    fn default(gateway: Option<&str>, metric: u32, protocol: u8) -> Route {
        Route {
            destination: default_v4(),
            gateway: gateway.map(gw),
            oif: Some(2),
            protocol,
            metric,
        }
    }

    #[test]
    fn down_restores_every_previous_default_exactly() {
        let mut before = node(None);
        before.routes = vec![default(None, 0, 3), default(Some("10.0.0.254"), 100, 16)];
        let p = plan(gw("10.0.0.1"), &before, true).unwrap();
        let state = NodeState {
            gateway: gw("10.0.0.1"),
            previous: p.previous,
        };
        let mut after = node(None);
        after.routes = vec![default(Some("10.0.0.1"), 0, NODE_ROUTE_PROTOCOL)];
        let d = down(Some(&state), &after).unwrap();
        assert_eq!(d.delete, after.routes);
        assert_eq!(
            d.restore, before.routes,
            "device-only default, metric, protocol"
        );
    }

    #[test]
    fn down_changes_nothing_when_someone_changed_the_default_since() {
        let state = NodeState {
            gateway: gw("10.0.0.1"),
            previous: vec![],
        };
        let mut changed = node(None);
        changed.routes = vec![
            default(Some("10.0.0.1"), 0, NODE_ROUTE_PROTOCOL),
            default(Some("10.0.0.254"), 50, 4),
        ];
        let e = down(Some(&state), &changed).unwrap_err();
        assert!(
            e.to_string()
                .contains("default via 10.0.0.254 dev eth0 metric 50"),
            "{e}"
        );
        changed.routes = vec![default(Some("10.0.0.254"), 0, 4)];
        assert!(matches!(
            down(Some(&state), &changed),
            Err(NodeError::ChangedSinceUp { .. })
        ));
    }

    #[test]
    fn old_records_with_one_previous_default_still_load() {
        let old = r#"{"gateway":"10.0.0.1","previous":{"gateway":"10.0.0.254","interface":"eth0","metric":0,"protocol":4}}"#;
        let s: NodeState = serde_json::from_str(old).unwrap();
        assert_eq!(s.previous.len(), 1);
        let none: NodeState =
            serde_json::from_str(r#"{"gateway":"10.0.0.1","previous":null}"#).unwrap();
        assert!(none.previous.is_empty());
    }

    #[test]
    fn gateway_must_be_on_link_and_not_ourselves() {
        assert!(matches!(
            plan(gw("192.168.7.1"), &node(None), false),
            Err(NodeError::NotOnLink { .. })
        ));
        assert_eq!(
            plan(gw("10.0.0.11"), &node(None), false),
            Err(NodeError::OwnAddress(gw("10.0.0.11")))
        );
        for (bad, which) in [("10.0.0.0", "network"), ("10.0.0.255", "broadcast")] {
            let e = plan(gw(bad), &node(None), false).unwrap_err();
            assert!(
                matches!(e, NodeError::NotAHost { which: w, .. } if w == which),
                "{e}"
            );
        }
        assert_eq!(
            plan(gw("fe80::1"), &node(None), false),
            Err(NodeError::LinkLocal(gw("fe80::1")))
        );
        assert!(matches!(
            plan(gw("2001:db8::1"), &node(None), false),
            Err(NodeError::NotOnLink { .. })
        ));
    }

    /// The node of `node(Some("10.0.0.1"))` with fd00:77::11/64 and an IPv6 default.
    fn dual_stack(default6: Option<&str>) -> Observed {
        let mut o = node(Some("10.0.0.1"));
        o.addresses.push(Address {
            ifindex: 2,
            address: gw("fd00:77::11"),
            prefix_len: 64,
            secondary: false,
            dynamic: false,
        });
        o.routes.extend(default6.map(|g| Route {
            destination: "::/0".parse().unwrap(),
            gateway: Some(gw(g)),
            oif: Some(2),
            protocol: 4,
            metric: 1024,
        }));
        o
    }

    #[test]
    fn an_ipv6_gateway_manages_only_the_ipv6_default() {
        let p = plan(gw("fd00:77::1"), &dual_stack(None), false).unwrap();
        assert_eq!(
            (p.change, p.previous.len()),
            (NodeChange::Add, 0),
            "the IPv4 default is not IPv6's"
        );
        let o = dual_stack(Some("fd00:77::fe"));
        assert!(matches!(
            plan(gw("fd00:77::1"), &o, false),
            Err(NodeError::DefaultExists { .. })
        ));
        let p = plan(gw("fd00:77::1"), &o, true).unwrap();
        assert_eq!(p.change, NodeChange::Replace);
        assert_eq!(p.previous[0].gateway, Some(gw("fd00:77::fe")));

        // After up: down deletes natgw's IPv6 default and restores the previous one,
        // never touching the IPv4 default.
        let mut after = dual_stack(Some("fd00:77::1"));
        after.routes.last_mut().unwrap().protocol = NODE_ROUTE_PROTOCOL;
        let state = NodeState {
            gateway: gw("fd00:77::1"),
            previous: p.previous,
        };
        let d = down(Some(&state), &after).unwrap();
        assert_eq!(d.delete.len(), 1);
        assert_eq!(d.delete[0].destination, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(d.restore[0].gateway, Some(gw("fd00:77::fe")));
        assert_eq!(d.restore[0].destination, "::/0".parse::<IpNet>().unwrap());
    }
}
