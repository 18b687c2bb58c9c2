//! Private-node side (recipe section 1): the default route must point at the headnode.
//! Pure planning of `natgw node up/down`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::observed::Observed;
use crate::NODE_ROUTE_PROTOCOL;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NodeError {
    #[error("gateway {0} is not an IPv4 address; IPv6 default routes are not supported yet")]
    NotIpv4(IpAddr),
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

/// What `node down` needs: the previous default (if any) and the one natgw set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub gateway: IpAddr,
    pub previous: Option<PreviousDefault>,
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
    pub previous: Option<PreviousDefault>,
}

pub fn plan(gateway: IpAddr, observed: &Observed, replace: bool) -> Result<NodePlan, NodeError> {
    if !gateway.is_ipv4() {
        return Err(NodeError::NotIpv4(gateway));
    }
    if observed.addresses.iter().any(|a| a.address == gateway) {
        return Err(NodeError::OwnAddress(gateway));
    }
    let on_link = observed
        .addresses
        .iter()
        .filter(|a| a.address.is_ipv4())
        .find(|a| a.network().contains(&gateway))
        .and_then(|a| observed.link_by_index(a.ifindex).map(|l| (a, l)));
    let Some((address, link)) = on_link else {
        let networks: Vec<String> = observed
            .addresses
            .iter()
            .filter(|a| a.address.is_ipv4() && !a.address.is_loopback())
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
    let defaults: Vec<_> = observed.ipv4_defaults().collect();
    let previous = defaults
        .iter()
        .min_by_key(|r| r.metric)
        .map(|r| PreviousDefault {
            gateway: r.gateway,
            interface: name(r.oif),
            metric: r.metric,
            protocol: r.protocol,
        });
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
    })
}

/// A /31 or /32 has no network or broadcast address (RFC 3021); larger ones do, and
/// neither can be a gateway.
fn not_network_or_broadcast(gateway: IpAddr, network: IpNet) -> Result<(), NodeError> {
    let which = if network.prefix_len() >= network.max_prefix_len() - 1 {
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
            (NodeChange::Add, "eth0", None)
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
        assert_eq!(p.previous.unwrap().gateway, Some(gw("10.0.0.254")));
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
            plan(gw("2001:db8::1"), &node(None), false),
            Err(NodeError::NotIpv4(gw("2001:db8::1")))
        );
    }
}
