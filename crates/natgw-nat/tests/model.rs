//! The translator's behaviour, requirement by requirement, on real packet bytes.

use std::net::Ipv4Addr;
use std::time::Duration;

use natgw_nat::packet::{
    echo, fragment, icmp_error, private_host as host, reassemble, remote_host as remote, tcp, udp,
    with_record_route,
};
use natgw_nat::wire::{self, checksums_ok, icmp_type, tcp_flags::*, Ipv4};
use natgw_nat::{
    Config, DropReason, Endpoint, Filtering, IcmpLimit, Nat, Proto, TcpState, Timeouts, Verdict,
};

const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn config(filtering: Filtering) -> Config {
    Config {
        private: vec!["10.0.0.0/24".parse().unwrap()],
        pool: POOL.to_vec(),
        ports: 1024..=65535,
        filtering,
        timeouts: Timeouts::default(),
        icmp_source: GW,
    }
}

fn nat(filtering: Filtering) -> Nat {
    Nat::new(config(filtering)).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[track_caller]
fn forwarded(v: Verdict) -> Vec<u8> {
    match v {
        Verdict::Forward(p) => {
            assert!(checksums_ok(&p), "checksums of {p:02x?}");
            p
        }
        other => panic!("expected a translated packet, got {other:?}"),
    }
}

fn src_of(p: &[u8]) -> Endpoint {
    let h = Ipv4::parse(p).unwrap();
    Endpoint::new(h.src, wire::get16(p, h.header_len))
}

fn dst_of(p: &[u8]) -> Endpoint {
    let h = Ipv4::parse(p).unwrap();
    Endpoint::new(h.dst, wire::get16(p, h.header_len + 2))
}

#[test]
fn udp_mapping_is_endpoint_independent_and_preserves_the_port() {
    let mut n = nat(Filtering::EndpointIndependent);
    let a = host(2, 40000);
    let out1 = forwarded(n.outbound(&udp(a, remote(1, 53), b"q1"), secs(0)));
    let out2 = forwarded(n.outbound(&udp(a, remote(2, 3478), b"q2"), secs(1)));
    let ext = src_of(&out1);
    assert_eq!(
        ext,
        src_of(&out2),
        "same public endpoint for every destination"
    );
    assert_eq!(ext.port, 40000, "port preserved");
    assert!(POOL.contains(&ext.addr));
    // Exactly the packet a host with the public address would have sent.
    assert_eq!(out1, udp(ext, remote(1, 53), b"q1"));
    // The reply maps back to the private endpoint, byte for byte.
    let back = forwarded(n.inbound(&udp(remote(1, 53), ext, b"r"), secs(2)));
    assert_eq!(back, udp(remote(1, 53), a, b"r"));
}

#[test]
fn a_taken_port_moves_to_a_free_one_and_never_overloads() {
    let mut n = nat(Filtering::EndpointIndependent);
    // Two hosts that share a pool address and a private port.
    let (a, b) = (2..=60u8)
        .flat_map(|i| (i + 1..=60).map(move |j| (i, j)))
        .map(|(i, j)| (host(i, 5000), host(j, 5000)))
        .find(|(a, b)| {
            let c = config(Filtering::EndpointIndependent);
            c.paired_address(a.addr) == c.paired_address(b.addr)
        })
        .unwrap();
    let ea = src_of(&forwarded(n.outbound(&udp(a, remote(1, 53), b""), secs(0))));
    let eb = src_of(&forwarded(n.outbound(&udp(b, remote(1, 53), b""), secs(0))));
    assert_eq!(ea.port, 5000);
    assert_eq!(eb.addr, ea.addr);
    assert_ne!(eb.port, 5000, "never the taken port");
    assert!((1024..=65535).contains(&eb.port));
    assert!(n.consistent());
}

#[test]
fn every_binding_of_a_host_uses_one_public_address() {
    let mut n = nat(Filtering::EndpointIndependent);
    let mut seen = std::collections::BTreeMap::new();
    for last in 2..20u8 {
        for port in [1000, 2000, 3000] {
            let p = n.outbound(&udp(host(last, port), remote(1, 53), b""), secs(0));
            let ext = src_of(&forwarded(p));
            assert_eq!(*seen.entry(last).or_insert(ext.addr), ext.addr);
        }
        let p = forwarded(n.outbound(
            &echo(host(last, 0).addr, remote(1, 0).addr, 8, 7, 1),
            secs(0),
        ));
        assert_eq!(seen[&last], Ipv4::parse(&p).unwrap().src);
    }
    let used: std::collections::BTreeSet<_> = seen.values().collect();
    assert_eq!(used.len(), 2, "the pool is used");
}

#[test]
fn filtering_modes_admit_what_they_promise() {
    let a = host(2, 40000);
    let cases = [
        // (mode, same address other port, other address)
        (Filtering::EndpointIndependent, true, true),
        (Filtering::AddressDependent, true, false),
        (Filtering::AddressAndPortDependent, false, false),
    ];
    for (mode, other_port_ok, other_addr_ok) in cases {
        let mut n = nat(mode);
        let ext = src_of(&forwarded(
            n.outbound(&udp(a, remote(1, 3478), b""), secs(0)),
        ));
        let v = n.inbound(&udp(remote(1, 3478), ext, b""), secs(1));
        assert!(
            matches!(v, Verdict::Forward(_)),
            "{mode:?}: the contacted endpoint"
        );
        for (from, ok) in [
            (remote(1, 3479), other_port_ok),
            (remote(9, 3478), other_addr_ok),
        ] {
            let v = n.inbound(&udp(from, ext, b""), secs(1));
            if ok {
                assert_eq!(dst_of(&forwarded(v)), a, "{mode:?} admits {from}");
            } else {
                assert_eq!(
                    v,
                    Verdict::Drop(DropReason::Filtered),
                    "{mode:?} refuses {from}"
                );
            }
        }
    }
}

#[test]
fn unsolicited_and_foreign_packets_are_left_alone() {
    let mut n = nat(Filtering::EndpointIndependent);
    // For a public endpoint without a binding: the host's own business.
    assert_eq!(
        n.inbound(
            &udp(remote(1, 53), Endpoint::new(POOL[0], 4000), b""),
            secs(0)
        ),
        Verdict::Pass
    );
    // For an address that is not ours.
    assert_eq!(
        n.inbound(&udp(remote(1, 53), remote(2, 53), b""), secs(0)),
        Verdict::Pass
    );
    // The gateway's own traffic (not from a private prefix) is not translated.
    assert_eq!(
        n.outbound(&udp(Endpoint::new(POOL[0], 5), remote(1, 53), b""), secs(0)),
        Verdict::Pass
    );
    assert!(n.bindings().is_empty());
    // Garbage.
    assert_eq!(
        n.outbound(&[0x45, 0, 0], secs(0)),
        Verdict::Drop(DropReason::Malformed)
    );
    let mut short = udp(host(2, 1), remote(1, 53), b"");
    short.truncate(24);
    wire::put16(&mut short, 2, 24);
    assert_eq!(
        n.outbound(&short, secs(0)),
        Verdict::Drop(DropReason::Malformed)
    );
    // Protocols without ports are not carried.
    let mut gre = udp(host(2, 1), remote(1, 53), b"");
    gre[9] = 47;
    assert_eq!(
        n.outbound(&gre, secs(0)),
        Verdict::Drop(DropReason::Unsupported)
    );
}

#[test]
fn udp_lives_five_minutes_refreshed_only_by_outbound_packets() {
    let mut n = nat(Filtering::EndpointIndependent);
    let a = host(2, 40000);
    let ext = src_of(&forwarded(n.outbound(&udp(a, remote(1, 53), b""), secs(0))));
    // Inbound traffic does not keep it alive.
    forwarded(n.inbound(&udp(remote(1, 53), ext, b""), secs(200)));
    forwarded(n.inbound(&udp(remote(1, 53), ext, b""), secs(299)));
    assert_eq!(
        n.inbound(&udp(remote(1, 53), ext, b""), secs(300)),
        Verdict::Pass
    );
    assert!(n.bindings().is_empty());
    // Outbound traffic does, to any destination.
    let ext = src_of(&forwarded(
        n.outbound(&udp(a, remote(1, 53), b""), secs(1000)),
    ));
    forwarded(n.outbound(&udp(a, remote(2, 53), b""), secs(1250)));
    forwarded(n.inbound(&udp(remote(1, 53), ext, b""), secs(1549)));
    assert_eq!(
        n.inbound(&udp(remote(1, 53), ext, b""), secs(1550)),
        Verdict::Pass
    );
}

#[test]
fn the_udp_timeout_cannot_go_below_two_minutes() {
    let mut c = config(Filtering::EndpointIndependent);
    c.timeouts.udp = secs(119);
    assert!(Nat::new(c.clone()).is_err());
    c.timeouts.udp = secs(120);
    let mut n = Nat::new(c).unwrap();
    let ext = src_of(&forwarded(
        n.outbound(&udp(host(2, 9), remote(1, 53), b""), secs(0)),
    ));
    forwarded(n.inbound(&udp(remote(1, 53), ext, b""), secs(119)));
}

#[test]
fn tcp_follows_its_states_and_timers() {
    let mut n = nat(Filtering::AddressAndPortDependent);
    let (a, r) = (host(2, 33000), remote(1, 443));
    // A segment that is not a SYN opens nothing.
    assert_eq!(
        n.outbound(&tcp(a, r, ACK, b""), secs(0)),
        Verdict::Drop(DropReason::NoMapping)
    );
    let syn = forwarded(n.outbound(&tcp(a, r, SYN, b""), secs(0)));
    let ext = src_of(&syn);
    assert_eq!(syn, tcp(ext, r, SYN, b""));
    let state = |n: &Nat| n.bindings()[0].sessions[&r];
    assert_eq!(state(&n).tcp, Some(TcpState::SynOut));
    assert_eq!(state(&n).expires, secs(240), "transitory while opening");
    assert_eq!(
        forwarded(n.inbound(&tcp(r, ext, SYN | ACK, b""), secs(1))),
        tcp(r, a, SYN | ACK, b"")
    );
    forwarded(n.outbound(&tcp(a, r, ACK, b"GET /"), secs(2)));
    assert_eq!(state(&n).tcp, Some(TcpState::Established));
    // Idle for 2 h 3 min: still there.
    let t = 2 + 2 * 3600 + 3 * 60;
    forwarded(n.inbound(&tcp(r, ext, ACK, b"data"), secs(t)));
    // A RST leaves the session 4 minutes, then it is gone and the filter closes; the
    // binding keeps the longest timer its sessions had.
    forwarded(n.inbound(&tcp(r, ext, RST, b""), secs(t + 10)));
    assert_eq!(state(&n).tcp, Some(TcpState::Reset));
    assert_eq!(state(&n).expires, secs(t + 10 + 240));
    let v = n.inbound(&tcp(r, ext, ACK, b""), secs(t + 10 + 240));
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
    assert!(n.bindings()[0].sessions.is_empty());
    assert_eq!(n.bindings()[0].expires, secs(t + 7440));
    let v = n.inbound(&tcp(r, ext, ACK, b""), secs(t + 7440));
    assert_eq!(v, Verdict::Pass);
    assert!(n.bindings().is_empty());
}

#[test]
fn established_tcp_outlives_two_hours_four_minutes_and_not_much_more() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 33000), remote(1, 443));
    let ext = src_of(&forwarded(n.outbound(&tcp(a, r, SYN, b""), secs(0))));
    forwarded(n.inbound(&tcp(r, ext, SYN | ACK, b""), secs(0)));
    forwarded(n.inbound(&tcp(r, ext, ACK, b""), secs(7439)));
    assert_eq!(n.bindings()[0].expires, secs(7439 + 7440));
    assert_eq!(
        n.inbound(&tcp(r, ext, ACK, b""), secs(7439 + 7440)),
        Verdict::Pass
    );
}

