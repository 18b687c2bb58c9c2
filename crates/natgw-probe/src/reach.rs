//! Plain reachability probes with a latency and a bounded timeout each: TCP connect,
//! UDP request/response (a STUN Binding request as payload, which STUN servers answer
//! and other services ignore), and ICMP echo.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::{binding, ClientError};

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `tcp 198.51.100.10:80`
    pub probe: String,
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub detail: String,
}

fn outcome(probe: String, started: Instant, result: Result<String, String>) -> Outcome {
    match result {
        Ok(detail) => Outcome {
            probe,
            ok: true,
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            detail,
        },
        Err(detail) => Outcome {
            probe,
            ok: false,
            latency_ms: None,
            detail,
        },
    }
}

/// Resolves `HOST:PORT` (or `HOST` with `default_port`); unknown hosts are an outcome,
/// not a hang beyond the resolver's own limit.
pub fn resolve(target: &str, default_port: u16) -> Result<SocketAddr, String> {
    let with_port = if target.parse::<IpAddr>().is_ok() || !target.contains(':') {
        format!("{target}:{default_port}")
    } else {
        target.to_string()
    };
    let with_port = if target.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{target}]:{default_port}")
    } else {
        with_port
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("unknown host {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("unknown host {target}: no address"))
}

pub fn tcp(target: &str, timeout: Duration) -> Outcome {
    let probe = format!("tcp {target}");
    let started = Instant::now();
    let result = resolve(target, 80).and_then(|addr| {
        TcpStream::connect_timeout(&addr, timeout)
            .map(|_| format!("connected to {addr}"))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("{addr} refused the connection (reachable, port closed)")
                }
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    format!("no answer from {addr} within {timeout:?}")
                }
                _ => format!("{addr}: {e}"),
            })
    });
    outcome(probe, started, result)
}

pub fn udp(target: &str, timeout: Duration) -> Outcome {
    let probe = format!("udp {target}");
    let started = Instant::now();
    let result = resolve(target, 3478).and_then(|addr| {
        let wildcard: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let socket = UdpSocket::bind(wildcard).map_err(|e| e.to_string())?;
        socket.connect(addr).map_err(|e| e.to_string())?;
        match binding(&socket, addr, vec![], timeout) {
            Ok(r) => Ok(format!("{} answered", r.from)),
            Err(ClientError::Refused(_)) => Err(format!("{addr} answered ICMP port unreachable (reachable, nothing listening)")),
            Err(ClientError::Timeout(..)) => Err(format!("no answer from {addr} within {timeout:?} (filtered, or a service that ignores the probe)")),
            Err(e) => Err(e.to_string()),
        }
    });
    outcome(probe, started, result)
}

/// ICMP echo: an unprivileged ping socket when the system allows it, else a raw socket.
pub fn icmp(target: &str, timeout: Duration) -> Outcome {
    let probe = format!("icmp {target}");
    let started = Instant::now();
    let result = resolve(target, 0).and_then(|addr| echo(addr, timeout));
    outcome(probe, started, result)
}

/// ICMP or ICMPv6 echo, by the target's family: (domain, protocol, request type,
/// reply type). The kernel checksums ICMPv6 itself (it covers a pseudo-header).
fn echo(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let v4 = addr.is_ipv4();
    let (domain, protocol, request, reply) = if v4 {
        (Domain::IPV4, Protocol::ICMPV4, 8, 0)
    } else {
        (Domain::IPV6, Protocol::ICMPV6, 128, 129)
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, false),
        Err(_) => (
            Socket::new(domain, Type::RAW, Some(protocol))
                .map_err(|e| format!("cannot open an ICMP socket: {e} (run as root)"))?,
            true,
        ),
    };
    let id = std::process::id() as u16;
    let mut packet = vec![request, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
    packet.extend_from_slice(b"natgw probe");
    if v4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    socket
        .send_to(&packet, &addr.into())
        .map_err(|e| format!("send to {}: {e}", addr.ip()))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no echo reply from {} within {timeout:?}",
                addr.ip()
            ));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // A raw IPv4 socket hands over the IP header too; IPv6 ones never do.
        let icmp = if raw && v4 {
            data.get(usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4..)
                .unwrap_or(&[])
        } else {
            &data[..]
        };
        let from_ip = from.as_socket().map(|s| s.ip());
        if icmp.first() == Some(&reply)
            && from_ip == Some(addr.ip())
            && (!raw || icmp.get(4..6) == Some(&packet[4..6]))
        {
            return Ok(format!("echo reply from {}", addr.ip()));
        }
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internet_checksum() {
        // RFC 1071's example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn resolve_forms() {
        assert_eq!(
            resolve("192.0.2.1", 80).unwrap(),
            "192.0.2.1:80".parse().unwrap()
        );
        assert_eq!(
            resolve("192.0.2.1:3478", 80).unwrap(),
            "192.0.2.1:3478".parse().unwrap()
        );
        assert_eq!(
            resolve("2001:db8::1", 7).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
    }

    #[test]
    fn closed_udp_port_and_tcp_refusal_on_loopback() {
        // Loopback only: a port nothing listens on.
        let free = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let out = udp(&format!("127.0.0.1:{port}"), Duration::from_secs(1));
        assert!(
            !out.ok && out.detail.contains("port unreachable"),
            "{out:?}"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let out = tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(1));
        assert!(!out.ok && out.detail.contains("refused"), "{out:?}");
    }
}
