//! Which data plane translates (`dataplane = "nftables" | "ebpf"`), and what the eBPF
//! one is told: its filtering mode and its public port range. Pure: the range is
//! checked against the host's ephemeral ports as observed, passed in.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The config key `dataplane`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// The kernel's conntrack NAT, through natgw's nftables table (the default).
    #[default]
    Nftables,
    /// natgw's own translator: eBPF programs on the public interface.
    Ebpf,
}

impl std::fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::Ebpf => "ebpf",
        })
    }
}

/// The config key `filtering` (RFC 4787 section 5), eBPF data plane only.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    #[default]
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl std::fmt::Display for Filtering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// A port range `FIRST-LAST` (config key `port_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// `net.ipv4.ip_local_port_range` as the kernel prints it (`32768\t60999`).
    pub fn from_sysctl(value: &str) -> Option<PortRange> {
        let mut it = value.split_whitespace().map(str::parse::<u16>);
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(first)), Some(Ok(last)), None) if first <= last => {
                Some(PortRange { first, last })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || {
            format!("port range {s:?} is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535 (e.g. \"20000-29999\")")
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

/// The sysctl that holds the host's own ephemeral ports.
pub const LOCAL_PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
/// The kernel's default, when the sysctl cannot be read.
pub const DEFAULT_LOCAL_PORTS: PortRange = PortRange {
    first: 32768,
    last: 60999,
};
/// The eBPF plane's range when no pool address is the host's own.
pub const FULL_RANGE: PortRange = PortRange {
    first: 1024,
    last: 65535,
};
/// Fewest ports a default range may have before natgw takes the other gap.
const MIN_DEFAULT_PORTS: u32 = 1024;

/// What inbound packets admitted by the eBPF programs carry in `skb->mark`: natgw's
/// forward filter accepts `meta mark & MARK_MASK == MARK` from the public side, and
/// only the bits of the mask are natgw's.
pub const MARK_MASK: u32 = 0x0f00_0000;
pub const MARK: u32 = 0x0a00_0000;
/// What the programs set, under the same mask, on a private host's packet (a private
/// source, on a private interface) that the kernel routes out of the public
/// interface: natgw's raw chain takes it out of conntrack and the forward chain
/// accepts it on this mark alone.
pub const OUTBOUND_MARK: u32 = 0x0b00_0000;
const _: () = assert!(OUTBOUND_MARK & !MARK_MASK == 0 && OUTBOUND_MARK != MARK);

/// How long a flow stays on the eBPF plane's fast path without traffic, in seconds
/// (an nftables flowtable's default).
pub const FAST_IDLE_SECS: u64 = 30;

/// The eBPF data plane as resolved by `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbpfPlane {
    pub filtering: Filtering,
    pub ports: PortRange,
    /// The translated IPv4 flows skip conntrack (`bypass_conntrack = true`).
    #[serde(default)]
    pub bypass_conntrack: bool,
    /// Flows the forward path carried once skip it (`fast_path = true`).
    #[serde(default)]
    pub fast_path: bool,
    /// With the fast path: the smallest MTU a route through the gateway's interfaces
    /// sets (the programs' route lookup does not see it; bigger packets go the
    /// kernel's way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_mtu: Option<u32>,
}

/// Which data plane the gateway runs, with its resolved parameters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DataplaneSpec {
    #[default]
    Nftables,
    Ebpf(EbpfPlane),
}

impl DataplaneSpec {
    pub fn kind(&self) -> DataplaneKind {
        match self {
            DataplaneSpec::Nftables => DataplaneKind::Nftables,
            DataplaneSpec::Ebpf(_) => DataplaneKind::Ebpf,
        }
    }

    pub fn ebpf(&self) -> Option<&EbpfPlane> {
        match self {
            DataplaneSpec::Ebpf(e) => Some(e),
            DataplaneSpec::Nftables => None,
        }
    }
}

