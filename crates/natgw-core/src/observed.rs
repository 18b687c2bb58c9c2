//! The system as the adapters read it, once per command, as plain values.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state::RecordedState;

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Observed {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    /// Routes of the main table.
    pub routes: Vec<Route>,
    /// (output interface index, MTU) of the IPv4 routes, in any table, that set an
    /// MTU (`ip route ... mtu 1400`); interface 0: the route names none (a nexthop
    /// object's), so it may go through any.
    #[serde(default)]
    pub route_mtus: Vec<(u32, u32)>,
    /// The sysctls natgw cares about, by dotted name (`net.ipv4.ip_forward`).
    pub sysctls: BTreeMap<String, String>,
    /// Whether the `nft` tool is installed.
    pub nft_present: bool,
    /// Whether this is the host's initial network namespace (only there can the
    /// conntrack maximum be set).
    #[serde(default)]
    pub initial_netns: bool,
    /// The running kernel's release (`6.18.44`), for what depends on its version.
    #[serde(default)]
    pub kernel_release: Option<String>,
    /// natgw's table, when it exists.
    pub table: Option<LiveTable>,
    pub conntrack: Option<Conntrack>,
    /// What natgw recorded the last time it applied changes in this namespace.
    pub state: Option<RecordedState>,
    /// Why the record could not be used (corrupt, foreign owner, ...), when it exists
    /// but cannot be trusted; `state` is then `None`.
    pub state_problem: Option<String>,
}

/// natgw's table as the data plane reads it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveTable {
    /// The table's content without volatile parts (handles, counter values); equal
    /// fingerprints mean equal rules.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`ip link set X up`).
    pub up: bool,
    /// Lower layer up: a cable, or a veth peer that is up.
    pub carrier: bool,
    pub loopback: bool,
    pub mtu: u32,
    /// The kernel's link kind (`veth`, `bridge`, `wireguard`, `vxlan`, ...), when it has one.
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub secondary: bool,
    /// Has a finite lifetime, e.g. assigned by DHCP: it may change under us.
    pub dynamic: bool,
}

impl Address {
    /// The connected network of this address (`10.0.0.1/24` → `10.0.0.0/24`).
    pub fn network(&self) -> IpNet {
        IpNet::new(self.address, self.prefix_len)
            .expect("kernel prefix length fits the family")
            .trunc()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub metric: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conntrack {
    pub count: u64,
    pub max: u64,
}

impl Observed {
    /// Whether the running kernel is at least `major.minor` (false when unknown).
    pub fn kernel_at_least(&self, major: u32, minor: u32) -> bool {
        self.kernel_release
            .as_deref()
            .and_then(crate::doctor::ebpf::kernel_version)
            .is_some_and(|version| version >= (major, minor))
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn addresses_of(&self, ifindex: u32) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(move |a| a.ifindex == ifindex)
    }

    /// IPv4 default routes of the main table.
    pub fn ipv4_defaults(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .filter(|r| matches!(r.destination, IpNet::V4(n) if n.prefix_len() == 0))
    }

    /// IPv6 default routes of the main table.
    pub fn ipv6_defaults(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .filter(|r| matches!(r.destination, IpNet::V6(n) if n.prefix_len() == 0))
    }
}