#[test]
fn tcp_closes_through_fin_to_the_transitory_timer() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 33000), remote(1, 443));
    let ext = src_of(&forwarded(n.outbound(&tcp(a, r, SYN, b""), secs(0))));
    forwarded(n.inbound(&tcp(r, ext, SYN | ACK, b""), secs(0)));
    forwarded(n.outbound(&tcp(a, r, FIN | ACK, b""), secs(10)));
    assert_eq!(n.bindings()[0].sessions[&r].tcp, Some(TcpState::FinOut));
    forwarded(n.inbound(&tcp(r, ext, FIN | ACK, b""), secs(11)));
    assert_eq!(n.bindings()[0].sessions[&r].tcp, Some(TcpState::Closing));
    assert_eq!(n.bindings()[0].sessions[&r].expires, secs(11 + 240));
    assert_eq!(
        n.bindings()[0].expires,
        secs(10 + 7440),
        "the binding's timer never shrinks"
    );
}

#[test]
fn an_inbound_syn_under_endpoint_independent_filtering_opens_a_session() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r, peer) = (host(2, 33000), remote(1, 443), remote(7, 50000));
    let ext = src_of(&forwarded(n.outbound(&tcp(a, r, SYN, b""), secs(0))));
    // A third party connects to the same public endpoint (TCP hole punching).
    assert_eq!(
        forwarded(n.inbound(&tcp(peer, ext, SYN, b""), secs(1))),
        tcp(peer, a, SYN, b"")
    );
    assert_eq!(n.bindings()[0].sessions[&peer].tcp, Some(TcpState::SynIn));
    forwarded(n.outbound(&tcp(a, peer, SYN | ACK, b""), secs(2)));
    assert_eq!(
        n.bindings()[0].sessions[&peer].tcp,
        Some(TcpState::Established)
    );
}

