//! Settings + observed system → the desired gateway. Anything not given is detected:
//! the public interface holds the IPv4 default route, the private interfaces are the
//! other up interfaces with RFC 1918 / RFC 6598 addresses, and the SNAT address is the
//! public interface's primary IPv4 address (masquerade when that address is dynamic).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::config::Settings;
use crate::dataplane::{
    DataplaneKind, DataplaneSpec, EbpfPlane, PortRange, DEFAULT_LOCAL_PORTS, LOCAL_PORT_RANGE,
};
use crate::desired::{Desired, Interface, SnatMode, UplinkDefault};
use crate::ifname::{IfName, IfNameError};
use crate::observed::{Link, Observed};
use crate::pool::{v4_prefixes, PortBlocks};
use crate::{join, validate};

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// The conntrack table's size; only the initial network namespace may write it.
pub const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";
/// HA: a TCP packet without SYN may start tracking (a flow moved by a failover).
pub const TCP_LOOSE: &str = "net.netfilter.nf_conntrack_tcp_loose";
/// HA: out-of-window TCP packets are not marked invalid (windows the new primary never saw).
pub const TCP_BE_LIBERAL: &str = "net.netfilter.nf_conntrack_tcp_be_liberal";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DetectError {
    #[error("{role} interface {name:?} does not exist (interfaces here: {available}); fix the name with {flag}")]
    NoSuchInterface {
        role: &'static str,
        name: String,
        available: String,
        flag: &'static str,
    },
    #[error("{name:?} is loopback and cannot be the {role} interface; name another with {flag}")]
    Loopback {
        role: &'static str,
        name: String,
        flag: &'static str,
    },
    #[error("{name:?} is given as both public and private interface; a gateway needs two different sides (check --public/--private or `public`/`private` in the config)")]
    PublicIsPrivate { name: String },
    #[error("no IPv4 default route, so the public interface cannot be detected; name it with --public IFACE (config key `public`)")]
    NoDefaultRoute,
    #[error("several IPv4 default routes leave through different interfaces ({0}); name the public one with --public IFACE (config key `public`)")]
    SeveralDefaultRoutes(String),
    #[error("no private interface found (no other up interface carries an RFC 1918 / RFC 6598 address); name it with --private IFACE (config key `private`)")]
    NoPrivateInterface,
    #[error("public interface {0:?} has no IPv4 address to translate to; assign one, or name the address with --snat-to ADDR (config key `snat_to`)")]
    PublicWithoutIpv4(String),
    #[error("private interface {0:?} has no IPv4 address, so it has no private network to translate; assign one (ip addr add ADDR/LEN dev {0}) or name another interface with --private")]
    PrivateWithoutIpv4(String),
    #[error("{role} interface {name:?} is down; bring it up first: ip link set {name} up")]
    InterfaceDown { role: &'static str, name: String },
    #[error("{origin}: route to {to} via {via}: the gateway is not on the network of any private interface ({networks}); use a router address on one of them")]
    GatewayNotOnLink {
        origin: String,
        to: IpNet,
        via: IpAddr,
        networks: String,
    },
    #[error("{0} is not an IPv4 address; IPv6 is set up in the [ipv6] section of the config (mode, private_prefixes, address, public_prefix)")]
    Ipv6NotSupported(String),
    #[error("{0}")]
    Ipv6(String),
    #[error("{role} {source}")]
    BadName {
        role: &'static str,
        #[source]
        source: IfNameError,
    },
    #[error("SNAT address {addr} {reason}; give the public address with --snat-to ADDR (config key `snat_to`)")]
    BadSnatAddress { addr: IpAddr, reason: String },
    #[error("{origin}: private prefix {prefix} {reason}; list only the private networks behind this gateway (config key `private_prefixes`)")]
    BadPrivatePrefix {
        origin: String,
        prefix: IpNet,
        reason: String,
    },
    #[error("{0}")]
    BadPortBlocks(String),
    #[error("dataplane = \"ebpf\": {0}")]
    Ebpf(String),
    #[error("{origin}: route to {to} via {via} {reason}; remove it from `routes` or give a network behind a private router")]
    BadRoute {
        origin: String,
        to: IpNet,
        via: IpAddr,
        reason: String,
    },
}

impl DetectError {
    /// True when the admin's input (flags, config) is what must change: exit code 2.
    /// False when the system is in a state natgw will not fix itself: exit code 1.
    pub fn is_usage(&self) -> bool {
        !matches!(self, DetectError::InterfaceDown { .. })
    }
}

/// RFC 1918 private networks and the RFC 6598 shared address space.
const PRIVATE_V4: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

pub fn is_private_v4(addr: Ipv4Addr) -> bool {
    PRIVATE_V4
        .iter()
        .any(|(net, len)| Ipv4Net::new(*net, *len).unwrap().contains(&addr))
}

/// Resolves what the gateway should be from settings and the observed system.
pub fn desired(settings: &Settings, observed: &Observed) -> Result<Desired, DetectError> {
    let public = public_link(settings, observed)?;
    let private = private_links(settings, observed, public, false)?;
    let mut warnings = Vec::new();
    for (link, role) in
        std::iter::once((public, "public")).chain(private.iter().map(|l| (*l, "private")))
    {
        if !link.up {
            return Err(DetectError::InterfaceDown {
                role,
                name: link.name.clone(),
            });
        }
        if !link.carrier {
            warnings.push(format!(
                "{role} interface {} has no carrier (cable unplugged or peer down)",
                link.name
            ));
        }
    }

    if settings.private.is_empty() {
        for link in candidates(observed, public, false) {
            if let Some(reason) = foreign_interface(link) {
                warnings.push(format!(
                    "skipped {}: {reason}; name it with --private (config key `private`) to translate its network",
                    link.name
                ));
            }
        }
    }
    let snat = snat_mode(settings, observed, public)?;
    let connected = connected_v4(observed, &private)?;
    for route in &settings.routes {
        if !matches!(route.via, IpAddr::V4(_)) || !matches!(route.to, IpNet::V4(_)) {
            return Err(DetectError::Ipv6NotSupported(format!(
                "{}: route {} via {}",
                route.origin, route.to, route.via
            )));
        }
        if !connected.iter().any(|net| net.contains(&route.via)) {
            return Err(DetectError::GatewayNotOnLink {
                origin: route.origin.clone(),
                to: route.to,
                via: route.via,
                networks: join(&connected),
            });
        }
    }
    for (prefix, origin) in &settings.private_prefixes {
        if !matches!(prefix, IpNet::V4(_)) {
            return Err(DetectError::Ipv6NotSupported(format!("{origin}: {prefix}")));
        }
    }

    let public_networks: Vec<IpNet> = observed
        .addresses_of(public.index)
        .filter(|a| a.address.is_ipv4())
        .map(|a| a.network())
        .collect();
    for (prefix, origin) in &settings.private_prefixes {
        validate::private_prefix(prefix, origin, &public_networks)?;
    }
    // The private interfaces' own networks pass the same test: an address such as
    // 10.99.0.1/0 on a private interface would switch anti-spoofing off just the same.
    for link in &private {
        for a in observed
            .addresses_of(link.index)
            .filter(|a| a.address.is_ipv4())
        {
            let origin = format!("address {}/{} on {}", a.address, a.prefix_len, link.name);
            validate::private_prefix(&a.network(), &origin, &public_networks)?;
        }
    }
    let local: Vec<IpAddr> = observed.addresses.iter().map(|a| a.address).collect();
    for route in &settings.routes {
        validate::route_via(route, &connected, &local)?;
    }
    validate::routes(&settings.routes, &public_networks, &connected)?;

    let all_prefixes = connected
        .iter()
        .copied()
        .chain(settings.private_prefixes.iter().map(|(p, _)| *p))
        .chain(settings.routes.iter().map(|r| r.to));
    let private_prefixes = normalise(all_prefixes);
    let pool = snat.addresses();
    for &addr in &pool {
        validate::snat_address(addr, &private_prefixes, &public_networks)?;
        let carried = observed
            .addresses_of(public.index)
            .any(|a| a.address == addr);
        // One address may be virtual (moved by HA) or routed here; a pool is this
        // host's own addresses.
        if !carried && pool.len() > 1 {
            return Err(DetectError::BadSnatAddress {
                addr,
                reason: format!(
                    "is in the SNAT pool but not an address of {}; add it (ip addr add {addr}/LEN dev {})",
                    public.name, public.name
                ),
            });
        }
        if !carried {
            warnings.push(format!(
                "SNAT address {addr} is not an address of {}; replies reach this host only if the upstream routes {addr} here",
                public.name
            ));
        }
    }
    let snat = match settings.port_blocks {
        None => snat,
        Some(config) => {
            let pool = snat
                .addresses()
                .into_iter()
                .filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect();
            PortBlocks::new(config, pool, v4_prefixes(&private_prefixes))
                .map(SnatMode::Blocks)
                .map_err(DetectError::BadPortBlocks)?
        }
    };
    let ipv6 = crate::ipv6::resolve(&settings.ipv6, observed, public, &private, &mut warnings)?;
    let mut sysctls = BTreeMap::from([(IP_FORWARD.to_string(), "1".to_string())]);
    if let Some(gateway) = &ipv6 {
        sysctls.extend(crate::ipv6::sysctls(gateway, &public.name));
    }
    if let Some(max) = settings.max_flows {
        if observed.initial_netns {
            sysctls.insert(CONNTRACK_MAX.to_string(), max.to_string());
        } else {
            warnings.push(format!(
                "max_flows = {max}: the conntrack maximum can only be set from the host's initial network namespace; run there: sysctl -w {CONNTRACK_MAX}={max}"
            ));
        }
    }
    if settings.ha.is_some() {
        // After a failover the new primary picks up connections conntrackd had not
        // replicated yet mid-stream (a bare ACK) instead of dropping them as invalid,
        // and does not judge the moved flows' TCP windows it never saw. Both are
        // per network namespace and restored by `down` like forwarding.
        sysctls.insert(TCP_LOOSE.to_string(), "1".to_string());
        sysctls.insert(TCP_BE_LIBERAL.to_string(), "1".to_string());
    }
    let gateway_links: Vec<u32> = std::iter::once(public.index)
        .chain(private.iter().map(|l| l.index))
        .collect();
    let dataplane = dataplane(settings, observed, &snat, &private_prefixes, &gateway_links)?;
    let uplink_default = uplink_default(observed, public);
    if uplink_default.is_none() {
        warnings.push(format!(
            "{} has no IPv4 default route: private nodes reach only what its routes cover",
            public.name
        ));
    }
    Ok(Desired {
        public: interface(observed, public, "public")?,
        private: private
            .iter()
            .map(|l| interface(observed, l, "private"))
            .collect::<Result<_, _>>()?,
        private_prefixes,
        snat,
        routes: settings.routes.clone(),
        sysctls,
        uplink_default,
        mss_clamp: settings.mss_clamp,
        port_selection: settings.port_selection,
        timeouts: settings.timeouts,
        warnings,
        ha_public_vip: settings.ha.as_ref().map(|ha| ha.public_vip.addr()),
        ipv6,
        public_ingress_hook: observed.kernel_at_least(6, 16),
        dataplane,
    })
}

/// The eBPF plane's parameters, and the limits of its programs (at most 16 pool
/// addresses and 8 private prefixes, a fixed address), checked before anything changes.
fn dataplane(
    settings: &Settings,
    observed: &Observed,
    snat: &SnatMode,
    private_prefixes: &[IpNet],
    gateway_links: &[u32],
) -> Result<DataplaneSpec, DetectError> {
    if settings.dataplane == DataplaneKind::Nftables {
        return Ok(DataplaneSpec::Nftables);
    }
    let err = |m: String| Err(DetectError::Ebpf(m));
    let pool = match snat {
        SnatMode::To(_) | SnatMode::Pool(_) => crate::dataplane::v4_pool(&snat.addresses()),
        SnatMode::Masquerade => {
            return err("the public interface's address is dynamic (DHCP) and the eBPF programs translate to fixed addresses; give the address with snat_to (or --snat-to), or use dataplane = \"nftables\"".into())
        }
        SnatMode::Blocks(_) => return err("port blocks are not supported; remove [port_blocks]".into()),
    };
    if pool.len() > 16 {
        return err(format!(
            "{} pool addresses; the eBPF programs take at most 16: shorten snat_to",
            pool.len()
        ));
    }
    let v4 = private_prefixes
        .iter()
        .filter(|p| p.addr().is_ipv4())
        .count();
    if v4 > 8 {
        return err(format!("{v4} private IPv4 prefixes; the eBPF programs take at most 8: aggregate private_prefixes/routes into fewer, larger prefixes"));
    }
    let local_ports = observed
        .sysctls
        .get(LOCAL_PORT_RANGE)
        .and_then(|v| PortRange::from_sysctl(v))
        .unwrap_or(DEFAULT_LOCAL_PORTS);
    let pool_is_local = pool.iter().any(|a| {
        observed
            .addresses
            .iter()
            .any(|o| o.address == IpAddr::V4(*a))
    });
    let ports = crate::dataplane::port_range(settings.port_range, local_ports, pool_is_local)
        .map_err(DetectError::Ebpf)?;
    Ok(DataplaneSpec::Ebpf(EbpfPlane {
        filtering: settings.filtering.unwrap_or_default(),
        ports,
        bypass_conntrack: settings.bypass_conntrack,
        fast_path: settings.fast_path,
        route_mtu: settings
            .fast_path
            .then(|| {
                observed
                    .route_mtus
                    .iter()
                    .filter(|(oif, _)| *oif == 0 || gateway_links.contains(oif))
                    .map(|(_, mtu)| *mtu)
                    .min()
            })
            .flatten(),
    }))
}

/// The preferred IPv4 default route through the public interface, as the admin's
/// network configuration made it: `up` records it, and verification and the doctor
/// notice when it is gone.
fn uplink_default(observed: &Observed, public: &Link) -> Option<UplinkDefault> {
    observed
        .ipv4_defaults()
        .filter(|r| r.oif == Some(public.index))
        .min_by_key(|r| r.metric)
        .map(|r| UplinkDefault {
            gateway: r.gateway,
            protocol: r.protocol,
            metric: r.metric,
        })
}

/// Interface roles alone, for diagnosis: like `desired`, but an interface that is
/// down still takes its role, so the doctor can report it instead of stopping.
pub struct Roles<'a> {
    pub public: &'a Link,
    pub private: Vec<&'a Link>,
    /// Connected IPv4 networks of the private interfaces plus configured prefixes.
    pub private_prefixes: Vec<IpNet>,
}

