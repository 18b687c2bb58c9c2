//! The codec against the RFC 5769 test vectors, malformed input, and random input.

use super::*;
use rand::{Rng, SeedableRng};

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 5769 2.1: sample request (short-term credentials).
fn sample_request() -> Vec<u8> {
    hex(
        "00010058 2112a442 b7e7a701 bc34d686 fa87dfae 80220010 5354554e 20746573 7420636c
         69656e74 00240004 6e0001ff 80290008 932ff9b1 51263b36 00060009 6576746a 3a683676
         59202020 00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2 80280004 e57a3bcf",
    )
}

/// RFC 5769 2.2: sample IPv4 response.
fn sample_ipv4_response() -> Vec<u8> {
    hex(
        "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae 8022000b 74657374 20766563 746f7220
         00200008 0001a147 e112a643 00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
         80280004 c07d4c96",
    )
}

/// RFC 5769 2.3: sample IPv6 response.
fn sample_ipv6_response() -> Vec<u8> {
    hex(
        "01010048 2112a442 b7e7a701 bc34d686 fa87dfae 8022000b 74657374 20766563 746f7220
         00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9 00080014 a382954e 4be67bf1
         1784c97c 8292c275 bfe3ed41 80280004 c8fb0b4c",
    )
}

/// RFC 5769 2.4: request with long-term credentials.
fn sample_long_term_request() -> Vec<u8> {
    hex(
        "00010060 2112a442 78ad3433 c6ad72c0 29da412e 00060012 e3839ee3 8388e383 aae38383
         e382afe3 82b90000 0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679
         36347341 0014000b 6578616d 706c652e 6f726700 00080014 f6702465 6dd64a3e 02b8e071
         2e85c9a2 8ca89666",
    )
}

const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

#[test]
fn rfc5769_sample_request() {
    let bytes = sample_request();
    let message = Message::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        (message.class(), message.method()),
        (Class::Request, BINDING)
    );
    assert_eq!(message.transaction_id(), TID);
    assert_eq!(message.fingerprint_ok(), Some(true));
    assert_eq!(message.integrity_ok(PASSWORD), Some(true));
    assert_eq!(message.integrity_ok(b"wrong"), Some(false));
    let repr = Repr::parse(&message).unwrap();
    assert!(repr
        .attributes
        .contains(&AttrRepr::Software("STUN test client".into())));
    assert!(repr
        .attributes
        .contains(&AttrRepr::Username("evtj:h6vY".into())));
}

#[test]
fn rfc5769_sample_ipv4_response() {
    let bytes = sample_ipv4_response();
    let message = Message::new_checked(&bytes[..]).unwrap();
    assert_eq!(message.class(), Class::Success);
    assert_eq!(
        (message.fingerprint_ok(), message.integrity_ok(PASSWORD)),
        (Some(true), Some(true))
    );
    let repr = Repr::parse(&message).unwrap();
    assert_eq!(
        repr.mapped_address(),
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert!(repr
        .attributes
        .contains(&AttrRepr::Software("test vector".into())));
}

#[test]
fn rfc5769_sample_ipv6_response() {
    let bytes = sample_ipv6_response();
    let message = Message::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        (message.fingerprint_ok(), message.integrity_ok(PASSWORD)),
        (Some(true), Some(true))
    );
    let repr = Repr::parse(&message).unwrap();
    assert_eq!(
        repr.mapped_address(),
        Some(
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        )
    );
}

#[test]
fn rfc5769_long_term_credentials() {
    use md5::{Digest, Md5};
    let bytes = sample_long_term_request();
    let message = Message::new_checked(&bytes[..]).unwrap();
    // key = MD5(username ":" realm ":" SASLprep(password))
    let key = Md5::digest(
        "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}:example.org:TheMatrIX".as_bytes(),
    );
    assert_eq!(message.integrity_ok(&key), Some(true));
    assert_eq!(message.fingerprint_ok(), None);
}

