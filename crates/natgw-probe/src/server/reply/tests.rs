use super::*;
use crate::server::Config;

fn config(alt: bool) -> Config {
    Config::new(
        "198.51.100.10:3478".parse().unwrap(),
        alt.then(|| "198.51.100.11:3479".parse().unwrap()),
    )
}

fn request_with(attributes: Vec<AttrRepr>, fingerprint: bool) -> Vec<u8> {
    Repr {
        attributes,
        ..Repr::binding_request([1; 12])
    }
    .emit(fingerprint)
    .unwrap()
}

fn request(attributes: Vec<AttrRepr>) -> Vec<u8> {
    request_with(attributes, true)
}

fn classic(attributes: Vec<AttrRepr>) -> Vec<u8> {
    Repr {
        attributes,
        ..Repr::classic_binding_request([9; 16])
    }
    .emit(false)
    .unwrap()
}

const PEER: &str = "203.0.113.1:40000";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn udp(bytes: &[u8], local: SocketAddr, c: &Config) -> Result<Reply, Dropped> {
    answer(bytes, peer(), local, c, Transport::Udp)
}

#[test]
fn binding_reports_the_peer_and_the_other_address() {
    let c = config(true);
    let r = udp(&request(vec![]), c.primary, &c).unwrap();
    let reply = Repr::parse_bytes(&r.bytes).unwrap();
    assert_eq!(
        (reply.class, r.from, r.to),
        (Class::Success, c.primary, peer())
    );
    assert_eq!(reply.mapped_address(), Some(peer()));
    assert_eq!(reply.other_address(), c.alternate);
    assert!(reply
        .attributes
        .contains(&AttrRepr::ResponseOrigin(c.primary)));
    assert!(!reply.is_classic());
}

#[test]
fn replies_carry_only_what_the_request_needs() {
    // A bare 20-byte request: XOR-MAPPED-ADDRESS alone without an alternate address;
    // RESPONSE-ORIGIN and OTHER-ADDRESS with one; FINGERPRINT only when asked with one.
    let bare = request_with(vec![], false);
    assert_eq!(bare.len(), 20);
    let sizes = |c: &Config, req: &[u8]| udp(req, c.primary, c).unwrap().bytes.len();
    assert_eq!(sizes(&config(false), &bare), 32);
    assert_eq!(sizes(&config(true), &bare), 56);
    assert_eq!(sizes(&config(true), &request(vec![])), 64);
    let r = udp(&bare, config(true).primary, &config(true)).unwrap();
    let reply = Repr::parse_bytes(&r.bytes).unwrap();
    assert!(!reply
        .attributes
        .iter()
        .any(|a| matches!(a, AttrRepr::Software(_) | AttrRepr::MappedAddress(_))));
}

#[test]
fn change_request_picks_the_socket() {
    let c = config(true);
    let from = |ip, port| {
        udp(
            &request(vec![AttrRepr::ChangeRequest { ip, port }]),
            c.primary,
            &c,
        )
        .unwrap()
        .from
    };
    assert_eq!(from(true, true), "198.51.100.11:3479".parse().unwrap());
    assert_eq!(from(false, true), "198.51.100.10:3479".parse().unwrap());
    assert_eq!(from(true, false), "198.51.100.11:3478".parse().unwrap());
    // Asked on the alternate socket, "change" goes back to the primary values.
    let alt = c.alternate.unwrap();
    let back = udp(
        &request(vec![AttrRepr::ChangeRequest {
            ip: true,
            port: true,
        }]),
        alt,
        &c,
    )
    .unwrap()
    .from;
    assert_eq!(back, c.primary);
}

#[test]
fn response_port_reaches_only_unprivileged_ports_of_the_requester_over_udp() {
    let c = config(true);
    let r = udp(&request(vec![AttrRepr::ResponsePort(5555)]), c.primary, &c).unwrap();
    assert_eq!(r.to, "203.0.113.1:5555".parse().unwrap());
    assert!(r.response_port);
    for port in [7, 19, 53, 1023] {
        assert_eq!(
            udp(&request(vec![AttrRepr::ResponsePort(port)]), c.primary, &c),
            Err(Dropped::ResponsePortRefused),
            "port {port}"
        );
    }
    assert_eq!(
        answer(
            &request(vec![AttrRepr::ResponsePort(5555)]),
            peer(),
            c.primary,
            &c,
            Transport::Tcp
        ),
        Err(Dropped::ResponsePortRefused)
    );
    // Its own port is no redirection at all.
    let same = udp(&request(vec![AttrRepr::ResponsePort(40000)]), c.primary, &c).unwrap();
    assert!(!same.response_port);
}

