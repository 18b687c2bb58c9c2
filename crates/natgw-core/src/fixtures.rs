//! Observed-system building blocks shared by the unit tests.

use ipnet::IpNet;

use crate::observed::{Address, Link, Route};

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