#[test]
fn emit_round_trips_and_reproduces_the_vector_prefix() {
    let repr = Repr {
        class: Class::Success,
        method: BINDING,
        cookie: MAGIC_COOKIE,
        transaction_id: TID,
        attributes: vec![AttrRepr::XorMappedAddress(
            "192.0.2.1:32853".parse().unwrap(),
        )],
    };
    let bytes = repr.emit(true).unwrap();
    let vector = sample_ipv4_response();
    // The XOR-MAPPED-ADDRESS attribute is byte-identical to the RFC's.
    assert_eq!(&bytes[20..32], &vector[36..48]);
    assert_eq!(
        Message::new_checked(&bytes[..]).unwrap().fingerprint_ok(),
        Some(true)
    );
    let parsed = Repr::parse_bytes(&bytes).unwrap();
    assert_eq!(parsed.attributes[0], repr.attributes[0]);

    let all = Repr {
        class: Class::Error,
        method: BINDING,
        cookie: MAGIC_COOKIE,
        transaction_id: [7; 12],
        attributes: vec![
            AttrRepr::MappedAddress("198.51.100.7:4000".parse().unwrap()),
            AttrRepr::OtherAddress("203.0.113.2:3479".parse().unwrap()),
            AttrRepr::ResponseOrigin("[2001:db8::1]:3478".parse().unwrap()),
            AttrRepr::ChangeRequest {
                ip: true,
                port: false,
            },
            AttrRepr::ResponsePort(40000),
            AttrRepr::Software("natgw".into()),
            AttrRepr::ErrorCode {
                code: 420,
                reason: "Unknown Attribute".into(),
            },
            AttrRepr::UnknownAttributes(vec![0x0003]),
        ],
    };
    assert_eq!(Repr::parse_bytes(&all.emit(false).unwrap()).unwrap(), all);
}

#[test]
fn malformed_messages_are_rejected() {
    let good = sample_ipv4_response();
    assert_eq!(
        Message::new_checked(&good[..10]).unwrap_err(),
        Error::Truncated
    );
    let mut top_bits = good.clone();
    top_bits[0] |= 0x80;
    assert_eq!(
        Message::new_checked(&top_bits[..]).unwrap_err(),
        Error::NotStun
    );
    // Without the magic cookie it is an RFC 3489 message, where 0x8028 is no
    // FINGERPRINT to check.
    let mut cookie = good.clone();
    cookie[4] ^= 1;
    let classic = Message::new_checked(&cookie[..]).unwrap();
    assert!(classic.is_classic());
    assert_eq!(classic.fingerprint_ok(), None);
    assert!(matches!(
        Message::new_checked(&good[..good.len() - 4]).unwrap_err(),
        Error::BadLength(_)
    ));
    let mut overflow = good.clone();
    overflow[22..24].copy_from_slice(&0x00ffu16.to_be_bytes());
    assert_eq!(
        Message::new_checked(&overflow[..]).unwrap_err(),
        Error::BadAttribute {
            kind: attr::SOFTWARE
        }
    );
    let mut crc = good.clone();
    let last = crc.len() - 1;
    crc[last] ^= 0xff;
    assert_eq!(Repr::parse_bytes(&crc).unwrap_err(), Error::BadFingerprint);
    let mut short_xor = good;
    short_xor[38..40].copy_from_slice(&4u16.to_be_bytes());
    assert!(Repr::parse_bytes(&short_xor).is_err());
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5769);
    let vectors = [
        sample_request(),
        sample_ipv4_response(),
        sample_ipv6_response(),
        sample_long_term_request(),
    ];
    for i in 0..100_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let len = rng.gen_range(0..120);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            // Every vector, not only those whose index matches the odd iterations.
            let mut v = vectors[rng.gen_range(0..vectors.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..v.len());
                v[at] = rng.gen();
            }
            v
        };
        if let Ok(message) = Message::new_checked(&bytes[..]) {
            let _ = Repr::parse(&message);
            let _ = message.integrity_ok(PASSWORD);
        }
    }
}