/// A packet from the public side with a source no remote host can have is left to
/// natgw's ingress filter (which runs after the programs and drops it) without
/// touching state: a spoofed SYN opens no session, a spoofed RST ends none.
#[test]
fn spoofed_public_sources_touch_no_state() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 33000), remote(1, 443));
    let ext = src_of(&forwarded(n.outbound(&tcp(a, r, SYN, b""), secs(0))));
    forwarded(n.inbound(&tcp(r, ext, SYN | ACK, b""), secs(0)));
    forwarded(n.outbound(&tcp(a, r, ACK, b""), secs(0)));
    let before = n.bindings();
    for spoof in [
        "10.0.0.3",
        "0.0.0.5",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        let from = Endpoint::new(spoof.parse().unwrap(), 443);
        for flags in [SYN, RST, ACK] {
            assert_eq!(
                n.inbound(&tcp(from, ext, flags, b""), secs(1)),
                Verdict::Pass
            );
        }
        assert_eq!(n.inbound(&udp(from, ext, b"x"), secs(1)), Verdict::Pass);
    }
    assert_eq!(n.bindings(), before, "no state moved");
    // A remote host's SYN still opens a session (endpoint-independent filtering).
    let peer = remote(7, 50000);
    forwarded(n.inbound(&tcp(peer, ext, SYN, b""), secs(1)));
    assert!(n.bindings()[0].sessions.contains_key(&peer));
}

