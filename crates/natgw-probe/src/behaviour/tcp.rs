//! TCP behaviour (RFC 5382) over STUN on TCP (RFC 5389 7.2.2): the mapping of two
//! connections from one local port to different server addresses, port preservation,
//! and how long an idle established connection stays open through the NAT.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{classify_mapping, Kind};
use crate::client::{self, ClientError, Dialect, Response, TransactionId};
use crate::wire::{attr, AttrRepr, Class, Repr, HEADER_LEN};

/// RFC 5382 REQ-5: an established connection's idle timeout is at least 2 h 4 min.
pub const REQ5_SECS: u64 = 2 * 3600 + 4 * 60;

#[derive(Debug, Clone, Serialize)]
pub struct TcpLifetime {
    /// How long the connection sat idle.
    pub idle_secs: u64,
    /// Whether it still carried the server's (or, failing that, the client's) packet.
    pub alive: bool,
    /// The server sent first after the silence (natgw's server does). Otherwise the
    /// client did, which a NAT that picks up mid-stream packets (Linux's
    /// nf_conntrack_tcp_loose) can answer even after it forgot the connection.
    pub server_first: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpBehaviour {
    pub local: SocketAddr,
    pub mapped: SocketAddr,
    pub mapping: Option<Kind>,
    pub port_preserved: bool,
    pub lifetime: Option<TcpLifetime>,
}

fn io(server: SocketAddr) -> impl Fn(std::io::Error) -> ClientError {
    move |e| ClientError::Io(server, e.to_string())
}

/// A connection to `server` from `local` (port 0: any), with SO_REUSEADDR so a second
/// connection can leave from the same port towards another address.
fn connect(local: SocketAddr, server: SocketAddr, t: Duration) -> Result<TcpStream, ClientError> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )
    .map_err(io(server))?;
    socket.set_reuse_address(true).map_err(io(server))?;
    socket.bind(&local.into()).map_err(io(server))?;
    socket
        .connect_timeout(&server.into(), t)
        .map_err(|e| match e.kind() {
            ErrorKind::ConnectionRefused => ClientError::Refused(server),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ClientError::Timeout(server, t),
            _ => ClientError::Io(server, e.to_string()),
        })?;
    socket.set_nodelay(true).map_err(io(server))?;
    Ok(socket.into())
}

/// Sends a Binding request on `stream` and reads the response to it.
fn exchange(
    stream: &mut TcpStream,
    server: SocketAddr,
    attributes: Vec<AttrRepr>,
    t: Duration,
) -> Result<Response, ClientError> {
    let request = client::request(Dialect::Rfc5389, attributes);
    let tid = (request.cookie, request.transaction_id);
    let bytes = request
        .emit(true)
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    stream.write_all(&bytes).map_err(io(server))?;
    read_response(stream, server, &tid, Instant::now() + t)?.ok_or(ClientError::Timeout(server, t))
}

/// The next message for `tid` before `until`; `None` when the time is up.
fn read_response(
    stream: &mut TcpStream,
    server: SocketAddr,
    tid: &TransactionId,
    until: Instant,
) -> Result<Option<Response>, ClientError> {
    loop {
        let Some(message) = read_message(stream, server, until)? else {
            return Ok(None);
        };
        let Ok(repr) = Repr::parse_bytes(&message) else {
            continue;
        };
        if (repr.cookie, repr.transaction_id) != *tid {
            continue;
        }
        if repr.class == Class::Error {
            return Err(ClientError::ErrorResponse {
                server,
                code: repr
                    .find(|a| match a {
                        AttrRepr::ErrorCode { code, .. } => Some(*code),
                        _ => None,
                    })
                    .unwrap_or(0),
                reason: "over TCP".into(),
            });
        }
        return Ok(Some(Response { repr, from: server }));
    }
}

