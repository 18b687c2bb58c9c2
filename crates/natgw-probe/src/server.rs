//! A STUN server (RFC 5389 Binding, RFC 5780 behaviour discovery): with an alternate
//! address it listens on both addresses × both ports and honours CHANGE-REQUEST,
//! RESPONSE-PORT, OTHER-ADDRESS and RESPONSE-ORIGIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wire::{attr, AttrRepr, Class, Message, Repr, BINDING};

pub const DEFAULT_PORT: u16 = 3478;
pub const DEFAULT_ALT_PORT: u16 = 3479;
const SOFTWARE: &str = concat!("natgw ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct ServerError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Where the server listens: the primary address and port, and optionally the
/// alternate address and port (RFC 5780 needs both to differ).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub primary: SocketAddr,
    pub alternate: Option<SocketAddr>,
}

type Sockets = HashMap<(IpAddr, u16), UdpSocket>;

/// A running server; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub listening: Vec<SocketAddr>,
}

impl Server {
    pub fn start(config: Config) -> Result<Server, ServerError> {
        let mut endpoints = vec![config.primary];
        if let Some(alt) = config.alternate {
            let (p, a) = (config.primary, alt);
            endpoints.extend([
                SocketAddr::new(p.ip(), a.port()),
                SocketAddr::new(a.ip(), p.port()),
                a,
            ]);
        }
        let mut sockets = Sockets::new();
        for addr in &endpoints {
            let socket = UdpSocket::bind(addr).map_err(|source| ServerError {
                addr: *addr,
                source,
            })?;
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|source| ServerError {
                    addr: *addr,
                    source,
                })?;
            sockets.insert((addr.ip(), addr.port()), socket);
        }
        let sockets = Arc::new(sockets);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = endpoints
            .iter()
            .map(|addr| {
                let (sockets, stop, addr) = (sockets.clone(), stop.clone(), *addr);
                std::thread::spawn(move || serve(&sockets, addr, config, &stop))
            })
            .collect();
        Ok(Server {
            stop,
            threads,
            listening: endpoints,
        })
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(sockets: &Sockets, local: SocketAddr, config: Config, stop: &AtomicBool) {
    let socket = &sockets[&(local.ip(), local.port())];
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some((reply, from, to)) = answer(&buf[..n], peer, local, config) {
            if let Some(out) = sockets.get(&(from.ip(), from.port())) {
                let _ = out.send_to(&reply, to);
            }
        }
    }
}

