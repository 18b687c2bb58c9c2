//! The answer to one request, or the reason there is none. Pure, so the protocol and
//! the abuse rules are tested without sockets.

use std::net::{IpAddr, SocketAddr};

use super::stats::Dropped;
use super::Config;
use crate::wire::{attr, AttrRepr, Class, Message, Repr, BINDING, HEADER_LEN};

/// The longest request natgw answers: an Ethernet-sized datagram with room for RFC 5780
/// PADDING past the MTU (coturn's natdiscovery -P pads 1500 bytes, to see fragmentation).
/// Longer datagrams are dropped whole, never parsed from a truncated buffer.
pub const MAX_REQUEST: usize = 2048;

/// RESPONSE-PORT below this would aim replies at well-known services (echo, chargen,
/// DNS ...) of the requester's address: refused.
pub const MIN_RESPONSE_PORT: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The local endpoint to send from (CHANGE-REQUEST picks it).
    pub from: SocketAddr,
    /// The destination: the requester, or another port of it (RESPONSE-PORT).
    pub to: SocketAddr,
    /// An error response (420).
    pub error: bool,
    /// The destination port came from RESPONSE-PORT (rate-limited on its own).
    pub response_port: bool,
    /// Over TCP: send the reply again after this many seconds of silence
    /// (`attr::NATGW_PUSH_AFTER`).
    pub push_after: Option<u32>,
}

/// Attributes below 0x8000 that natgw understands. ICE's PRIORITY and USE-CANDIDATE
/// (0x0024, 0x0025) are understood and ignored; RESPONSE-PORT is RFC 5780, not RFC 3489.
fn understood(kind: u16, classic: bool) -> bool {
    let common = [
        attr::CHANGE_REQUEST,
        attr::PADDING,
        attr::USERNAME,
        attr::MESSAGE_INTEGRITY,
        0x0024,
        0x0025,
    ];
    common.contains(&kind) || (!classic && kind == attr::RESPONSE_PORT)
}

