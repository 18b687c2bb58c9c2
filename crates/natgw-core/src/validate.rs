//! Addresses, prefixes and routes that cannot work are refused before anything changes.
//!
//! A SNAT address must be one the outside can answer (unicast, not loopback, not inside
//! the private prefixes); a private prefix must not switch anti-spoofing off (`/0`) or
//! claim the public network, loopback or multicast; a route must reach a private
//! network behind a router, not shadow the default route, the public network or a
//! connected private network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::RouteSpec;
use crate::detect::DetectError;

/// Sources and destinations that never belong to a private network.
pub const SPECIAL_V4: [(&str, Ipv4Addr, u8); 4] = [
    ("\"this network\"", Ipv4Addr::new(0, 0, 0, 0), 8),
    ("loopback", Ipv4Addr::new(127, 0, 0, 0), 8),
    ("multicast", Ipv4Addr::new(224, 0, 0, 0), 4),
    ("reserved / broadcast", Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges that are never a private network behind a gateway: neighbour discovery
/// and DAD live in link-local and unspecified sources, which natgw never filters.
pub const SPECIAL_V6: [(&str, Ipv6Addr, u8); 5] = [
    ("unspecified", Ipv6Addr::UNSPECIFIED, 128),
    ("loopback", Ipv6Addr::LOCALHOST, 128),
    (
        "IPv4-mapped",
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
    ),
    ("link-local", Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    ("multicast", Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

fn special(net: &IpNet) -> Option<&'static str> {
    let v4 = SPECIAL_V4
        .iter()
        .map(|(what, addr, len)| (*what, IpNet::V4(Ipv4Net::new(*addr, *len).unwrap())));
    let v6 = SPECIAL_V6
        .iter()
        .map(|(what, addr, len)| (*what, IpNet::V6(Ipv6Net::new(*addr, *len).unwrap())));
    v4.chain(v6)
        .find(|(_, range)| same_family(net, range) && overlap(net, range))
        .map(|(what, _)| what)
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// `addr` is the first or last address of `net` (for nets larger than /31).
fn is_network_or_broadcast(net: &IpNet, addr: IpAddr) -> bool {
    net.prefix_len() < 31 && (net.network() == addr || net.broadcast() == addr)
}

/// A route's `via`: a neighbour on a connected private network, not this host, not the
/// network's own network or broadcast address.
pub fn route_via(
    route: &RouteSpec,
    connected: &[IpNet],
    local: &[IpAddr],
) -> Result<(), DetectError> {
    let refuse = |reason: &str| {
        Err(DetectError::BadRoute {
            origin: route.origin.clone(),
            to: route.to,
            via: route.via,
            reason: reason.to_string(),
        })
    };
    if local.contains(&route.via) {
        return refuse("goes through an address of this host; give the router's address");
    }
    if connected
        .iter()
        .any(|n| is_network_or_broadcast(n, route.via))
    {
        return refuse("goes through the network or broadcast address of its network");
    }
    Ok(())
}

pub(crate) fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The SNAT address: unicast, routable, outside the private prefixes.
pub fn snat_address(addr: IpAddr, private: &[IpNet], public: &[IpNet]) -> Result<(), DetectError> {
    let refuse = |reason: String| Err(DetectError::BadSnatAddress { addr, reason });
    let v4 = match addr {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => return snat_address_v6(v6, private),
    };
    if v4.is_unspecified() {
        return refuse("is the unspecified address".into());
    }
    if v4.is_broadcast() || v4.is_multicast() || v4.octets()[0] >= 240 {
        return refuse("is not a unicast address".into());
    }
    if v4.is_loopback() {
        return refuse("is a loopback address".into());
    }
    if v4.is_link_local() {
        return refuse("is a link-local address, which is never routed".into());
    }
    if let Some(net) = public.iter().find(|n| is_network_or_broadcast(n, addr)) {
        return refuse(format!(
            "is the network or broadcast address of the public network {net}"
        ));
    }
    if let Some(net) = private.iter().find(|n| n.contains(&addr)) {
        return refuse(format!(
            "is inside the private prefix {net}; translating to it gives private nodes a private source"
        ));
    }
    Ok(())
}

/// The nat66 address: a unicast address the outside can answer, outside the private
/// prefixes.
fn snat_address_v6(addr: Ipv6Addr, private: &[IpNet]) -> Result<(), DetectError> {
    let refuse = |reason: String| {
        Err(DetectError::BadSnatAddress {
            addr: IpAddr::V6(addr),
            reason,
        })
    };
    let host = IpNet::V6(Ipv6Net::new(addr, 128).expect("/128 is valid"));
    if let Some(what) = special(&host) {
        return refuse(format!("is in the {what} range"));
    }
    if let Some(net) = private.iter().find(|n| n.contains(&IpAddr::V6(addr))) {
        return refuse(format!(
            "is inside the private prefix {net}; translating to it gives private nodes a private source"
        ));
    }
    Ok(())
}

/// A configured private prefix.
pub fn private_prefix(prefix: &IpNet, origin: &str, public: &[IpNet]) -> Result<(), DetectError> {
    let refuse = |reason: String| {
        Err(DetectError::BadPrivatePrefix {
            origin: origin.to_string(),
            prefix: *prefix,
            reason,
        })
    };
    if prefix.prefix_len() == 0 {
        return refuse("covers every address, which switches anti-spoofing off".into());
    }
    if let Some(what) = special(prefix) {
        return refuse(format!("overlaps the {what} range"));
    }
    if let Some(net) = public.iter().find(|n| overlap(prefix, n)) {
        return refuse(format!("overlaps the public network {net}"));
    }
    Ok(())
}

/// Configured routes: each `to` once, none of them the default route, the public
/// network, a connected private network or a special range.
pub fn routes(
    routes: &[RouteSpec],
    public: &[IpNet],
    connected: &[IpNet],
) -> Result<(), DetectError> {
    let mut seen: HashMap<IpNet, &str> = HashMap::new();
    for route in routes {
        let refuse = |reason: String| {
            Err(DetectError::BadRoute {
                origin: route.origin.clone(),
                to: route.to,
                via: route.via,
                reason,
            })
        };
        if route.to.prefix_len() == 0 {
            return refuse(
                "is the default route; natgw routes only private networks behind routers".into(),
            );
        }
        if let Some(what) = special(&route.to) {
            return refuse(format!("overlaps the {what} range"));
        }
        if let Some(net) = public.iter().find(|n| overlap(&route.to, n)) {
            return refuse(format!("overlaps the public network {net}"));
        }
        if let Some(net) = connected.iter().find(|n| overlap(&route.to, n)) {
            return refuse(format!(
                "overlaps the connected private network {net}, which needs no route"
            ));
        }
        if let Some(first) = seen.insert(route.to, &route.origin) {
            return refuse(format!("is configured twice (first at {first})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn snat_addresses_that_cannot_work_are_refused() {
        let private = nets(&["10.77.0.0/24"]);
        let public = nets(&["203.0.113.0/24"]);
        for bad in [
            "10.77.0.2",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "240.0.0.1",
            "169.254.1.1",
            "203.0.113.0",
            "203.0.113.255",
        ] {
            let err = snat_address(bad.parse().unwrap(), &private, &public).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("SNAT address {bad} ")),
                "{err}"
            );
        }
        snat_address("203.0.113.36".parse().unwrap(), &private, &public).unwrap();
        let private6 = nets(&["fd00:77::/64"]);
        for bad in [
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "fd00:77::5",
            "::ffff:1.2.3.4",
        ] {
            let err = snat_address(bad.parse().unwrap(), &private6, &public).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("SNAT address {bad} ")),
                "{err}"
            );
        }
        snat_address("2001:db8:1::1".parse().unwrap(), &private6, &public).unwrap();
        // Cascaded NAT: a private-range public address is fine when it is not ours.
        snat_address("192.168.1.7".parse().unwrap(), &private, &public).unwrap();
    }

    #[test]
    fn private_prefixes_that_switch_protection_off_are_refused() {
        let public = nets(&["203.0.113.0/24"]);
        for (bad, why) in [
            ("0.0.0.0/0", "covers every address"),
            ("203.0.0.0/16", "overlaps the public network 203.0.113.0/24"),
            ("127.0.0.0/8", "loopback"),
            ("224.0.0.0/8", "multicast"),
        ] {
            let err = private_prefix(&bad.parse().unwrap(), "natgw.toml:3", &public).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("natgw.toml:3: private prefix"), "{text}");
            assert!(text.contains(why), "{text}");
        }
        private_prefix(&"10.9.0.0/16".parse().unwrap(), "x", &public).unwrap();
        let public6 = nets(&["2001:db8:1::/64"]);
        for (bad, why) in [
            ("::/0", "covers every address"),
            ("fe80::/64", "link-local"),
            ("ff00::/8", "multicast"),
            ("::1/128", "loopback"),
            (
                "2001:db8::/32",
                "overlaps the public network 2001:db8:1::/64",
            ),
        ] {
            let err = private_prefix(&bad.parse().unwrap(), "[ipv6]", &public6).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        private_prefix(&"fd00:77::/64".parse().unwrap(), "x", &public6).unwrap();
        // An IPv4 prefix is never compared with the IPv6 special ranges, and back.
        private_prefix(&"0.0.0.0/1".parse().unwrap(), "x", &public6).unwrap_err();
        private_prefix(&"2001:db8:77::/64".parse().unwrap(), "x", &public).unwrap();
    }

    #[test]
    fn conflicting_routes_are_refused() {
        let route = |to: &str, line: u32| RouteSpec {
            to: to.parse().unwrap(),
            via: "10.77.0.2".parse().unwrap(),
            origin: format!("natgw.toml:{line}"),
        };
        let public = nets(&["203.0.113.0/24"]);
        let connected = nets(&["10.77.0.0/24"]);
        for (bad, why) in [
            (vec![route("0.0.0.0/0", 1)], "is the default route"),
            (vec![route("203.0.113.0/25", 1)], "public network"),
            (vec![route("10.77.0.0/24", 1)], "connected private network"),
            (
                vec![route("10.20.0.0/16", 1), route("10.20.0.0/16", 2)],
                "configured twice (first at natgw.toml:1)",
            ),
        ] {
            let err = routes(&bad, &public, &connected).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        routes(&[route("10.20.0.0/16", 1)], &public, &connected).unwrap();
    }
}