#[test]
fn icmp_queries_are_mapped_by_identifier() {
    let mut n = nat(Filtering::AddressDependent);
    let (a, r) = (host(2, 0).addr, remote(1, 0).addr);
    let out = forwarded(n.outbound(&echo(a, r, 8, 0x1234, 1), secs(0)));
    let h = Ipv4::parse(&out).unwrap();
    let id = wire::get16(&out, h.header_len + 4);
    assert_eq!(id, 0x1234, "identifier preserved");
    assert_eq!(out, echo(h.src, r, 8, id, 1));
    let back = forwarded(n.inbound(&echo(r, h.src, 0, id, 1), secs(59)));
    assert_eq!(back, echo(r, a, 0, 0x1234, 1));
    // Someone else's reply is filtered; after 60 s idle the mapping is gone.
    let other = remote(9, 0).addr;
    assert_eq!(
        n.inbound(&echo(other, h.src, 0, id, 1), secs(59)),
        Verdict::Drop(DropReason::Filtered)
    );
    assert_eq!(
        n.inbound(&echo(r, h.src, 0, id, 1), secs(60)),
        Verdict::Pass
    );
    // Echo requests to the gateway are the host's own.
    assert_eq!(
        n.inbound(&echo(r, POOL[0], 8, 1, 1), secs(61)),
        Verdict::Pass
    );
}