/// One framed message: the header says how long the rest is.
fn read_message(
    stream: &mut TcpStream,
    server: SocketAddr,
    until: Instant,
) -> Result<Option<Vec<u8>>, ClientError> {
    let mut message = vec![0u8; HEADER_LEN];
    if !read_exact_until(stream, &mut message, server, until)? {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
    message.resize(HEADER_LEN + len, 0);
    if !read_exact_until(stream, &mut message[HEADER_LEN..], server, until)? {
        return Ok(None);
    }
    Ok(Some(message))
}

fn read_exact_until(
    stream: &mut TcpStream,
    buf: &mut [u8],
    server: SocketAddr,
    until: Instant,
) -> Result<bool, ClientError> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left)).map_err(io(server))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(ClientError::Io(
                    server,
                    "the server closed the connection".into(),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(false)
            }
            Err(e) => return Err(ClientError::Io(server, e.to_string())),
        }
    }
    Ok(true)
}

fn mapped_of(response: &Response, server: SocketAddr) -> Result<SocketAddr, ClientError> {
    response
        .repr
        .mapped_address()
        .ok_or_else(|| ClientError::Io(server, "response without a mapped address".into()))
}

/// RFC 5382 tests against `server` (whose RFC 5780 alternate is `other`) from
/// `local_ip`: mapping from one local port to the primary, the alternate address on the
/// primary port, and the alternate address and port; with `lifetime_secs`, one idle
/// period on an established connection.
pub fn discover(
    server: SocketAddr,
    other: Option<SocketAddr>,
    local_ip: IpAddr,
    t: Duration,
    lifetime_secs: Option<u64>,
) -> Result<TcpBehaviour, ClientError> {
    let mut first = connect(SocketAddr::new(local_ip, 0), server, t)?;
    let local = first.local_addr().map_err(io(server))?;
    let mapped = mapped_of(&exchange(&mut first, server, vec![], t)?, server)?;
    let mapping = match other {
        None => None,
        Some(alt) => {
            let from_same_port = |to: SocketAddr| -> Result<SocketAddr, ClientError> {
                let mut s = connect(local, to, t)?;
                mapped_of(&exchange(&mut s, to, vec![], t)?, to)
            };
            let m2 = from_same_port(SocketAddr::new(alt.ip(), server.port()))?;
            let m3 = if m2 == mapped {
                None
            } else {
                Some(from_same_port(alt)?)
            };
            Some(classify_mapping(local, mapped, m2, m3))
        }
    };
    drop(first);
    let lifetime = match lifetime_secs {
        None => None,
        Some(secs) => Some(lifetime(server, local_ip, secs, t)?),
    };
    Ok(TcpBehaviour {
        local,
        mapped,
        mapping,
        port_preserved: mapped.port() == local.port(),
        lifetime,
    })
}

/// One connection, idle `secs`: natgw's server sends first after the silence
/// (`NATGW_PUSH_AFTER`); a server that does not know the attribute is asked again by the
/// client instead.
fn lifetime(
    server: SocketAddr,
    local_ip: IpAddr,
    secs: u64,
    t: Duration,
) -> Result<TcpLifetime, ClientError> {
    let mut stream = connect(SocketAddr::new(local_ip, 0), server, t)?;
    let push = u32::try_from(secs).unwrap_or(u32::MAX);
    let request = client::request(
        Dialect::Rfc5389,
        vec![AttrRepr::Other {
            kind: attr::NATGW_PUSH_AFTER,
            value: push.to_be_bytes().to_vec(),
        }],
    );
    let tid = (request.cookie, request.transaction_id);
    let bytes = request
        .emit(true)
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    stream.write_all(&bytes).map_err(io(server))?;
    let first = read_response(&mut stream, server, &tid, Instant::now() + t)?
        .ok_or(ClientError::Timeout(server, t))?;
    let server_first = first
        .repr
        .find(|a| match a {
            AttrRepr::Other { kind, .. } if *kind == attr::NATGW_PUSH_AFTER => Some(()),
            _ => None,
        })
        .is_some();
    let alive = if server_first {
        let until = Instant::now() + Duration::from_secs(secs) + t;
        matches!(read_response(&mut stream, server, &tid, until), Ok(Some(_)))
    } else {
        std::thread::sleep(Duration::from_secs(secs));
        exchange(&mut stream, server, vec![], t).is_ok()
    };
    Ok(TcpLifetime {
        idle_secs: secs,
        alive,
        server_first,
    })
}
