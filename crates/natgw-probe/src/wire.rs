//! STUN messages (RFC 5389, and RFC 3489's "classic" form without the magic cookie) in
//! the style of smoltcp's `wire`: `Message` is a checked zero-copy view over bytes with
//! named field ranges; `Repr` is the parsed high-level form, with `parse` and `emit`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_a442;
/// The cookie's top 16 bits, which XOR a port (RFC 5389 15.2).
const COOKIE_HIGH: u16 = 0x2112;
pub const HEADER_LEN: usize = 20;
pub const BINDING: u16 = 0x0001;
/// XOR value for FINGERPRINT (RFC 5389 section 15.5).
const FINGERPRINT_XOR: u32 = 0x5354_554e;

mod field {
    use std::ops::Range;
    pub const TYPE: Range<usize> = 0..2;
    pub const LENGTH: Range<usize> = 2..4;
    pub const COOKIE: Range<usize> = 4..8;
    pub const TRANSACTION: Range<usize> = 8..20;
}

/// Attribute types natgw understands.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489 only: send the response elsewhere (natgw refuses it: a reflector).
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// RFC 5780 (and RFC 3489)
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// RFC 3489 only: where the response was sent from.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// RFC 3489 only: the server's address for changed IP and port.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RFC 5780
    pub const PADDING: u16 = 0x0026;
    /// RFC 5780
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    /// RFC 5780
    pub const RESPONSE_ORIGIN: u16 = 0x802b;
    /// RFC 5780
    pub const OTHER_ADDRESS: u16 = 0x802c;
    /// natgw's own, comprehension-optional (others ignore it): over TCP, "send this
    /// response again after N seconds of silence" (a u32), so a client can see whether
    /// an idle NAT mapping still lets the server's packets in (RFC 5382 REQ-5). A server
    /// that does it echoes the attribute in its first response.
    pub const NATGW_PUSH_AFTER: u16 = 0xc0de;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("shorter than a STUN header")]
    Truncated,
    #[error("not a STUN message (the top two bits are not zero)")]
    NotStun,
    #[error("length field {0} does not match the datagram")]
    BadLength(usize),
    #[error("attribute {kind:#06x} runs past the end of the message")]
    BadAttribute { kind: u16 },
    #[error("malformed {0} attribute")]
    Malformed(&'static str),
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
    #[error("message or attribute longer than a 16-bit length field can say")]
    TooLong,
}

/// A read-only view of a STUN message.
#[derive(Debug, Clone, Copy)]
pub struct Message<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Wraps `buffer` after checking the header and every attribute's bounds, so the
    /// accessors below never panic.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        // Without the magic cookie it is an RFC 3489 message, answered in its own terms
        // (RFC 5389 section 12), so only the top bits tell STUN from other protocols.
        if data[0] & 0xc0 != 0 {
            return Err(Error::NotStun);
        }
        let length = usize::from(u16::from_be_bytes(data[field::LENGTH].try_into().unwrap()));
        if !length.is_multiple_of(4) || HEADER_LEN + length != data.len() {
            return Err(Error::BadLength(length));
        }
        let message = Message { buffer };
        for attribute in message.attributes() {
            attribute?;
        }
        Ok(message)
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn message_type(&self) -> u16 {
        u16::from_be_bytes(self.data()[field::TYPE].try_into().unwrap())
    }

    pub fn class(&self) -> Class {
        Class::from_type(self.message_type())
    }

    /// The method (0x001 for Binding), without the class bits.
    pub fn method(&self) -> u16 {
        let t = self.message_type();
        (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2)
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        self.data()[field::TRANSACTION].try_into().unwrap()
    }

    /// The magic cookie field: `MAGIC_COOKIE`, or the first four bytes of an RFC 3489
    /// message's 128-bit transaction id.
    pub fn cookie(&self) -> u32 {
        u32::from_be_bytes(self.data()[field::COOKIE].try_into().unwrap())
    }

    /// An RFC 3489 message (no magic cookie).
    pub fn is_classic(&self) -> bool {
        self.cookie() != MAGIC_COOKIE
    }

    /// Attributes in order, with their offset in the message.
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            data: self.data(),
            offset: HEADER_LEN,
        }
    }

    /// `Some(true)` when FINGERPRINT is present and matches, `None` when absent.
    pub fn fingerprint_ok(&self) -> Option<bool> {
        if self.is_classic() {
            // RFC 3489 has no FINGERPRINT; 0x8028 means nothing there.
            return None;
        }
        let fp = self
            .attributes()
            .flatten()
            .find(|a| a.kind == attr::FINGERPRINT)?;
        let expected = u32::from_be_bytes(fp.value.try_into().ok()?);
        Some(fingerprint(&self.data()[..fp.offset], fp.offset - HEADER_LEN + 8).ok()? == expected)
    }

    /// `Some(true)` when MESSAGE-INTEGRITY is present and matches HMAC-SHA1 with `key`
    /// (the password for short-term credentials), `None` when absent.
    pub fn integrity_ok(&self, key: &[u8]) -> Option<bool> {
        let mi = self
            .attributes()
            .flatten()
            .find(|a| a.kind == attr::MESSAGE_INTEGRITY)?;
        Some(
            integrity(&self.data()[..mi.offset], mi.offset - HEADER_LEN + 24, key)?[..]
                == *mi.value,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header in the message.
    pub offset: usize,
}

pub struct Attributes<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.data.len() {
            return None;
        }
        let header = self.data.get(self.offset..self.offset + 4);
        let Some(header) = header else {
            self.offset = self.data.len();
            return Some(Err(Error::BadAttribute { kind: 0 }));
        };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let start = self.offset + 4;
        let Some(value) = self.data.get(start..start + len) else {
            self.offset = self.data.len();
            return Some(Err(Error::BadAttribute { kind }));
        };
        let attribute = Attribute {
            kind,
            value,
            offset: self.offset,
        };
        self.offset = start + len.div_ceil(4) * 4;
        Some(Ok(attribute))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn from_type(t: u16) -> Class {
        match (t & 0x0100 != 0, t & 0x0010 != 0) {
            (false, false) => Class::Request,
            (false, true) => Class::Indication,
            (true, false) => Class::Success,
            (true, true) => Class::Error,
        }
    }

    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::Success => 0x0100,
            Class::Error => 0x0110,
        }
    }
}