#[test]
fn fragmentation_needed_reaches_the_private_host_with_its_own_packet_quoted() {
    for quote in [8, 28, 200] {
        let mut n = nat(Filtering::AddressAndPortDependent);
        let (a, r) = (host(2, 40000), remote(1, 4000));
        let original = udp(a, r, &[7u8; 100]);
        let sent = forwarded(n.outbound(&original, secs(0)));
        let ext = src_of(&sent);
        let router = Ipv4Addr::new(192, 0, 2, 254);
        let err = icmp_error(router, ext.addr, 3, 4, &sent, quote);
        let expires = n.bindings()[0].expires;
        let got = forwarded(n.inbound(&err, secs(100)));
        // What the host gets is the error it would get without a NAT.
        assert_eq!(
            got,
            icmp_error(router, a.addr, 3, 4, &original, quote),
            "quote {quote}"
        );
        assert_eq!(n.bindings()[0].expires, expires, "errors refresh nothing");
    }
}

#[test]
fn icmp_errors_about_tcp_and_echo_are_translated_too() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 33000), remote(1, 443));
    let router = Ipv4Addr::new(192, 0, 2, 254);
    let original = tcp(a, r, SYN, b"");
    let sent = forwarded(n.outbound(&original, secs(0)));
    for quote in [8, 20] {
        let got = forwarded(n.inbound(
            &icmp_error(router, src_of(&sent).addr, 11, 0, &sent, quote),
            secs(1),
        ));
        assert_eq!(got, icmp_error(router, a.addr, 11, 0, &original, quote));
    }
    let ping = echo(a.addr, r.addr, 8, 99, 3);
    let sent = forwarded(n.outbound(&ping, secs(0)));
    let ext = Ipv4::parse(&sent).unwrap().src;
    let got = forwarded(n.inbound(&icmp_error(router, ext, 3, 1, &sent, 8), secs(1)));
    assert_eq!(got, icmp_error(router, a.addr, 3, 1, &ping, 8));
}

#[test]
fn icmp_errors_without_a_binding_are_not_translated() {
    let mut n = nat(Filtering::AddressAndPortDependent);
    let router = Ipv4Addr::new(192, 0, 2, 254);
    let stray = udp(Endpoint::new(POOL[0], 40000), remote(1, 53), b"");
    let err = icmp_error(router, POOL[0], 3, 4, &stray, 8);
    assert_eq!(n.inbound(&err, secs(0)), Verdict::Pass);
    // One about a binding, but quoting a destination the host never contacted.
    let a = host(2, 40000);
    let sent = forwarded(n.outbound(&udp(a, remote(1, 53), b""), secs(0)));
    let spoofed = udp(src_of(&sent), remote(2, 53), b"");
    let err = icmp_error(router, src_of(&sent).addr, 3, 4, &spoofed, 8);
    assert_eq!(
        n.inbound(&err, secs(1)),
        Verdict::Drop(DropReason::Filtered)
    );
    assert!(n.bindings().iter().all(|b| b.expires == secs(300)));
}

#[test]
fn a_private_hosts_own_icmp_error_leaves_with_the_public_endpoint() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 40000), remote(1, 53));
    let ext = src_of(&forwarded(n.outbound(&udp(a, r, b""), secs(0))));
    let arrived = udp(r, ext, b"late");
    let delivered = forwarded(n.inbound(&arrived, secs(1)));
    let unreachable = icmp_error(a.addr, r.addr, 3, 3, &delivered, 8);
    let out = forwarded(n.outbound(&unreachable, secs(2)));
    assert_eq!(out, icmp_error(ext.addr, r.addr, 3, 3, &arrived, 8));
    // About a private endpoint without a binding: it must not leak.
    let other = icmp_error(a.addr, r.addr, 3, 3, &udp(r, host(2, 1), b""), 8);
    assert_eq!(
        n.outbound(&other, secs(2)),
        Verdict::Drop(DropReason::NoMapping)
    );
}

