//! Reads the system once per command into a plain `Observed` value.

use std::collections::BTreeMap;

use natgw_core::detect::{IP_FORWARD, TCP_BE_LIBERAL, TCP_LOOSE};

use natgw_core::ipv6::IPV6_FORWARD;
use natgw_core::Observed;

use crate::dataplane::{Dataplane, DataplaneError};
use crate::netlink::{Netlink, NetlinkError};
use crate::state_store::StateError;
use crate::{conntrack, state_store, sysctl};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The sysctls natgw manages.
pub const SYSCTLS: [&str; 1] = [IP_FORWARD];
/// The conntrack sysctls an HA pair sets; absent where conntrack is not built.
const HA_SYSCTLS: [&str; 2] = [TCP_LOOSE, TCP_BE_LIBERAL];

/// Everything a gateway command looks at. An unusable record (corrupt, tampered) is
/// reported in `state_problem` rather than failing: the live system can still be shown
/// and `down` can still remove what natgw identifies by itself.
pub fn observe(netlink: &Netlink, dataplane: &dyn Dataplane) -> Result<Observed, ObserveError> {
    let nft_present = dataplane.available();
    let mut sysctls = BTreeMap::new();
    for name in SYSCTLS {
        sysctls.insert(name.to_string(), sysctl::read(name)?);
    }
    for name in HA_SYSCTLS {
        if let Ok(value) = sysctl::read(name) {
            sysctls.insert(name.to_string(), value);
        }
    }
    let links = netlink.links()?;
    // Per-interface values the doctor weighs; an interface may vanish meanwhile.
    let per_link = links
        .iter()
        .map(|l| l.name.as_str())
        .chain(["all", "default"]);
    // IPv6 ones are absent when the kernel runs without IPv6 (ipv6.disable=1).
    let optional = [
        IPV6_FORWARD.to_string(),
        natgw_core::dataplane::LOCAL_PORT_RANGE.to_string(),
    ]
    .into_iter()
    .chain(per_link.flat_map(|iface| {
        [
            format!("net.ipv4.conf.{iface}.forwarding"),
            format!("net.ipv4.conf.{iface}.rp_filter"),
            format!("net.ipv6.conf.{iface}.forwarding"),
            format!("net.ipv6.conf.{iface}.accept_ra"),
        ]
    }));
    for name in optional {
        if let Ok(value) = sysctl::read(&name) {
            sysctls.insert(name, value);
        }
    }
    let (state, state_problem) = match state_store::load() {
        Ok(state) => (state, None),
        Err(e @ (StateError::Corrupt { .. } | StateError::Untrusted { .. })) => {
            (None, Some(crate::apply::error_chain(&e)))
        }
        Err(e) => return Err(e.into()),
    };
    let (routes, route_mtus) = netlink.routes()?;
    Ok(Observed {
        initial_netns: is_initial_netns(),
        kernel_release: sysctl::read("kernel.osrelease").ok(),
        links,
        addresses: netlink.addresses()?,
        routes,
        route_mtus,
        sysctls,
        nft_present,
        table: if nft_present {
            dataplane.observe()?
        } else {
            None
        },
        conntrack: conntrack::usage(),
        state,
        state_problem,
    })
}

/// Whether this process runs in the host's initial network namespace (that of pid 1,
/// seen from the initial pid namespace; inside a container this answers false, which
/// only means natgw will not try to size the conntrack table).
fn is_initial_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let inode = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    match (inode("/proc/self/ns/net"), inode("/proc/1/ns/net")) {
        (Some(own), Some(init)) => own == init,
        _ => false,
    }
}

/// Links, addresses and routes only: what a private node needs (it may have no nft).
pub fn observe_network(netlink: &Netlink) -> Result<Observed, ObserveError> {
    Ok(Observed {
        links: netlink.links()?,
        addresses: netlink.addresses()?,
        routes: netlink.routes()?.0,
        ..Observed::default()
    })
}

/// Whether `gateway` answers neighbour discovery on `ifindex` within `timeout`. A
/// datagram to its discard port makes the kernel resolve it; only the answer counts.
pub fn gateway_answers(
    netlink: &Netlink,
    ifindex: u32,
    gateway: std::net::IpAddr,
    timeout: std::time::Duration,
) -> Result<bool, ObserveError> {
    let deadline = std::time::Instant::now() + timeout;
    let any: std::net::SocketAddr = match gateway {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(socket) = std::net::UdpSocket::bind(any) {
        let _ = socket.send_to(b"natgw", (gateway, 9));
    }
    loop {
        if let Some(answered) = netlink.neighbour_answered(ifindex, gateway)? {
            return Ok(answered);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