/// The reply to one datagram: bytes, the local endpoint to send from, the destination.
/// Pure, so the protocol logic is tested without sockets.
pub fn answer(
    datagram: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    config: Config,
) -> Option<(Vec<u8>, SocketAddr, SocketAddr)> {
    let message = Message::new_checked(datagram).ok()?;
    let request = Repr::parse(&message).ok()?;
    if request.class != Class::Request || request.method != BINDING {
        return None;
    }
    let mut reply = Repr {
        class: Class::Success,
        method: BINDING,
        transaction_id: request.transaction_id,
        attributes: Vec::new(),
    };

    // Comprehension-required attributes natgw does not know: 420 (RFC 5389 7.3.1).
    // ICE's PRIORITY and USE-CANDIDATE (0x0024, 0x0025) are understood and ignored.
    let unknown: Vec<u16> = message
        .attributes()
        .flatten()
        .map(|a| a.kind)
        .filter(|k| {
            *k < 0x8000
                && ![
                    attr::CHANGE_REQUEST,
                    attr::RESPONSE_PORT,
                    attr::PADDING,
                    attr::USERNAME,
                    attr::MESSAGE_INTEGRITY,
                    0x0024,
                    0x0025,
                ]
                .contains(k)
        })
        .collect();
    let change = request.find(|a| match a {
        AttrRepr::ChangeRequest { ip, port } => Some((*ip, *port)),
        _ => None,
    });
    let unsupported_change = change.is_some() && config.alternate.is_none();
    if !unknown.is_empty() || unsupported_change {
        let kinds = if unsupported_change {
            vec![attr::CHANGE_REQUEST]
        } else {
            unknown
        };
        reply.class = Class::Error;
        reply.attributes = vec![
            AttrRepr::ErrorCode {
                code: 420,
                reason: "Unknown Attribute".into(),
            },
            AttrRepr::UnknownAttributes(kinds),
            AttrRepr::Software(SOFTWARE.into()),
        ];
        return Some((reply.emit(true), local, peer));
    }

    let (change_ip, change_port) = change.unwrap_or((false, false));
    let from = match config.alternate {
        Some(alt) => {
            let other = |mine: IpAddr, a: IpAddr, b: IpAddr| if mine == a { b } else { a };
            let ip = if change_ip {
                other(local.ip(), config.primary.ip(), alt.ip())
            } else {
                local.ip()
            };
            let port = if change_port {
                if local.port() == config.primary.port() {
                    alt.port()
                } else {
                    config.primary.port()
                }
            } else {
                local.port()
            };
            SocketAddr::new(ip, port)
        }
        None => local,
    };
    let to = request
        .find(|a| match a {
            AttrRepr::ResponsePort(p) => Some(*p),
            _ => None,
        })
        .map_or(peer, |port| SocketAddr::new(peer.ip(), port));

    reply.attributes.push(AttrRepr::XorMappedAddress(peer));
    reply.attributes.push(AttrRepr::MappedAddress(peer));
    reply.attributes.push(AttrRepr::ResponseOrigin(from));
    if let Some(alt) = config.alternate {
        reply.attributes.push(AttrRepr::OtherAddress(alt));
    }
    reply.attributes.push(AttrRepr::Software(SOFTWARE.into()));
    // RFC 5780 7.6: a padded request gets a response padded to the same length, so the
    // client can see how the path treats large (fragmented) datagrams.
    if let Some(padding) = message
        .attributes()
        .flatten()
        .find(|a| a.kind == attr::PADDING)
    {
        reply.attributes.push(AttrRepr::Other {
            kind: attr::PADDING,
            value: vec![0; padding.value.len()],
        });
    }
    Some((reply.emit(true), from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(alt: bool) -> Config {
        Config {
            primary: "198.51.100.10:3478".parse().unwrap(),
            alternate: alt.then(|| "198.51.100.11:3479".parse().unwrap()),
        }
    }

    fn request(attributes: Vec<AttrRepr>) -> Vec<u8> {
        Repr {
            attributes,
            ..Repr::binding_request([1; 12])
        }
        .emit(true)
    }

    const PEER: &str = "203.0.113.1:40000";

    #[test]
    fn binding_reports_the_peer_and_the_other_address() {
        let c = config(true);
        let (bytes, from, to) =
            answer(&request(vec![]), PEER.parse().unwrap(), c.primary, c).unwrap();
        let reply = Repr::parse_bytes(&bytes).unwrap();
        assert_eq!(
            (reply.class, from, to),
            (Class::Success, c.primary, PEER.parse().unwrap())
        );
        assert_eq!(reply.mapped_address(), Some(PEER.parse().unwrap()));
        assert_eq!(reply.other_address(), c.alternate);
        assert!(reply
            .attributes
            .contains(&AttrRepr::ResponseOrigin(c.primary)));
    }

    #[test]
    fn change_request_picks_the_socket() {
        let c = config(true);
        let peer = PEER.parse().unwrap();
        let from = |ip, port| {
            answer(
                &request(vec![AttrRepr::ChangeRequest { ip, port }]),
                peer,
                c.primary,
                c,
            )
            .unwrap()
            .1
        };
        assert_eq!(from(true, true), "198.51.100.11:3479".parse().unwrap());
        assert_eq!(from(false, true), "198.51.100.10:3479".parse().unwrap());
        assert_eq!(from(true, false), "198.51.100.11:3478".parse().unwrap());
        // Asked on the alternate socket, "change" goes back to the primary values.
        let alt = c.alternate.unwrap();
        let (_, back, _) = answer(
            &request(vec![AttrRepr::ChangeRequest {
                ip: true,
                port: true,
            }]),
            peer,
            alt,
            c,
        )
        .unwrap();
        assert_eq!(back, c.primary);
    }

    #[test]
    fn response_port_redirects_the_reply() {
        let c = config(true);
        let (_, _, to) = answer(
            &request(vec![AttrRepr::ResponsePort(5555)]),
            PEER.parse().unwrap(),
            c.primary,
            c,
        )
        .unwrap();
        assert_eq!(to, "203.0.113.1:5555".parse().unwrap());
    }

    #[test]
    fn unknown_or_unsupported_attributes_get_420() {
        let c = config(false);
        let (bytes, _, _) = answer(
            &request(vec![AttrRepr::ChangeRequest {
                ip: true,
                port: false,
            }]),
            PEER.parse().unwrap(),
            c.primary,
            c,
        )
        .unwrap();
        let reply = Repr::parse_bytes(&bytes).unwrap();
        assert_eq!(reply.class, Class::Error);
        assert!(reply
            .attributes
            .contains(&AttrRepr::UnknownAttributes(vec![attr::CHANGE_REQUEST])));
        let (bytes, _, _) = answer(
            &request(vec![AttrRepr::Other {
                kind: 0x0042,
                value: vec![0; 4],
            }]),
            PEER.parse().unwrap(),
            c.primary,
            c,
        )
        .unwrap();
        assert!(Repr::parse_bytes(&bytes)
            .unwrap()
            .attributes
            .contains(&AttrRepr::UnknownAttributes(vec![0x0042])));
    }

    #[test]
    fn padding_is_reflected() {
        let c = config(true);
        let padded = request(vec![AttrRepr::Other {
            kind: attr::PADDING,
            value: vec![0; 1200],
        }]);
        let (bytes, _, _) = answer(&padded, PEER.parse().unwrap(), c.primary, c).unwrap();
        let reply = Repr::parse_bytes(&bytes).unwrap();
        assert_eq!(reply.class, Class::Success);
        assert!(bytes.len() > 1200);
    }

    #[test]
    fn non_requests_and_garbage_are_ignored() {
        let c = config(true);
        assert!(answer(b"hello", PEER.parse().unwrap(), c.primary, c).is_none());
        let indication = Repr {
            class: Class::Indication,
            ..Repr::binding_request([2; 12])
        }
        .emit(false);
        assert!(answer(&indication, PEER.parse().unwrap(), c.primary, c).is_none());
    }
}