/// The gateway's own errors about packets it forwarded to a private host (time
/// exceeded, fragmentation needed for the private link, the host unreachable) quote the
/// host: they leave with the public endpoint quoted instead (so the remote's stack
/// finds its socket), or not at all; the gateway's other traffic is left alone.
#[test]
fn the_gateways_own_icmp_errors_never_quote_a_private_host() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 40000), remote(1, 53));
    let ext = src_of(&forwarded(n.outbound(&udp(a, r, b""), secs(0))));
    let arrived = udp(r, ext, &[0u8; 64]);
    let delivered = forwarded(n.inbound(&arrived, secs(1)));
    for (ty, code) in [(11, 0), (3, 4), (3, 1)] {
        let own = icmp_error(ext.addr, r.addr, ty, code, &delivered, 28);
        let out = forwarded(n.outbound(&own, secs(2)));
        assert_eq!(out, icmp_error(ext.addr, r.addr, ty, code, &arrived, 28));
        assert!(checksums_ok(&out));
    }
    // About a private endpoint without a binding, or quoting too little to translate:
    // dropped.
    let unbound = icmp_error(ext.addr, r.addr, 11, 0, &udp(r, host(2, 1), b""), 8);
    assert_eq!(
        n.outbound(&unbound, secs(2)),
        Verdict::Drop(DropReason::NoMapping)
    );
    let short = icmp_error(ext.addr, r.addr, 11, 0, &delivered, 4);
    assert_eq!(
        n.outbound(&short, secs(2)),
        Verdict::Drop(DropReason::Malformed)
    );
    // Its errors about its own address, and its own datagrams, are its business.
    let own_port = icmp_error(
        ext.addr,
        r.addr,
        3,
        3,
        &udp(r, Endpoint::new(ext.addr, 9), b""),
        8,
    );
    assert_eq!(n.outbound(&own_port, secs(2)), Verdict::Pass);
    let own_udp = udp(Endpoint::new(ext.addr, 9), r, b"x");
    assert_eq!(n.outbound(&own_udp, secs(2)), Verdict::Pass);
    // A redirect it sends about the translated packet (routed back out of the public
    // interface) is dropped; one about public addresses only is its business.
    let redirect = icmp_error(ext.addr, r.addr, 5, 1, &delivered, 28);
    assert_eq!(
        n.outbound(&redirect, secs(2)),
        Verdict::Drop(DropReason::Unsupported)
    );
    let public_redirect = icmp_error(ext.addr, r.addr, 5, 1, &arrived, 28);
    assert_eq!(n.outbound(&public_redirect, secs(2)), Verdict::Pass);
}

/// Record Route collects the private side's addresses (the sender's own on the way
/// out; the gateway's private one on the way in, which an echo reply carries back):
/// a query with IP options is not translated either way, and opens nothing.
#[test]
fn queries_with_ip_options_are_dropped_both_ways() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 40000), remote(1, 53));
    let first = with_record_route(&udp(a, r, b"rr"));
    assert_eq!(
        n.outbound(&first, secs(0)),
        Verdict::Drop(DropReason::Unsupported)
    );
    assert!(n.bindings().is_empty(), "nothing opened");
    let ext = src_of(&forwarded(n.outbound(&udp(a, r, b""), secs(1))));
    let inbound = with_record_route(&udp(r, ext, b"rr"));
    assert_eq!(
        n.inbound(&inbound, secs(2)),
        Verdict::Drop(DropReason::Unsupported)
    );
    let ping = with_record_route(&echo(r.addr, ext.addr, 8, 7, 1));
    assert_eq!(
        n.inbound(&ping, secs(2)),
        Verdict::Pass,
        "the gateway's own"
    );
    // The same without options: translated.
    forwarded(n.inbound(&udp(r, ext, b"rr"), secs(2)));
}

