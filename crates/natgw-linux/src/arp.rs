//! An active ARP probe (like `arping -c 1`): whether a neighbour answers *now*. The
//! kernel's neighbour table can hold a STALE entry for a host that has since gone, so
//! "an entry exists" says nothing about today; a request on the wire and a reply from
//! the target's address does.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ARPHRD_ETHER: u16 = 1;
const REQUEST: u16 = 1;
const REPLY: u16 = 2;
/// One request per this long until the deadline.
const RESEND: Duration = Duration::from_millis(500);

/// Whether `target` answers an ARP request sent from `source` on interface `ifindex`
/// within `timeout`. `Ok(None)`: the interface does not use ARP (not Ethernet-like),
/// so the question does not apply. A link that is down answers `Some(false)`.
pub fn probe(
    ifindex: u32,
    source: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
) -> io::Result<Option<bool>> {
    let socket = packet_socket(ifindex)?;
    let (hatype, mac) = local_hardware(&socket)?;
    if hatype != ARPHRD_ETHER {
        return Ok(None);
    }
    let request = request(mac, source, target);
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Some(false));
        }
        if now >= next_send {
            match send_broadcast(&socket, ifindex, &request) {
                Ok(()) => {}
                // A link that is down or has no carrier cannot reach anyone.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO)) => {
                    return Ok(Some(false))
                }
                Err(e) => return Err(e),
            }
            next_send = now + RESEND;
        }
        let wait = deadline
            .min(next_send)
            .saturating_duration_since(Instant::now());
        if let Some(packet) = receive(&socket, wait)? {
            if is_reply_from(&packet, target) {
                return Ok(Some(true));
            }
        }
    }
}

fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = link_address(ifindex, [0; 8], 0);
    // SAFETY: `address` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn link_address(ifindex: u32, addr: [u8; 8], halen: u8) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ETH_P_ARP.to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: halen,
        sll_addr: addr,
    }
}

/// The bound interface's hardware type and address, from getsockname(2).
fn local_hardware(socket: &OwnedFd) -> io::Result<(u16, [u8; 6])> {
    let mut address = link_address(0, [0; 8], 0);
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `address` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockname(
            socket.as_raw_fd(),
            (&mut address as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&address.sll_addr[..6]);
    Ok((address.sll_hatype, mac))
}

/// An Ethernet/IPv4 ARP request (RFC 826), without the link header the kernel adds.
fn request(mac: [u8; 6], source: Ipv4Addr, target: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&source.octets());
    // Target hardware address stays zero: that is what is asked.
    p[24..28].copy_from_slice(&target.octets());
    p
}

fn is_reply_from(packet: &[u8], target: Ipv4Addr) -> bool {
    packet.len() >= 28
        && packet[0..2] == ARPHRD_ETHER.to_be_bytes()
        && packet[2..4] == 0x0800u16.to_be_bytes()
        && packet[6..8] == REPLY.to_be_bytes()
        && packet[14..18] == target.octets()
}

fn send_broadcast(socket: &OwnedFd, ifindex: u32, packet: &[u8]) -> io::Result<()> {
    let to = link_address(ifindex, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], 6);
    // SAFETY: `packet` and `to` are valid for reads of the sizes passed.
    let rc = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One packet, or `None` when nothing came within `wait`.
fn receive(socket: &OwnedFd, wait: Duration) -> io::Result<Option<Vec<u8>>> {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if ready == 0 {
        return Ok(None);
    }
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_and_reply_recognition() {
        let mac = [2, 0, 0, 0, 0, 1];
        let req = request(mac, Ipv4Addr::new(10, 0, 0, 11), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[24..], &[10, 0, 0, 1]);
        assert!(
            !is_reply_from(&req, Ipv4Addr::new(10, 0, 0, 1)),
            "a request is no reply"
        );
        let mut reply = req;
        reply[6..8].copy_from_slice(&REPLY.to_be_bytes());
        reply[14..18].copy_from_slice(&[10, 0, 0, 1]);
        assert!(is_reply_from(&reply, Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!is_reply_from(&reply, Ipv4Addr::new(10, 0, 0, 2)));
    }
}