pub fn roles<'a>(settings: &Settings, observed: &'a Observed) -> Result<Roles<'a>, DetectError> {
    let public = public_link(settings, observed)?;
    let private = private_links(settings, observed, public, true)?;
    let connected = private.iter().flat_map(|l| {
        observed
            .addresses_of(l.index)
            .filter(|a| a.address.is_ipv4())
            .map(|a| a.network())
    });
    let configured = settings
        .private_prefixes
        .iter()
        .map(|(p, _)| *p)
        .chain(settings.routes.iter().map(|r| r.to));
    let private_prefixes = normalise(connected.chain(configured).collect::<Vec<_>>());
    Ok(Roles {
        public,
        private,
        private_prefixes,
    })
}

fn named_link<'a>(
    observed: &'a Observed,
    name: &str,
    role: &'static str,
    flag: &'static str,
) -> Result<&'a Link, DetectError> {
    let link = observed
        .link(name)
        .ok_or_else(|| DetectError::NoSuchInterface {
            role,
            name: name.to_string(),
            available: observed
                .links
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            flag,
        })?;
    if link.loopback {
        return Err(DetectError::Loopback {
            role,
            name: name.to_string(),
            flag,
        });
    }
    Ok(link)
}

fn public_link<'a>(settings: &Settings, observed: &'a Observed) -> Result<&'a Link, DetectError> {
    if let Some(name) = &settings.public {
        return named_link(observed, name, "public", "--public");
    }
    let mut oifs: Vec<u32> = observed.ipv4_defaults().filter_map(|r| r.oif).collect();
    oifs.sort_unstable();
    oifs.dedup();
    match oifs.as_slice() {
        [] => Err(DetectError::NoDefaultRoute),
        [index] => observed
            .link_by_index(*index)
            .ok_or(DetectError::NoDefaultRoute),
        several => Err(DetectError::SeveralDefaultRoutes(
            several
                .iter()
                .filter_map(|i| observed.link_by_index(*i))
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

fn private_links<'a>(
    settings: &Settings,
    observed: &'a Observed,
    public: &Link,
    include_down: bool,
) -> Result<Vec<&'a Link>, DetectError> {
    if !settings.private.is_empty() {
        let mut links = Vec::new();
        for name in &settings.private {
            let link = named_link(observed, name, "private", "--private")?;
            if link.index == public.index {
                return Err(DetectError::PublicIsPrivate { name: name.clone() });
            }
            if !links.iter().any(|l: &&Link| l.index == link.index) {
                links.push(link);
            }
        }
        return Ok(links);
    }
    let links: Vec<&Link> = candidates(observed, public, include_down)
        .filter(|l| foreign_interface(l).is_none())
        .collect();
    if links.is_empty() {
        return Err(DetectError::NoPrivateInterface);
    }
    Ok(links)
}

/// Interfaces autodetection considers: up (or any, for diagnosis), not loopback, not
/// the public one, with an RFC 1918 / RFC 6598 address.
fn candidates<'a>(
    observed: &'a Observed,
    public: &Link,
    include_down: bool,
) -> impl Iterator<Item = &'a Link> {
    let public = public.index;
    observed
        .links
        .iter()
        .filter(move |l| !l.loopback && (l.up || include_down) && l.index != public)
        .filter(|l| {
            observed
                .addresses_of(l.index)
                .any(|a| matches!(a.address, IpAddr::V4(v4) if is_private_v4(v4)))
        })
}