#[test]
fn no_port_left_means_admin_prohibited_back_to_the_sender() {
    let mut n = one_address(2000..=2001);
    forwarded(n.outbound(&udp(host(2, 2000), remote(1, 53), b""), secs(0)));
    forwarded(n.outbound(&udp(host(3, 2000), remote(1, 53), b""), secs(0)));
    let third = udp(host(4, 2000), remote(1, 53), b"x");
    let Verdict::Reject(icmp) = n.outbound(&third, secs(0)) else {
        panic!("expected an ICMP error");
    };
    assert!(checksums_ok(&icmp));
    assert_eq!(Ipv4::parse(&icmp).unwrap().dst, host(4, 0).addr);
    let h = Ipv4::parse(&icmp).unwrap();
    assert_eq!(
        (icmp[h.header_len], icmp[h.header_len + 1]),
        (icmp_type::DEST_UNREACH, 13)
    );
    assert_eq!(h.src, GW);
    assert_eq!(&icmp[h.header_len + 8..], &third[..28]);
    assert_eq!(n.bindings().len(), 2);
    // Once a binding expires its port serves the next host.
    forwarded(n.outbound(&third, secs(300)));
}

/// A translator with one pool address and `ports`.
fn one_address(ports: std::ops::RangeInclusive<u16>) -> Nat {
    let mut c = config(Filtering::EndpointIndependent);
    c.pool = vec![POOL[0]];
    c.ports = ports;
    Nat::new(c).unwrap()
}

/// A flood from a host that gets no port is answered like the kernel answers one peer:
/// a burst of six errors, then one a second (at most six saved up), the rest dropped.
#[test]
fn icmp_errors_for_no_port_are_rate_limited_per_sender() {
    let mut n = one_address(2000..=2000);
    forwarded(n.outbound(&udp(host(2, 2000), remote(1, 53), b""), secs(0)));
    let flood = |n: &mut Nat, h: u8, count: u16, at: Duration| {
        let mut errors = 0u32;
        for i in 0..count {
            match n.outbound(&udp(host(h, 3000 + i), remote(1, 53), b"x"), at) {
                Verdict::Reject(_) => errors += 1,
                Verdict::Drop(DropReason::NoPortQuiet) => {}
                v => panic!("{v:?}"),
            }
        }
        errors
    };
    assert_eq!(flood(&mut n, 4, 100, secs(0)), IcmpLimit::BURST);
    // Another sender has its own bucket.
    assert_eq!(flood(&mut n, 5, 10, secs(0)), IcmpLimit::BURST);
    assert_eq!(flood(&mut n, 4, 100, Duration::from_millis(1500)), 1);
    assert_eq!(flood(&mut n, 4, 100, secs(2)), 1);
    // Ten quiet seconds save up no more than the burst.
    assert_eq!(flood(&mut n, 4, 100, secs(12)), IcmpLimit::BURST);
}

#[test]
fn hairpinning_shows_the_senders_public_endpoint() {
    for mode in [
        Filtering::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    ] {
        let mut n = nat(mode);
        let (a, b) = (host(2, 40000), host(3, 50000));
        let ea = src_of(&forwarded(
            n.outbound(&udp(a, remote(1, 3478), b""), secs(0)),
        ));
        let eb = src_of(&forwarded(
            n.outbound(&udp(b, remote(1, 3478), b""), secs(0)),
        ));
        let v = n.outbound(&udp(b, ea, b"hi"), secs(1));
        if mode == Filtering::AddressAndPortDependent {
            // a never sent to b's public endpoint.
            assert_eq!(v, Verdict::Drop(DropReason::Filtered));
            // b already sent to a's public endpoint, so a's answer is admitted.
            let v = n.outbound(&udp(a, eb, b""), secs(1));
            assert_eq!(v, Verdict::Hairpin(udp(ea, b, b"")));
        } else {
            let Verdict::Hairpin(p) = v else {
                panic!("{mode:?}: {v:?}")
            };
            assert_eq!(p, udp(eb, a, b"hi"));
        }
        let Verdict::Hairpin(p) = n.outbound(&udp(b, ea, b"hi"), secs(2)) else {
            panic!()
        };
        assert_eq!(p, udp(eb, a, b"hi"));
    }
}