/// Attributes in parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrRepr {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    /// RFC 3489
    SourceAddress(SocketAddr),
    /// RFC 3489
    ChangedAddress(SocketAddr),
    OtherAddress(SocketAddr),
    ResponseOrigin(SocketAddr),
    ChangeRequest {
        ip: bool,
        port: bool,
    },
    ResponsePort(u16),
    Software(String),
    Username(String),
    ErrorCode {
        code: u16,
        reason: String,
    },
    UnknownAttributes(Vec<u16>),
    /// Anything else, kept raw (MESSAGE-INTEGRITY, FINGERPRINT, ICE attributes, ...).
    Other {
        kind: u16,
        value: Vec<u8>,
    },
}

/// A STUN message in parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub class: Class,
    pub method: u16,
    /// `MAGIC_COOKIE`, or for RFC 3489 the first 4 of the 16 transaction id bytes.
    pub cookie: u32,
    pub transaction_id: [u8; 12],
    pub attributes: Vec<AttrRepr>,
}

impl Repr {
    /// Parses a checked message. A FINGERPRINT that is present must match.
    pub fn parse<T: AsRef<[u8]>>(message: &Message<T>) -> Result<Repr, Error> {
        if message.fingerprint_ok() == Some(false) {
            return Err(Error::BadFingerprint);
        }
        let tid = message.transaction_id();
        let attributes = message
            .attributes()
            .map(|a| parse_attribute(a?, &tid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Repr {
            class: message.class(),
            method: message.method(),
            cookie: message.cookie(),
            transaction_id: tid,
            attributes,
        })
    }

    /// Parses bytes straight from a socket.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Repr, Error> {
        Repr::parse(&Message::new_checked(bytes)?)
    }

    pub fn binding_request(transaction_id: [u8; 12]) -> Repr {
        Repr {
            class: Class::Request,
            method: BINDING,
            cookie: MAGIC_COOKIE,
            transaction_id,
            attributes: Vec::new(),
        }
    }

    /// An RFC 3489 Binding request: the 16-byte transaction id fills the cookie field.
    pub fn classic_binding_request(transaction_id: [u8; 16]) -> Repr {
        let (cookie, rest) = transaction_id.split_at(4);
        Repr {
            cookie: u32::from_be_bytes(cookie.try_into().unwrap()),
            ..Repr::binding_request(rest.try_into().unwrap())
        }
    }

    /// An RFC 3489 message (no magic cookie).
    pub fn is_classic(&self) -> bool {
        self.cookie != MAGIC_COOKIE
    }

    /// The first attribute for which `f` returns something.
    pub fn find<T>(&self, f: impl Fn(&AttrRepr) -> Option<T>) -> Option<T> {
        self.attributes.iter().find_map(f)
    }

