//! STUN Binding transactions over UDP with bounded retransmission: every call returns
//! within its timeout.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::wire::{AttrRepr, Class, Repr};

/// Which STUN a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// RFC 5389 with the magic cookie (and RFC 5780's attributes).
    #[default]
    Rfc5389,
    /// RFC 3489: a 128-bit transaction id, MAPPED-ADDRESS and CHANGED-ADDRESS.
    Classic,
}

/// A fresh Binding request with a random transaction id.
pub fn request(dialect: Dialect, attributes: Vec<AttrRepr>) -> Repr {
    let base = match dialect {
        Dialect::Rfc5389 => {
            let mut tid = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut tid);
            Repr::binding_request(tid)
        }
        Dialect::Classic => {
            let mut tid = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut tid);
            Repr::classic_binding_request(tid)
        }
    };
    Repr { attributes, ..base }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no STUN answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0} refused the datagram (ICMP port unreachable): no STUN server there")]
    Refused(SocketAddr),
    #[error("{server} answered with error {code} {reason}")]
    ErrorResponse {
        server: SocketAddr,
        code: u16,
        reason: String,
    },
    #[error("socket error talking to {0}: {1}")]
    Io(SocketAddr, String),
}

/// A Binding response and where it came from.
#[derive(Debug, Clone)]
pub struct Response {
    pub repr: Repr,
    pub from: SocketAddr,
}

/// Sends a Binding request with `attributes` from `socket` to `server` and waits for the
/// matching response, retransmitting at 250 ms, 500 ms, 1 s ... until `timeout`.
pub fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    attributes: Vec<AttrRepr>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    binding_as(Dialect::Rfc5389, socket, server, attributes, timeout)
}

/// `binding` in the given dialect.
pub fn binding_as(
    dialect: Dialect,
    socket: &UdpSocket,
    server: SocketAddr,
    attributes: Vec<AttrRepr>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let repr = request(dialect, attributes);
    let tid = (repr.cookie, repr.transaction_id);
    let request = repr
        .emit(true)
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut rto = Duration::from_millis(250);
    let io = |e: std::io::Error| ClientError::Io(server, e.to_string());
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout(server, timeout));
        }
        socket.send_to(&request, server).map_err(io)?;
        let resend_at = (now + rto).min(deadline);
        rto *= 2;
        if let Some(response) = receive(socket, &tid, resend_at, server)? {
            return Ok(response);
        }
    }
}

/// A transaction's identity: the cookie field (all of it for RFC 5389, the first part of
/// the transaction id for RFC 3489) and the 96 bits that follow.
pub type TransactionId = (u32, [u8; 12]);

/// Waits until `until` for a STUN message with transaction `tid`; other datagrams are
/// ignored.
pub fn receive(
    socket: &UdpSocket,
    tid: &TransactionId,
    until: Instant,
    server: SocketAddr,
) -> Result<Option<Response>, ClientError> {
    let mut buf = [0u8; 2048];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| ClientError::Io(server, e.to_string()))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let Ok(repr) = Repr::parse_bytes(&buf[..n]) else {
                    continue;
                };
                if (repr.cookie, repr.transaction_id) != *tid {
                    continue;
                }
                if repr.class == Class::Error {
                    let (code, reason) = repr
                        .find(|a| match a {
                            AttrRepr::ErrorCode { code, reason } => Some((*code, reason.clone())),
                            _ => None,
                        })
                        .unwrap_or((0, String::new()));
                    return Err(ClientError::ErrorResponse {
                        server,
                        code,
                        reason,
                    });
                }
                return Ok(Some(Response { repr, from }));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::Refused(server))
            }
            Err(e) => return Err(ClientError::Io(server, e.to_string())),
        }
    }
}