impl std::fmt::Display for DataplaneSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataplaneSpec::Nftables => write!(f, "nftables (conntrack NAT)"),
            DataplaneSpec::Ebpf(e) => write!(
                f,
                "ebpf (filtering {}, ports {}, {} per address{}{})",
                e.filtering,
                e.ports,
                e.ports.len(),
                if e.bypass_conntrack {
                    ", conntrack bypassed"
                } else {
                    ""
                },
                if e.fast_path { ", fast path" } else { "" },
            ),
        }
    }
}

/// The eBPF plane's port range: the configured one, refused when it overlaps the
/// host's ephemeral ports while a pool address is the host's own (a binding would
/// take the port of a connection the host itself opens, and steal its replies);
/// otherwise the widest gap outside them, or the full range when no pool address is
/// local.
pub fn port_range(
    configured: Option<PortRange>,
    local_ports: PortRange,
    pool_is_local: bool,
) -> Result<PortRange, String> {
    if let Some(range) = configured {
        if pool_is_local && range.overlaps(&local_ports) {
            return Err(format!(
                "port_range {range} overlaps this host's own ephemeral ports {local_ports} ({LOCAL_PORT_RANGE}) while a pool address is the host's own; choose a range outside it, e.g. port_range = \"{}\"",
                default_range(local_ports).map_or("1024-32767".into(), |r| r.to_string())
            ));
        }
        return Ok(range);
    }
    if !pool_is_local {
        return Ok(FULL_RANGE);
    }
    default_range(local_ports).ok_or_else(|| {
        format!(
            "this host's ephemeral ports {local_ports} ({LOCAL_PORT_RANGE}) leave fewer than {MIN_DEFAULT_PORTS} ports outside them for the eBPF data plane; set port_range, or narrow {LOCAL_PORT_RANGE}"
        )
    })
}

/// The gap above the ephemeral range when it has enough ports, else the one below:
/// ports below are where the host's own services listen, and a binding on such a
/// port would receive what is sent to that service (with endpoint-independent
/// filtering, from anyone).
fn default_range(local: PortRange) -> Option<PortRange> {
    let above = (local.last < 65535).then(|| PortRange {
        first: local.last + 1,
        last: 65535,
    });
    let below = (local.first > 1025).then(|| PortRange {
        first: 1024,
        last: local.first - 1,
    });
    [above, below]
        .into_iter()
        .flatten()
        .find(|r| r.len() >= MIN_DEFAULT_PORTS)
}

/// The IPv4 pool of a gateway (`snat_to` addresses).
pub fn v4_pool(addresses: &[IpAddr]) -> Vec<Ipv4Addr> {
    addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            PortRange::try_from("20000-29999".to_string()),
            Ok(r(20000, 29999))
        );
        for bad in ["0-100", "200-100", "1-70000", "abc", "5", "1-2-3"] {
            assert!(PortRange::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(
            PortRange::from_sysctl("32768\t60999"),
            Some(r(32768, 60999))
        );
        assert_eq!(PortRange::from_sysctl("x"), None);
    }

    #[test]
    fn default_range_avoids_the_hosts_ephemeral_ports() {
        let local = DEFAULT_LOCAL_PORTS;
        assert_eq!(port_range(None, local, true), Ok(r(61000, 65535)));
        assert_eq!(port_range(None, r(10000, 65000), true), Ok(r(1024, 9999)));
        assert_eq!(port_range(None, local, false), Ok(FULL_RANGE));
        assert!(port_range(None, r(1500, 65000), true).is_err());
    }

    #[test]
    fn an_overlapping_configured_range_is_refused_only_for_local_pools() {
        let err = port_range(Some(r(60000, 65535)), DEFAULT_LOCAL_PORTS, true).unwrap_err();
        assert!(
            err.contains("overlaps this host's own ephemeral ports 32768-60999"),
            "{err}"
        );
        assert!(err.contains("port_range = \"61000-65535\""), "{err}");
        assert_eq!(
            port_range(Some(r(60000, 65535)), DEFAULT_LOCAL_PORTS, false),
            Ok(r(60000, 65535))
        );
        assert_eq!(
            port_range(Some(r(61000, 65535)), DEFAULT_LOCAL_PORTS, true),
            Ok(r(61000, 65535))
        );
    }
}