    /// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from older servers.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            AttrRepr::XorMappedAddress(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                AttrRepr::MappedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// OTHER-ADDRESS, or CHANGED-ADDRESS from RFC 3489 servers.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            AttrRepr::OtherAddress(s) | AttrRepr::ChangedAddress(s) => Some(*s),
            _ => None,
        })
    }

    /// Serialises the message, appending FINGERPRINT when asked (never to an RFC 3489
    /// message, which has none). Fails only when an attribute or the whole message is
    /// too long for its 16-bit length field.
    pub fn emit(&self, with_fingerprint: bool) -> Result<Vec<u8>, Error> {
        let method = self.method;
        let message_type = (method & 0x000f)
            | ((method & 0x0070) << 1)
            | ((method & 0x0f80) << 2)
            | self.class.bits();
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&message_type.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.transaction_id);
        for attribute in &self.attributes {
            emit_attribute(&mut out, attribute, &self.transaction_id)?;
        }
        if with_fingerprint && !self.is_classic() {
            let crc = fingerprint(&out, out.len() - HEADER_LEN + 8)?;
            put_attribute(&mut out, attr::FINGERPRINT, &crc.to_be_bytes())?;
        }
        let length = u16::try_from(out.len() - HEADER_LEN).map_err(|_| Error::TooLong)?;
        out[field::LENGTH].copy_from_slice(&length.to_be_bytes());
        Ok(out)
    }
}

/// CRC-32 of `prefix` with the length field set to `length`, XORed per RFC 5389.
fn fingerprint(prefix: &[u8], length: usize) -> Result<u32, Error> {
    let length = u16::try_from(length).map_err(|_| Error::TooLong)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&prefix[..2]);
    hasher.update(&length.to_be_bytes());
    hasher.update(&prefix[4..]);
    Ok(hasher.finalize() ^ FINGERPRINT_XOR)
}

/// HMAC-SHA1 over `prefix` with the length field set to `length` (RFC 5389 15.4).
fn integrity(prefix: &[u8], length: usize, key: &[u8]) -> Option<[u8; 20]> {
    let length = u16::try_from(length).ok()?;
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&prefix[..2]);
    mac.update(&length.to_be_bytes());
    mac.update(&prefix[4..]);
    Some(mac.finalize().into_bytes().into())
}

fn parse_attribute(a: Attribute, tid: &[u8; 12]) -> Result<AttrRepr, Error> {
    let text = |name| String::from_utf8(a.value.to_vec()).map_err(|_| Error::Malformed(name));
    Ok(match a.kind {
        attr::MAPPED_ADDRESS => AttrRepr::MappedAddress(
            address(a.value, None).ok_or(Error::Malformed("MAPPED-ADDRESS"))?,
        ),
        attr::XOR_MAPPED_ADDRESS => AttrRepr::XorMappedAddress(
            address(a.value, Some(tid)).ok_or(Error::Malformed("XOR-MAPPED-ADDRESS"))?,
        ),
        attr::SOURCE_ADDRESS => AttrRepr::SourceAddress(
            address(a.value, None).ok_or(Error::Malformed("SOURCE-ADDRESS"))?,
        ),
        attr::CHANGED_ADDRESS => AttrRepr::ChangedAddress(
            address(a.value, None).ok_or(Error::Malformed("CHANGED-ADDRESS"))?,
        ),
        attr::OTHER_ADDRESS => {
            AttrRepr::OtherAddress(address(a.value, None).ok_or(Error::Malformed("OTHER-ADDRESS"))?)
        }
        attr::RESPONSE_ORIGIN => AttrRepr::ResponseOrigin(
            address(a.value, None).ok_or(Error::Malformed("RESPONSE-ORIGIN"))?,
        ),
        attr::CHANGE_REQUEST => {
            let flags = u32::from_be_bytes(
                a.value
                    .try_into()
                    .map_err(|_| Error::Malformed("CHANGE-REQUEST"))?,
            );
            AttrRepr::ChangeRequest {
                ip: flags & 0x4 != 0,
                port: flags & 0x2 != 0,
            }
        }
        attr::RESPONSE_PORT => {
            let v: [u8; 4] = a
                .value
                .try_into()
                .map_err(|_| Error::Malformed("RESPONSE-PORT"))?;
            AttrRepr::ResponsePort(u16::from_be_bytes([v[0], v[1]]))
        }
        attr::SOFTWARE => AttrRepr::Software(text("SOFTWARE")?),
        attr::USERNAME => AttrRepr::Username(text("USERNAME")?),
        attr::ERROR_CODE => {
            if a.value.len() < 4 {
                return Err(Error::Malformed("ERROR-CODE"));
            }
            // Class 3 to 6 and number 0 to 99 (RFC 5389 15.6); anything else would not
            // survive a round trip, so it is no error code.
            let (class, number) = (a.value[2] & 0x7, a.value[3]);
            if !(3..=6).contains(&class) || number >= 100 {
                return Err(Error::Malformed("ERROR-CODE"));
            }
            let code = u16::from(class) * 100 + u16::from(number);
            AttrRepr::ErrorCode {
                code,
                reason: String::from_utf8_lossy(&a.value[4..]).into_owned(),
            }
        }
        attr::UNKNOWN_ATTRIBUTES => AttrRepr::UnknownAttributes(
            a.value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
        ),
        kind => AttrRepr::Other {
            kind,
            value: a.value.to_vec(),
        },
    })
}