mod properties {
    use super::super::arbitrary;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Well-framed messages always pass `new_checked`, so every case reaches the
        /// attribute parser; whatever parses emits back to the same message (less the
        /// raw FINGERPRINT and MESSAGE-INTEGRITY, which belong to the original bytes).
        #[test]
        fn framed_messages_reach_the_attribute_parser_and_round_trip(bytes in arbitrary::message()) {
            let message = Message::new_checked(&bytes[..]).expect("well framed");
            prop_assert_eq!(message.attributes().filter(|a| a.is_err()).count(), 0);
            let _ = message.integrity_ok(PASSWORD);
            if let Ok(mut repr) = Repr::parse(&message) {
                repr.attributes.retain(|a| !matches!(a, AttrRepr::Other { kind, .. }
                    if [attr::FINGERPRINT, attr::MESSAGE_INTEGRITY].contains(kind)));
                let again = repr.emit(false).expect("what parsed fits");
                prop_assert_eq!(Repr::parse_bytes(&again), Ok(repr));
            }
        }

        /// Cut or bit-flipped, they are refused or parsed, never a panic.
        #[test]
        fn damaged_messages_never_panic(
            bytes in arbitrary::message(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let cut = &bytes[..cut.index(bytes.len() + 1)];
            let _ = Repr::parse_bytes(cut);
            let mut flipped = bytes.clone();
            let at = flip.0.index(flipped.len());
            flipped[at] ^= flip.1 | 1;
            let _ = Repr::parse_bytes(&flipped);
        }
    }
}

/// Captures from other implementations (see corpus.txt): what they send parses, and
/// what coturn answers parses to what it means.
mod corpus {
    use super::*;

    fn capture(name: &str) -> Vec<u8> {
        include_str!("corpus.txt")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, h) = l.split_once(' ')?;
                (n == name).then(|| hex(h))
            })
            .unwrap_or_else(|| panic!("no capture {name}"))
    }

    #[test]
    fn the_classic_clients_requests_parse_as_rfc_3489() {
        for (name, change) in [
            ("vovida-request-no-change", (false, false)),
            ("vovida-request-change-ip", (true, false)),
            ("vovida-request-change-port", (false, true)),
        ] {
            let repr = Repr::parse_bytes(&capture(name)).unwrap();
            assert!(repr.is_classic(), "{name}");
            assert_eq!((repr.class, repr.method), (Class::Request, BINDING));
            assert_eq!(
                repr.attributes,
                vec![AttrRepr::ChangeRequest {
                    ip: change.0,
                    port: change.1
                }],
                "{name}"
            );
        }
    }

    #[test]
    fn coturns_requests_parse() {
        let bare = Repr::parse_bytes(&capture("coturn-stunclient-request")).unwrap();
        assert!(!bare.is_classic() && bare.attributes.is_empty());
        let padded = capture("coturn-natdiscovery-padded-request");
        assert_eq!(padded.len(), 1524);
        let repr = Repr::parse_bytes(&padded).unwrap();
        assert!(matches!(
            &repr.attributes[..],
            [AttrRepr::Other { kind: attr::PADDING, value }] if value.len() == 1500
        ));
    }

    #[test]
    fn coturns_answers_parse_to_what_they_mean() {
        let mapped: std::net::SocketAddr = "203.0.113.1:59353".parse().unwrap();
        let other = Some("198.51.100.11:3479".parse().unwrap());
        let classic = Repr::parse_bytes(&capture("coturn-classic-response")).unwrap();
        assert!(classic.is_classic());
        assert_eq!(classic.class, Class::Success);
        assert_eq!(classic.mapped_address(), Some(mapped));
        assert_eq!(classic.other_address(), other);
        assert!(classic.attributes.contains(&AttrRepr::SourceAddress(
            "198.51.100.10:3478".parse().unwrap()
        )));
        // The response carries the request's whole 128-bit transaction id.
        assert_eq!(
            capture("coturn-classic-response")[4..20],
            capture("vovida-request-no-change")[4..20]
        );
        let modern = Repr::parse_bytes(&capture("coturn-rfc5780-response")).unwrap();
        assert!(!modern.is_classic());
        assert_eq!(modern.mapped_address(), Some(mapped));
        assert!(modern
            .attributes
            .contains(&AttrRepr::XorMappedAddress(mapped)));
        assert_eq!(modern.other_address(), other);
    }
}