/// The packet as [`reassemble`] gives it back (fragments cannot carry DF).
fn no_df(mut p: Vec<u8>) -> Vec<u8> {
    wire::put16(&mut p, wire::ip::FRAG, 0);
    wire::fill_checksums(&mut p).unwrap();
    p
}

#[test]
fn later_fragments_follow_the_first_and_out_of_order_ones_are_dropped() {
    let mut n = nat(Filtering::EndpointIndependent);
    let (a, r) = (host(2, 40000), remote(1, 4000));
    let whole = udp(a, r, &[5u8; 64]);
    let (first, second) = fragment(&whole, 32);
    // The second piece alone, first: nothing to go by, dropped (not buffered).
    assert_eq!(
        n.outbound(&second, secs(0)),
        Verdict::Drop(DropReason::FragmentWithoutFirst)
    );
    let f1 = forwarded(n.outbound(&first, secs(0)));
    let f2 = forwarded(n.outbound(&second, secs(0)));
    let ext = src_of(&f1);
    assert_eq!(reassemble(&f1, &f2), no_df(udp(ext, r, &[5u8; 64])));
    // Coming back in pieces.
    let (r1, r2) = fragment(&udp(r, ext, &[6u8; 48]), 24);
    assert_eq!(
        n.inbound(&r2, secs(1)),
        Verdict::Pass,
        "unknown later fragment: the host's"
    );
    let g1 = forwarded(n.inbound(&r1, secs(1)));
    let g2 = forwarded(n.inbound(&r2, secs(1)));
    assert_eq!(reassemble(&g1, &g2), no_df(udp(r, a, &[6u8; 48])));
    // The fragment state ends with the reassembly timeout.
    assert_eq!(
        n.outbound(&second, secs(31)),
        Verdict::Drop(DropReason::FragmentWithoutFirst)
    );
}

#[test]
fn a_wrong_checksum_is_carried_not_repaired() {
    let mut n = nat(Filtering::EndpointIndependent);
    let mut p = udp(host(2, 1), remote(1, 53), b"abc");
    p[27] ^= 0x55;
    let Verdict::Forward(out) = n.outbound(&p, secs(0)) else {
        panic!()
    };
    assert!(!checksums_ok(&out));
}

#[test]
fn proto_views_report_bindings() {
    let mut n = nat(Filtering::EndpointIndependent);
    forwarded(n.outbound(&udp(host(2, 1), remote(1, 53), b""), secs(0)));
    let b = &n.bindings()[0];
    assert_eq!((b.proto, b.internal), (Proto::Udp, host(2, 1)));
    assert_eq!(n.external(Proto::Udp, host(2, 1)), Some(b.external));
}

/// What a private host sends to the gateway's own public address without a binding
/// there is the host's (delivered locally), whatever its protocol or fragmentation.
#[test]
fn traffic_for_the_gateways_own_address_is_left_to_the_host() {
    let mut n = nat(Filtering::EndpointIndependent);
    let a = host(2, 40000);
    let own = Endpoint::new(POOL[0], 22);
    assert_eq!(n.outbound(&tcp(a, own, SYN, b""), secs(0)), Verdict::Pass);
    assert_eq!(
        n.outbound(&echo(a.addr, POOL[0], 8, 7, 1), secs(0)),
        Verdict::Pass
    );
    let mut gre = udp(a, own, b"");
    gre[9] = 47;
    wire::fill_checksums(&mut gre).unwrap();
    assert_eq!(n.outbound(&gre, secs(0)), Verdict::Pass);
    let (first, second) = fragment(&udp(a, own, &[1u8; 64]), 32);
    assert_eq!(n.outbound(&first, secs(0)), Verdict::Pass);
    assert_eq!(n.outbound(&second, secs(0)), Verdict::Pass);
    assert!(n.bindings().is_empty());
    // The same to a remote address is not carried.
    gre[16..20].copy_from_slice(&remote(1, 0).addr.octets());
    wire::fill_checksums(&mut gre).unwrap();
    assert_eq!(
        n.outbound(&gre, secs(0)),
        Verdict::Drop(DropReason::Unsupported)
    );
}