/// Decodes an address attribute value; `xor` carries the transaction id for XOR forms.
fn address(value: &[u8], xor: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let mut port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    if let Some(tid) = xor {
        port ^= COOKIE_HIGH;
        mask[4..].copy_from_slice(tid);
    }
    let apply = |bytes: &[u8]| -> Vec<u8> {
        bytes
            .iter()
            .zip(mask.iter())
            .map(|(b, m)| if xor.is_some() { b ^ m } else { *b })
            .collect()
    };
    let ip = match (family, value.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(apply(&value[4..8])).ok()?,
        )),
        (0x02, 20) => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(apply(&value[4..20])).ok()?,
        )),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn encode_address(addr: &SocketAddr, xor: Option<&[u8; 12]>) -> Vec<u8> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    let mut port = addr.port();
    if let Some(tid) = xor {
        port ^= COOKIE_HIGH;
        mask[4..].copy_from_slice(tid);
    }
    let (family, bytes): (u8, Vec<u8>) = match addr.ip() {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let mut value = vec![0, family];
    value.extend_from_slice(&port.to_be_bytes());
    value.extend(
        bytes
            .iter()
            .zip(mask.iter())
            .map(|(b, m)| if xor.is_some() { b ^ m } else { *b }),
    );
    value
}

fn put_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(value.len()).map_err(|_| Error::TooLong)?;
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
    Ok(())
}

fn emit_attribute(out: &mut Vec<u8>, a: &AttrRepr, tid: &[u8; 12]) -> Result<(), Error> {
    match a {
        AttrRepr::SourceAddress(s) => {
            put_attribute(out, attr::SOURCE_ADDRESS, &encode_address(s, None))
        }
        AttrRepr::ChangedAddress(s) => {
            put_attribute(out, attr::CHANGED_ADDRESS, &encode_address(s, None))
        }
        AttrRepr::MappedAddress(s) => {
            put_attribute(out, attr::MAPPED_ADDRESS, &encode_address(s, None))
        }
        AttrRepr::XorMappedAddress(s) => {
            put_attribute(out, attr::XOR_MAPPED_ADDRESS, &encode_address(s, Some(tid)))
        }
        AttrRepr::OtherAddress(s) => {
            put_attribute(out, attr::OTHER_ADDRESS, &encode_address(s, None))
        }
        AttrRepr::ResponseOrigin(s) => {
            put_attribute(out, attr::RESPONSE_ORIGIN, &encode_address(s, None))
        }
        AttrRepr::ChangeRequest { ip, port } => {
            let flags: u32 = (u32::from(*ip) << 2) | (u32::from(*port) << 1);
            put_attribute(out, attr::CHANGE_REQUEST, &flags.to_be_bytes())
        }
        AttrRepr::ResponsePort(port) => {
            let mut v = port.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 0]);
            put_attribute(out, attr::RESPONSE_PORT, &v)
        }
        AttrRepr::Software(s) => put_attribute(out, attr::SOFTWARE, s.as_bytes()),
        AttrRepr::Username(s) => put_attribute(out, attr::USERNAME, s.as_bytes()),
        AttrRepr::ErrorCode { code, reason } => {
            // Class 3..6 and number 0..99 (RFC 5389 15.6).
            if !(300..700).contains(code) {
                return Err(Error::Malformed("ERROR-CODE"));
            }
            let class = u8::try_from(code / 100).expect("3 to 6");
            let number = u8::try_from(code % 100).expect("below 100");
            let mut v = vec![0, 0, class, number];
            v.extend_from_slice(reason.as_bytes());
            put_attribute(out, attr::ERROR_CODE, &v)
        }
        AttrRepr::UnknownAttributes(kinds) => {
            let v: Vec<u8> = kinds.iter().flat_map(|k| k.to_be_bytes()).collect();
            put_attribute(out, attr::UNKNOWN_ATTRIBUTES, &v)
        }
        AttrRepr::Other { kind, value } => put_attribute(out, *kind, value),
    }
}

#[cfg(test)]
pub(crate) mod arbitrary;
#[cfg(test)]
mod tests;