/// Kinds of tunnels and overlays: their remote networks are someone else's, and
/// natgw's anti-spoofing would drop their traffic.
const TUNNEL_KINDS: [&str; 16] = [
    "wireguard",
    "tun",
    "vxlan",
    "geneve",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "ipip",
    "sit",
    "ip6tnl",
    "vti",
    "vti6",
    "xfrm",
    "bareudp",
    "amt",
];

/// Name prefixes of container and VM runtimes' bridges and veths.
const RUNTIME_PREFIXES: [&str; 14] = [
    "docker", "br-", "virbr", "cni", "podman", "flannel", "cali", "weave", "kube-", "lxcbr",
    "lxdbr", "incusbr", "cilium", "veth",
];

/// Why autodetection leaves this interface out (it joins only when named), if it does.
pub fn foreign_interface(link: &Link) -> Option<String> {
    if let Some(kind) = link.kind.as_deref().filter(|k| TUNNEL_KINDS.contains(k)) {
        return Some(format!("a tunnel or overlay ({kind})"));
    }
    RUNTIME_PREFIXES
        .iter()
        .find(|p| link.name.starts_with(*p))
        .map(|_| "a container or VM runtime's interface".to_string())
}

fn snat_mode(
    settings: &Settings,
    observed: &Observed,
    public: &Link,
) -> Result<SnatMode, DetectError> {
    if let Some(v6) = settings.snat_to.iter().find(|a| !a.is_ipv4()) {
        return Err(DetectError::Ipv6NotSupported(format!("--snat-to {v6}")));
    }
    match settings.snat_to.as_slice() {
        [] => {}
        [one] => return Ok(SnatMode::To(*one)),
        pool => return Ok(SnatMode::Pool(pool.to_vec())),
    }
    let primary = observed
        .addresses_of(public.index)
        .filter(|a| a.address.is_ipv4())
        .min_by_key(|a| a.secondary);
    match primary {
        None => Err(DetectError::PublicWithoutIpv4(public.name.clone())),
        Some(a) if settings.masquerade || a.dynamic => Ok(SnatMode::Masquerade),
        Some(a) => Ok(SnatMode::To(a.address)),
    }
}