/// The reply to one request received on `local` from `peer`.
pub fn answer(
    request_bytes: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    config: &Config,
    transport: Transport,
) -> Result<Reply, Dropped> {
    if request_bytes.len() > MAX_REQUEST {
        return Err(Dropped::Oversized);
    }
    let message = Message::new_checked(request_bytes).map_err(|_| Dropped::Malformed)?;
    let request = Repr::parse(&message).map_err(|_| Dropped::Malformed)?;
    if request.class != Class::Request || request.method != BINDING {
        return Err(Dropped::NotARequest);
    }
    let classic = request.is_classic();
    let kinds: Vec<u16> = message.attributes().flatten().map(|a| a.kind).collect();
    // RFC 3489's RESPONSE-ADDRESS sends the answer to any third party: a reflector.
    if classic && kinds.contains(&attr::RESPONSE_ADDRESS) {
        return Err(Dropped::ResponseAddressRefused);
    }
    let with_fingerprint = kinds.contains(&attr::FINGERPRINT);
    let mut reply = Repr {
        class: Class::Success,
        attributes: Vec::new(),
        ..request.clone()
    };

    let change = request.find(|a| match a {
        AttrRepr::ChangeRequest { ip, port } => Some((*ip, *port)),
        _ => None,
    });
    // Another source address or port is impossible without an alternate, and on a TCP
    // connection, whose answers travel on the connection itself.
    let change_impossible = change.is_some_and(|c| c != (false, false))
        && (config.alternate.is_none() || transport == Transport::Tcp);
    let mut unknown: Vec<u16> = kinds
        .iter()
        .copied()
        .filter(|k| *k < 0x8000 && !understood(*k, classic))
        .collect();
    if change_impossible {
        unknown.push(attr::CHANGE_REQUEST);
    }
    // Each unknown type once, and two at most: with the error code and a FINGERPRINT
    // the answer stays within 64 bytes (three made 68, found by the property test below).
    // The client learns enough to know its request cannot be served.
    unknown.sort_unstable();
    unknown.dedup();
    unknown.truncate(2);
    if !unknown.is_empty() {
        reply.class = Class::Error;
        reply.attributes = vec![
            AttrRepr::ErrorCode {
                code: 420,
                reason: "Unknown Attribute".into(),
            },
            AttrRepr::UnknownAttributes(unknown),
        ];
        let bytes = reply
            .emit(with_fingerprint)
            .map_err(|_| Dropped::Malformed)?;
        return Ok(Reply {
            bytes,
            from: local,
            to: peer,
            error: true,
            response_port: false,
            push_after: None,
        });
    }

    let from = source_for(local, change.unwrap_or((false, false)), config);
    let response_port = request.find(|a| match a {
        AttrRepr::ResponsePort(p) => Some(*p),
        _ => None,
    });
    let to = match response_port {
        // RFC 5780 7.5: only ever another port of the requester's own address, over UDP.
        Some(port) if transport == Transport::Tcp || port < MIN_RESPONSE_PORT => {
            return Err(Dropped::ResponsePortRefused)
        }
        Some(port) => SocketAddr::new(peer.ip(), port),
        None => peer,
    };

    if classic {
        // RFC 3489 11.2: the classic client reads these three.
        reply.attributes.push(AttrRepr::MappedAddress(peer));
        reply.attributes.push(AttrRepr::SourceAddress(from));
        if let Some(alt) = config.alternate {
            reply.attributes.push(AttrRepr::ChangedAddress(alt));
        }
    } else {
        reply.attributes.push(AttrRepr::XorMappedAddress(peer));
        if let Some(alt) = config.alternate {
            // RFC 5780 behaviour discovery needs both; a server without an alternate
            // address has nothing to say in them.
            reply.attributes.push(AttrRepr::ResponseOrigin(from));
            reply.attributes.push(AttrRepr::OtherAddress(alt));
        }
    }
    let push_after = request
        .find(|a| match a {
            AttrRepr::Other { kind, value } if *kind == attr::NATGW_PUSH_AFTER => {
                Some(u32::from_be_bytes(value.as_slice().try_into().ok()?))
            }
            _ => None,
        })
        .filter(|secs| {
            transport == Transport::Tcp && u64::from(*secs) < config.limits.tcp_idle_secs
        });
    if let Some(secs) = push_after {
        reply.attributes.push(AttrRepr::Other {
            kind: attr::NATGW_PUSH_AFTER,
            value: secs.to_be_bytes().to_vec(),
        });
    }
    if kinds.contains(&attr::PADDING) {
        pad_to(&mut reply, request_bytes.len(), with_fingerprint);
    }
    let bytes = reply
        .emit(with_fingerprint)
        .map_err(|_| Dropped::Malformed)?;
    Ok(Reply {
        bytes,
        from,
        to,
        error: false,
        response_port: to != peer,
        push_after,
    })
}

/// RFC 5780 7.6: a padded request gets a response of the same size (so the client can
/// see how the path treats large datagrams), never more than the request.
fn pad_to(reply: &mut Repr, request_len: usize, with_fingerprint: bool) {
    let fingerprint = if with_fingerprint { 8 } else { 0 };
    let unpadded = HEADER_LEN
        + fingerprint
        + reply
            .attributes
            .iter()
            .map(|a| {
                Repr {
                    attributes: vec![a.clone()],
                    ..reply.clone()
                }
                .emit(false)
                .map_or(0, |b| b.len() - HEADER_LEN)
            })
            .sum::<usize>();
    // 4 bytes of attribute header, and a value that keeps the 4-byte alignment.
    let room = request_len.saturating_sub(unpadded + 4) / 4 * 4;
    if room > 0 {
        reply.attributes.push(AttrRepr::Other {
            kind: attr::PADDING,
            value: vec![0; room],
        });
    }
}

/// The local endpoint a reply leaves from: the one it arrived on, with the address
/// and/or port switched to the other one when CHANGE-REQUEST asks.
fn source_for(
    local: SocketAddr,
    (change_ip, change_port): (bool, bool),
    config: &Config,
) -> SocketAddr {
    let Some(alt) = config.alternate else {
        return local;
    };
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

#[cfg(test)]
mod tests;