#[test]
fn unknown_or_unsupported_attributes_get_420() {
    let c = config(false);
    let r = udp(
        &request(vec![AttrRepr::ChangeRequest {
            ip: true,
            port: false,
        }]),
        c.primary,
        &c,
    )
    .unwrap();
    let reply = Repr::parse_bytes(&r.bytes).unwrap();
    assert_eq!((reply.class, r.error), (Class::Error, true));
    assert!(reply
        .attributes
        .contains(&AttrRepr::UnknownAttributes(vec![attr::CHANGE_REQUEST])));
    let r = udp(
        &request(vec![AttrRepr::Other {
            kind: 0x0042,
            value: vec![0; 4],
        }]),
        c.primary,
        &c,
    )
    .unwrap();
    assert!(Repr::parse_bytes(&r.bytes)
        .unwrap()
        .attributes
        .contains(&AttrRepr::UnknownAttributes(vec![0x0042])));
    // A change over TCP cannot be done either.
    let c = config(true);
    let r = answer(
        &request(vec![AttrRepr::ChangeRequest {
            ip: false,
            port: true,
        }]),
        peer(),
        c.primary,
        &c,
        Transport::Tcp,
    )
    .unwrap();
    assert!(r.error);
}

#[test]
fn padding_is_reflected_up_to_the_request_size_and_no_further() {
    let c = config(true);
    let padded = request(vec![AttrRepr::Other {
        kind: attr::PADDING,
        value: vec![0; 1200],
    }]);
    let r = udp(&padded, c.primary, &c).unwrap();
    let reply = Repr::parse_bytes(&r.bytes).unwrap();
    assert_eq!(reply.class, Class::Success);
    assert_eq!(r.bytes.len(), padded.len());
    // Padding smaller than the reply itself adds nothing.
    let small = request_with(
        vec![AttrRepr::Other {
            kind: attr::PADDING,
            value: vec![0; 4],
        }],
        false,
    );
    assert_eq!(udp(&small, c.primary, &c).unwrap().bytes.len(), 56);
}

#[test]
fn oversized_garbage_and_non_requests_are_dropped_with_their_reason() {
    let c = config(true);
    assert_eq!(udp(b"hello", c.primary, &c), Err(Dropped::Malformed));
    let huge = request(vec![AttrRepr::Other {
        kind: attr::PADDING,
        value: vec![0; MAX_REQUEST],
    }]);
    assert_eq!(udp(&huge, c.primary, &c), Err(Dropped::Oversized));
    let indication = Repr {
        class: Class::Indication,
        ..Repr::binding_request([2; 12])
    }
    .emit(false)
    .unwrap();
    assert_eq!(udp(&indication, c.primary, &c), Err(Dropped::NotARequest));
    let mut bad_crc = request(vec![]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert_eq!(udp(&bad_crc, c.primary, &c), Err(Dropped::Malformed));
}

#[test]
fn classic_clients_are_answered_in_rfc_3489_terms() {
    let c = config(true);
    let request = classic(vec![AttrRepr::ChangeRequest {
        ip: true,
        port: true,
    }]);
    let r = udp(&request, c.primary, &c).unwrap();
    let reply = Repr::parse_bytes(&r.bytes).unwrap();
    assert!(reply.is_classic());
    // The whole 16-byte transaction id comes back.
    assert_eq!(&r.bytes[4..20], &request[4..20]);
    assert_eq!(r.from, c.alternate.unwrap());
    assert_eq!(
        reply.attributes,
        vec![
            AttrRepr::MappedAddress(peer()),
            AttrRepr::SourceAddress(c.alternate.unwrap()),
            AttrRepr::ChangedAddress(c.alternate.unwrap()),
        ]
    );
    assert_eq!(reply.other_address(), c.alternate);
    // No FINGERPRINT in RFC 3489, whatever the request had.
    assert!(Message::new_checked(&r.bytes[..])
        .unwrap()
        .fingerprint_ok()
        .is_none());
}

#[test]
fn classic_response_address_is_refused_and_response_port_unknown() {
    let c = config(true);
    let aimed = classic(vec![AttrRepr::Other {
        kind: attr::RESPONSE_ADDRESS,
        value: vec![0, 1, 0, 7, 192, 0, 2, 99],
    }]);
    assert_eq!(
        udp(&aimed, c.primary, &c),
        Err(Dropped::ResponseAddressRefused)
    );
    let r = udp(&classic(vec![AttrRepr::ResponsePort(5555)]), c.primary, &c).unwrap();
    assert!(r.error);
    assert_eq!(r.to, peer());
}

mod properties {
    use super::*;
    use crate::wire::arbitrary;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Never an amplifier: whatever a request carries, the answer is no longer than
        /// the request or the 64 bytes a full RFC 5780 answer with FINGERPRINT takes, and
        /// it goes to the requester's own address.
        #[test]
        fn no_request_draws_a_longer_answer(bytes in arbitrary::binding_request(), tcp in any::<bool>()) {
            let c = config(true);
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            if let Ok(r) = answer(&bytes, peer(), c.primary, &c, transport) {
                prop_assert!(r.bytes.len() <= bytes.len().max(64), "{} -> {}", bytes.len(), r.bytes.len());
                prop_assert_eq!(r.to.ip(), peer().ip());
                prop_assert!(r.to.port() == peer().port() || r.to.port() >= MIN_RESPONSE_PORT);
                prop_assert!(Repr::parse_bytes(&r.bytes).is_ok());
            }
        }
    }
}