fn connected_v4(observed: &Observed, private: &[&Link]) -> Result<Vec<IpNet>, DetectError> {
    let mut networks = Vec::new();
    for link in private {
        let before = networks.len();
        networks.extend(
            observed
                .addresses_of(link.index)
                .filter(|a| a.address.is_ipv4())
                .map(|a| a.network()),
        );
        if networks.len() == before {
            return Err(DetectError::PrivateWithoutIpv4(link.name.clone()));
        }
    }
    Ok(networks)
}

fn interface(
    observed: &Observed,
    link: &Link,
    role: &'static str,
) -> Result<Interface, DetectError> {
    Ok(Interface {
        name: IfName::new(&link.name).map_err(|source| DetectError::BadName { role, source })?,
        addresses: observed
            .addresses_of(link.index)
            .map(|a| IpNet::new(a.address, a.prefix_len).expect("valid prefix"))
            .collect(),
    })
}

pub use crate::prefixes::normalise;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Flags, RouteSpec};
    use crate::fixtures::{addr, headnode, link, route};
    use crate::observed::Route;

    fn default_via(oif: u32) -> Route {
        route("0.0.0.0/0", Some("203.0.113.254"), oif)
    }

    fn detect(flags: Flags, observed: &Observed) -> Result<Desired, DetectError> {
        desired(&Settings::from_flags(&flags).unwrap(), observed)
    }

    #[test]
    fn autodetects_roles_prefixes_and_address() {
        let d = detect(Flags::default(), &headnode()).unwrap();
        assert_eq!(d.public.name, "wan0");
        let private: Vec<_> = d.private.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(private, ["lan0", "lan1"]);
        assert_eq!(
            d.private_prefixes,
            vec![
                "10.0.0.0/24".parse::<IpNet>().unwrap(),
                "192.168.5.0/24".parse().unwrap()
            ]
        );
        assert_eq!(d.snat, SnatMode::To("203.0.113.1".parse().unwrap()));
        assert_eq!(d.sysctls[IP_FORWARD], "1");
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn public_address_outside_private_ranges_is_not_private() {
        let mut o = headnode();
        o.addresses.push(addr(5, "198.51.100.9/24"));
        o.links.push(link(5, "dmz0"));
        let d = detect(Flags::default(), &o).unwrap();
        assert!(!d.private.iter().any(|i| i.name == "dmz0"));
    }

    #[test]
    fn dynamic_public_address_means_masquerade() {
        let mut o = headnode();
        o.addresses[1].dynamic = true;
        assert_eq!(
            detect(Flags::default(), &o).unwrap().snat,
            SnatMode::Masquerade
        );
    }

    #[test]
    fn ebpf_plane_takes_ports_outside_the_hosts_ephemeral_range() {
        use crate::dataplane::{DataplaneSpec, Filtering};
        let mut o = headnode();
        let settings = Settings {
            dataplane: DataplaneKind::Ebpf,
            ..Settings::default()
        };
        let d = desired(&settings, &o).unwrap();
        let DataplaneSpec::Ebpf(e) = d.dataplane else {
            panic!("{:?}", d.dataplane)
        };
        assert_eq!(
            (e.ports.to_string(), e.filtering),
            ("61000-65535".into(), Filtering::EndpointIndependent)
        );
        o.sysctls
            .insert(LOCAL_PORT_RANGE.into(), "1024\t50000".into());
        let d = desired(&settings, &o).unwrap();
        assert_eq!(d.dataplane.ebpf().unwrap().ports.to_string(), "50001-65535");
        // A configured range over the host's own ports is refused (the pool is local).
        let overlapping = Settings {
            port_range: Some("40000-50000".to_string().try_into().unwrap()),
            ..settings.clone()
        };
        let e = desired(&overlapping, &o).unwrap_err();
        assert!(
            e.is_usage()
                && e.to_string()
                    .contains("overlaps this host's own ephemeral ports 1024-50000"),
            "{e}"
        );
        // A dynamic public address cannot be translated to by fixed programs.
        o.addresses[1].dynamic = true;
        let e = desired(&settings, &o).unwrap_err();
        assert!(e.to_string().contains("is dynamic (DHCP)"), "{e}");
        // The nftables plane is untouched.
        assert_eq!(
            desired(&Settings::default(), &o).unwrap().dataplane,
            DataplaneSpec::Nftables
        );
    }

    #[test]
    fn masquerade_on_request_and_explicit_snat_address() {
        let flags = Flags {
            masquerade: true,
            ..Flags::default()
        };
        assert_eq!(
            detect(flags, &headnode()).unwrap().snat,
            SnatMode::Masquerade
        );
        let flags = Flags {
            snat_to: vec!["203.0.113.9".parse().unwrap()],
            ..Flags::default()
        };
        assert_eq!(
            detect(flags, &headnode()).unwrap().snat,
            SnatMode::To("203.0.113.9".parse().unwrap())
        );
    }

    #[test]
    fn ambiguity_errors_name_the_flag() {
        let mut o = headnode();
        o.routes.clear();
        let e = detect(Flags::default(), &o).unwrap_err();
        assert_eq!(e, DetectError::NoDefaultRoute);
        assert!(e.to_string().contains("--public"));

        let mut o = headnode();
        o.routes.push(default_via(3));
        let e = detect(Flags::default(), &o).unwrap_err();
        assert_eq!(e, DetectError::SeveralDefaultRoutes("wan0, lan0".into()));

        let mut o = headnode();
        o.addresses.retain(|a| a.ifindex < 3);
        let e = detect(Flags::default(), &o).unwrap_err();
        assert_eq!(e, DetectError::NoPrivateInterface);
        assert!(e.to_string().contains("--private"));

        let mut o = headnode();
        o.addresses.retain(|a| a.ifindex != 2);
        let e = detect(Flags::default(), &o).unwrap_err();
        assert!(e.to_string().contains("--snat-to"), "{e}");
    }

    #[test]
    fn bad_interface_names() {
        let e = detect(
            Flags {
                public: Some("eth9".into()),
                ..Flags::default()
            },
            &headnode(),
        )
        .unwrap_err();
        assert!(matches!(e, DetectError::NoSuchInterface { .. }));
        assert!(
            e.to_string().contains("\"eth9\"") && e.to_string().contains("wan0"),
            "{e}"
        );
        assert!(e.is_usage());

        let flags = Flags {
            public: Some("wan0".into()),
            private: vec!["wan0".into()],
            ..Flags::default()
        };
        assert_eq!(
            detect(flags, &headnode()).unwrap_err(),
            DetectError::PublicIsPrivate {
                name: "wan0".into()
            }
        );
    }

    #[test]
    fn autodetected_names_that_nft_would_misread_are_usage_errors() {
        for name in ["x\"}accept#", "e*"] {
            let mut o = headnode();
            o.links[3].name = name.into();
            let e = detect(Flags::default(), &o).unwrap_err();
            assert!(
                matches!(
                    e,
                    DetectError::BadName {
                        role: "private",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.is_usage());
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
    }

    #[test]
    fn addresses_prefixes_and_routes_that_cannot_work_are_usage_errors() {
        let bad_snat = Flags {
            snat_to: vec!["10.0.0.7".parse().unwrap()],
            ..Flags::default()
        };
        let e = detect(bad_snat, &headnode()).unwrap_err();
        assert!(
            matches!(e, DetectError::BadSnatAddress { .. }) && e.is_usage(),
            "{e}"
        );

        let mut settings = Settings::from_flags(&Flags::default()).unwrap();
        settings
            .private_prefixes
            .push(("203.0.113.128/25".parse().unwrap(), "natgw.toml:2".into()));
        let e = desired(&settings, &headnode()).unwrap_err();
        assert!(
            matches!(e, DetectError::BadPrivatePrefix { .. }) && e.is_usage(),
            "{e}"
        );

        let mut settings = Settings::from_flags(&Flags::default()).unwrap();
        settings.routes.push(RouteSpec {
            to: "192.168.5.0/24".parse().unwrap(),
            via: "10.0.0.254".parse().unwrap(),
            origin: "natgw.toml:4".into(),
        });
        let e = desired(&settings, &headnode()).unwrap_err();
        assert!(
            matches!(e, DetectError::BadRoute { .. }) && e.is_usage(),
            "{e}"
        );
    }

    #[test]
    fn the_uplink_default_route_is_resolved_and_its_absence_warned() {
        let d = detect(Flags::default(), &headnode()).unwrap();
        let uplink = d.uplink_default.unwrap();
        assert_eq!(uplink.gateway, Some("203.0.113.254".parse().unwrap()));
        let mut o = headnode();
        o.routes.clear();
        let d = detect(
            Flags {
                public: Some("wan0".into()),
                ..Flags::default()
            },
            &o,
        )
        .unwrap();
        assert!(d.uplink_default.is_none());
        assert!(d
            .warnings
            .iter()
            .any(|w| w.contains("no IPv4 default route")));
    }

    #[test]
    fn interface_down_is_a_system_problem_not_usage() {
        let mut o = headnode();
        o.links[2].up = false;
        let flags = Flags {
            private: vec!["lan0".into()],
            ..Flags::default()
        };
        let e = detect(flags, &o).unwrap_err();
        assert!(!e.is_usage());
        assert!(e.to_string().contains("ip link set lan0 up"), "{e}");
    }

    #[test]
    fn no_carrier_is_a_warning() {
        let mut o = headnode();
        o.links[1].carrier = false;
        let d = detect(Flags::default(), &o).unwrap();
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn routes_behind_routers_must_be_on_link_and_join_the_prefixes() {
        let mut settings = Settings::from_flags(&Flags::default()).unwrap();
        settings.routes.push(RouteSpec {
            to: "10.20.0.0/16".parse().unwrap(),
            via: "10.0.0.254".parse().unwrap(),
            origin: "natgw.toml:3".into(),
        });
        let d = desired(&settings, &headnode()).unwrap();
        assert!(d
            .private_prefixes
            .contains(&"10.20.0.0/16".parse().unwrap()));

        settings.routes[0].via = "172.16.0.1".parse().unwrap();
        let e = desired(&settings, &headnode()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("natgw.toml:3: route to 10.20.0.0/16 via 172.16.0.1"),
            "{e}"
        );
    }

    #[test]
    fn normalise_drops_contained_prefixes() {
        let got = normalise(
            [
                "10.1.0.0/16",
                "10.0.0.0/8",
                "192.168.0.0/24",
                "192.168.0.0/24",
            ]
            .map(|s| s.parse().unwrap()),
        );
        assert_eq!(
            got,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.0.0/24".parse().unwrap()
            ]
        );
    }
}
