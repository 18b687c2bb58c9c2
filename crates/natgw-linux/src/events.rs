//! Kernel change notifications the daemon reconciles on: rtnetlink multicast (links,
//! IPv4 addresses, IPv4 routes) and nftables ruleset changes (nfnetlink group
//! NFNLGRP_NFTABLES). Messages are not parsed: any of them means "look again", and a
//! reconcile reads the whole system anyway. Sysctls have no notifications; the daemon
//! polls those.

use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{protocols, Socket, SocketAddr};

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// `NFNLGRP_NFTABLES` from linux/netfilter/nfnetlink.h.
const NFNLGRP_NFTABLES: u32 = 7;

/// Subscriptions to the changes that can make the gateway drift.
pub struct Events {
    route: Socket,
    nftables: Socket,
}

impl Events {
    /// Joins the multicast groups in the current network namespace.
    pub fn subscribe() -> std::io::Result<Events> {
        let mut route = Socket::new(protocols::NETLINK_ROUTE)?;
        route.bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
        ))?;
        let mut nftables = Socket::new(protocols::NETLINK_NETFILTER)?;
        nftables.bind_auto()?;
        nftables.add_membership(NFNLGRP_NFTABLES)?;
        for socket in [&route, &nftables] {
            socket.set_non_blocking(true)?;
            // A burst bigger than the buffer still wakes us (ENOBUFS); that is enough.
            socket.set_rx_buf_sz(1 << 20)?;
        }
        Ok(Events { route, nftables })
    }

    /// File descriptors to wait on (poll for input).
    pub fn fds(&self) -> [RawFd; 2] {
        [self.route.as_raw_fd(), self.nftables.as_raw_fd()]
    }

    /// Reads every pending message; returns how many there were (an overrun counts as
    /// one: something changed).
    pub fn drain(&self) -> usize {
        let mut count = 0;
        let mut buf = vec![0u8; 64 * 1024];
        for socket in [&self.route, &self.nftables] {
            loop {
                match socket.recv(&mut &mut buf[..], 0) {
                    Ok(_) => count += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        count += 1;
                        break;
                    }
                }
            }
        }
        count
    }
}
