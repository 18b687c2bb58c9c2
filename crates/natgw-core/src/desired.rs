//! The gateway natgw should make: the resolved roles, prefixes and translation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::config::RouteSpec;
use crate::ifname::IfName;
use crate::pool::{PortBlocks, PortSelection, Timeouts};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub public: Interface,
    pub private: Vec<Interface>,
    /// Sources that get translated and may leave: connected networks of the private
    /// interfaces, configured extra prefixes and networks behind routers. Normalised:
    /// sorted, no prefix inside another.
    pub private_prefixes: Vec<IpNet>,
    pub snat: SnatMode,
    pub routes: Vec<RouteSpec>,
    /// Sysctls that must hold, by dotted name.
    pub sysctls: BTreeMap<String, String>,
    /// The uplink's IPv4 default route when `up` resolved the gateway.
    pub uplink_default: Option<UplinkDefault>,
    /// Clamp the TCP MSS of forwarded SYNs to the route's MTU (`mss_clamp = true`).
    pub mss_clamp: bool,
    pub port_selection: PortSelection,
    /// Conntrack timeouts of the translated flows.
    pub timeouts: Timeouts,
    /// Things worth telling the admin that do not stop `up` (no carrier, ...).
    pub warnings: Vec<String>,
    /// The HA pair's public address: new connections to it are dropped rather than
    /// answered with resets, so that a connection moved by a failover survives until
    /// conntrackd has committed its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_public_vip: Option<std::net::Ipv4Addr>,
    /// Outbound IPv6 for the private nodes; `None` leaves IPv6 alone (mode `off`).
    #[serde(default)]
    pub ipv6: Option<Ipv6Gateway>,
    /// Drop public-side spoofs in a chain on the public device's ingress hook rather
    /// than at prerouting. Only where the kernel keeps such a chain across the device's
    /// removal and binds it again to a new device of that name (Linux 6.16 and later);
    /// older kernels delete the chain with the device.
    #[serde(default)]
    pub public_ingress_hook: bool,
    /// Which data plane translates IPv4 (IPv6 stays on nftables either way).
    #[serde(default)]
    pub dataplane: crate::dataplane::DataplaneSpec,
}

/// The IPv6 side of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Gateway {
    pub translation: Ipv6Translation,
    /// Sources accepted from the private interfaces (anti-spoofing): their ULA and
    /// global networks and the configured prefixes. Normalised.
    pub private_prefixes: Vec<Ipv6Net>,
    /// Of those, the sources that may leave through the public interface (in `routed`
    /// mode a ULA stays inside; in the translating modes, what is translated).
    pub outbound_prefixes: Vec<Ipv6Net>,
    /// The public interface has an IPv6 default route.
    pub uplink_default: bool,
    /// The public interface is configured by router advertisements, which must keep
    /// being accepted once forwarding is on (`accept_ra = 2`).
    pub accept_ra: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Ipv6Translation {
    /// No translation: the upstream routes the private prefixes to the headnode.
    Routed,
    /// Prefix translation: `private` becomes `public`, host bits kept.
    Nptv6 { private: Ipv6Net, public: Ipv6Net },
    /// Every node behind one public address.
    Nat66 { address: Ipv6Addr },
}

impl Ipv6Translation {
    pub fn mode(&self) -> crate::config::Ipv6Mode {
        use crate::config::Ipv6Mode;
        match self {
            Ipv6Translation::Routed => Ipv6Mode::Routed,
            Ipv6Translation::Nptv6 { .. } => Ipv6Mode::Nptv6,
            Ipv6Translation::Nat66 { .. } => Ipv6Mode::Nat66,
        }
    }
}

impl std::fmt::Display for Ipv6Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ipv6Translation::Routed => write!(f, "routed (no translation)"),
            Ipv6Translation::Nptv6 { private, public } => {
                write!(f, "nptv6 {private} <-> {public}")
            }
            Ipv6Translation::Nat66 { address } => write!(f, "nat66 to {address}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: IfName,
    /// Its addresses with prefix length, for display.
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "address")]
pub enum SnatMode {
    /// Translate to this fixed address (`snat ip to ADDR`).
    To(IpAddr),
    /// Translate to whatever address the public interface has (`masquerade`).
    Masquerade,
    /// Several addresses; a private host always gets the same one (paired pooling, RFC
    /// 4787 REQ-2), spread over the pool by a stable hash of its address.
    Pool(Vec<IpAddr>),
    /// Deterministic port blocks (RFC 7422): a fixed address and port range per host.
    Blocks(PortBlocks),
}

impl SnatMode {
    /// The public addresses translated to (none for masquerade).
    pub fn addresses(&self) -> Vec<IpAddr> {
        match self {
            SnatMode::To(addr) => vec![*addr],
            SnatMode::Masquerade => vec![],
            SnatMode::Pool(pool) => pool.clone(),
            SnatMode::Blocks(blocks) => blocks.pool.iter().map(|a| IpAddr::V4(*a)).collect(),
        }
    }
}

impl std::fmt::Display for SnatMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnatMode::To(addr) => write!(f, "snat to {addr}"),
            SnatMode::Masquerade => write!(f, "masquerade"),
            SnatMode::Pool(pool) => write!(f, "snat to pool {} (paired)", crate::join(pool)),
            SnatMode::Blocks(blocks) => write!(
                f,
                "port blocks of {} ports from {}",
                blocks.config.size,
                crate::join(&blocks.pool)
            ),
        }
    }
}

/// A default route of the public interface, as found when the gateway was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkDefault {
    pub gateway: Option<IpAddr>,
    /// Route protocol (`boot`, `dhcp`, ...) so that a restored route is the admin's again.
    pub protocol: u8,
    pub metric: u32,
}
