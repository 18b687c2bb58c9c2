//! Structured random STUN messages for property tests: well-framed headers (so every
//! message gets past `new_checked` to the attribute parser) around random attributes,
//! known kinds with well- and ill-formed values, unknown kinds, with and without the
//! magic cookie and FINGERPRINT.

use proptest::collection::vec;
use proptest::prelude::*;

use super::{attr, fingerprint, HEADER_LEN, MAGIC_COOKIE};

const KNOWN: [u16; 17] = [
    attr::MAPPED_ADDRESS,
    attr::RESPONSE_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::SOURCE_ADDRESS,
    attr::CHANGED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::XOR_MAPPED_ADDRESS,
    attr::PADDING,
    attr::RESPONSE_PORT,
    attr::SOFTWARE,
    attr::FINGERPRINT,
    attr::RESPONSE_ORIGIN,
    attr::OTHER_ADDRESS,
    attr::NATGW_PUSH_AFTER,
];

fn kind() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => proptest::sample::select(&KNOWN[..]),
        1 => any::<u16>(),
    ]
}

/// An address value as the RFCs define it, IPv4 or IPv6.
fn address_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 4]>()).prop_map(|(port, ip)| {
            let mut v = vec![0, 1];
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&ip);
            v
        }),
        (any::<u16>(), any::<[u8; 16]>()).prop_map(|(port, ip)| {
            let mut v = vec![0, 2];
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&ip);
            v
        }),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => address_value(),
        1 => any::<[u8; 4]>().prop_map(|b| b.to_vec()),
        2 => vec(any::<u8>(), 0..40),
    ]
}

/// (kind, value) pairs.
pub fn attributes() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    vec((kind(), value()), 0..8)
}

/// Bytes of a message with a correct header and attribute framing.
pub fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>().prop_map(|t| t & 0x3fff),
        prop_oneof![3 => Just(MAGIC_COOKIE), 1 => any::<u32>()],
        any::<[u8; 12]>(),
        attributes(),
        any::<bool>(),
    )
        .prop_map(
            |(message_type, cookie, tid, attributes, with_fingerprint)| {
                let mut out = Vec::new();
                out.extend_from_slice(&message_type.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&cookie.to_be_bytes());
                out.extend_from_slice(&tid);
                for (kind, value) in attributes {
                    out.extend_from_slice(&kind.to_be_bytes());
                    let len = u16::try_from(value.len()).expect("short values");
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&value);
                    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
                }
                if with_fingerprint {
                    let crc = fingerprint(&out, out.len() - HEADER_LEN + 8).expect("short");
                    out.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
                    out.extend_from_slice(&4u16.to_be_bytes());
                    out.extend_from_slice(&crc.to_be_bytes());
                }
                let length = u16::try_from(out.len() - HEADER_LEN).expect("short");
                out[2..4].copy_from_slice(&length.to_be_bytes());
                out
            },
        )
}

/// A Binding request (with the magic cookie or without) around random attributes.
pub fn binding_request() -> impl Strategy<Value = Vec<u8>> {
    message().prop_map(|mut m| {
        m[0..2].copy_from_slice(&super::BINDING.to_be_bytes());
        m
    })
}
