//! Observed-system building blocks shared by the unit tests.

use ipnet::IpNet;

use crate::observed::{Address, Link, Observed, Route};

/// An up link with carrier; index 1 is loopback.
pub fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.into(),
        up: true,
        carrier: true,
        loopback: index == 1,
        mtu: 1500,
        kind: None,
    }
}

/// A permanent primary address from `ADDR/LEN`.
pub fn addr(ifindex: u32, cidr: &str) -> Address {
    let net: IpNet = cidr.parse().unwrap();
    Address {
        ifindex,
        address: net.addr(),
        prefix_len: net.prefix_len(),
        secondary: false,
        dynamic: false,
    }
}

/// A boot-protocol route.
pub fn route(destination: &str, gateway: Option<&str>, oif: u32) -> Route {
    Route {
        destination: destination.parse().unwrap(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        oif: Some(oif),
        protocol: 4,
        metric: 0,
    }
}

/// lo, wan0 203.0.113.1/24 with the default route, lan0 10.0.0.1/24, lan1 192.168.5.1/24.
pub fn headnode() -> Observed {
    Observed {
        links: vec![
            link(1, "lo"),
            link(2, "wan0"),
            link(3, "lan0"),
            link(4, "lan1"),
        ],
        addresses: vec![
            addr(1, "127.0.0.1/8"),
            addr(2, "203.0.113.1/24"),
            addr(3, "10.0.0.1/24"),
            addr(4, "192.168.5.1/24"),
        ],
        routes: vec![route("0.0.0.0/0", Some("203.0.113.254"), 2)],
        ..Observed::default()
    }
}
