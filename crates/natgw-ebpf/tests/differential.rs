//! Differential tests: the same packets, at the same instants, through the reference
//! model (natgw-nat) and through the loaded eBPF programs (BPF_PROG_TEST_RUN). Verdicts
//! and every byte (so every checksum) must agree.
//!
//! The corpus is what the programs claim to implement (see the crate docs): UDP, TCP
//! and ICMP echo both ways, unsolicited and filtered inbound, TCP SYN/FIN/RST
//! sequences, port exhaustion, clock jumps across every timer, ICMP errors both ways
//! (quotes of 8 to 28 bytes, about strangers and unbound endpoints), fragmented
//! datagrams both ways (in order, reversed, the second piece alone), and edge cases
//! (truncated headers, foreign sources, other protocols). Hairpins are not in it: the
//! programs do not implement them yet.
//!
//! Needs root (loading programs); skips with a message otherwise, but never under CI.

mod common;
use common::root_or_skip;

use std::net::Ipv4Addr;
use std::time::Duration;

use natgw_ebpf::plane::{TC_ACT_OK, TC_ACT_SHOT};
use natgw_ebpf::{Plane, Side};
use natgw_nat::packet::{
    echo, fragment, icmp_error, private_host as host, remote_host as remote, tcp, udp,
};
use natgw_nat::wire::{checksums_ok, tcp_flags::*};
use natgw_nat::{Config, Endpoint, Filtering, Nat, Proto, Timeouts, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngSeed};

const MARK: u32 = 0x4e47_0001;
const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
const HOST_PORTS: [u16; 4] = [1000, 1001, 5000, 40000];
const REMOTE_PORTS: [u16; 3] = [53, 3478, 3479];
const STEPS: [u64; 9] = [0, 0, 1, 30, 59, 119, 200, 299, 7500];

fn config(filtering: Filtering, ports: std::ops::RangeInclusive<u16>) -> Config {
    Config {
        private: vec!["10.0.0.0/24".parse().unwrap()],
        pool: POOL.to_vec(),
        ports,
        filtering,
        timeouts: Timeouts::default(),
        icmp_source: Ipv4Addr::new(10, 0, 0, 1),
    }
}

fn frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

/// The model and the programs, side by side.
struct Pair {
    nat: Nat,
    plane: Plane,
    now: Duration,
    /// (direction, outcome) counts, to show the corpus is not vacuous.
    seen: std::collections::BTreeMap<String, usize>,
}

impl Pair {
    fn new(cfg: Config) -> Self {
        let plane = Plane::load(&cfg, MARK).unwrap_or_else(|e| panic!("{}", chain(&e)));
        Self {
            nat: Nat::new(cfg).unwrap(),
            plane,
            now: Duration::ZERO,
            seen: Default::default(),
        }
    }

    /// One packet through both; panics on any disagreement.
    fn packet(&mut self, side: Side, ip: &[u8]) {
        self.plane.set_clock(self.now).unwrap();
        let before = self.plane.counters().unwrap()["drop_no_port"];
        let got = self.plane.run(side, &frame(ip)).unwrap();
        let want = match side {
            Side::Egress => self.nat.outbound(ip, self.now),
            Side::Ingress => self.nat.inbound(ip, self.now),
        };
        let ctx = || {
            format!(
                "{side:?} at {:?}: {ip:02x?}\nmodel: {want:?}\nebpf: {got:?}",
                self.now
            )
        };
        let outcome = match &want {
            Verdict::Forward(bytes) => {
                assert!(checksums_ok(bytes), "{}", ctx());
                assert_eq!(got.verdict, TC_ACT_OK, "{}", ctx());
                assert_eq!(got.data, frame(bytes), "{}", ctx());
                let mark = if side == Side::Ingress { MARK } else { 0 };
                assert_eq!(got.mark, mark, "{}", ctx());
                "forward"
            }
            Verdict::Pass => {
                assert_eq!(got.verdict, TC_ACT_OK, "{}", ctx());
                assert_eq!(got.data, frame(ip), "{}", ctx());
                assert_eq!(got.mark, 0, "{}", ctx());
                "pass"
            }
            Verdict::Drop(_) => {
                assert_eq!(got.verdict, TC_ACT_SHOT, "{}", ctx());
                "drop"
            }
            Verdict::Reject(_) => {
                // The model answers ICMP 3/13; the programs drop and count it.
                assert_eq!(got.verdict, TC_ACT_SHOT, "{}", ctx());
                let after = self.plane.counters().unwrap()["drop_no_port"];
                assert_eq!(after, before + 1, "{}", ctx());
                "no port"
            }
            Verdict::Hairpin(_) => panic!("no hairpins in this corpus: {}", ctx()),
        };
        *self.seen.entry(format!("{side:?} {outcome}")).or_default() += 1;
        if natgw_nat::wire::Ipv4::parse(ip).is_ok_and(|h| h.is_later_fragment()) {
            *self
                .seen
                .entry(format!("{side:?} {outcome} (later fragment)"))
                .or_default() += 1;
        }
        let is_error = ip.len() > 20 && ip[9] == 1 && natgw_nat::wire::icmp_type::is_error(ip[20]);
        if is_error {
            *self
                .seen
                .entry(format!("{side:?} {outcome} (ICMP error)"))
                .or_default() += 1;
        }
    }

    fn live(&self, pick: usize) -> Option<natgw_nat::BindingView> {
        let b = self.nat.bindings();
        (!b.is_empty()).then(|| b[pick % b.len()].clone())
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s += &format!(": {x}");
        src = x.source();
    }
    s
}

fn packet(proto: u8, src: Endpoint, dst: Endpoint, flags: u8, request: bool) -> Vec<u8> {
    match proto % 3 {
        0 => udp(src, dst, b"data"),
        1 => tcp(src, dst, flags, b""),
        _ if request => echo(src.addr, dst.addr, 8, src.port, 1),
        _ => echo(src.addr, dst.addr, 0, dst.port, 1),
    }
}

#[derive(Debug, Clone)]
enum Event {
    Out {
        host: u8,
        port: usize,
        remote: u8,
        rport: usize,
        proto: u8,
        flags: u8,
    },
    /// From a remote to a public endpoint: a live binding's (`pick`) or any.
    In {
        remote: u8,
        rport: usize,
        pick: Option<usize>,
        pool: usize,
        port: u16,
        proto: u8,
        flags: u8,
    },
    /// A remote a binding has a session with answers.
    Reply {
        pick: usize,
        flags: u8,
    },
    Edge(u8, u8),
    /// A router reports an error about a binding's traffic (`stranger`: about a remote
    /// it never contacted, or `unbound`: about a public endpoint without a binding).
    ErrorIn {
        pick: usize,
        ty: u8,
        quote: usize,
        stranger: bool,
        unbound: bool,
    },
    /// A private host reports an error about a packet it received (`unbound`: about an
    /// endpoint without a binding).
    ErrorOut {
        pick: usize,
        quote: usize,
        unbound: bool,
    },
    /// A datagram in two fragments, from a private host (`out`) or, to a live
    /// binding, from a remote it talks to; `order`: 0 in order, 1 reversed, 2 only the
    /// second.
    Fragments {
        out: bool,
        host: u8,
        pick: usize,
        proto: u8,
        split: usize,
        order: u8,
    },
    Wait(usize),
}

/// How much of the offending packet an error quotes after its IPv4 header.
const QUOTES: [usize; 4] = [8, 12, 20, 28];

fn flags() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![SYN, SYN, SYN | ACK, ACK, FIN | ACK, RST, RST | ACK])
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (2..7u8, 0..4usize, 1..4u8, 0..3usize, 0..3u8, flags())
            .prop_map(|(host, port, remote, rport, proto, flags)| Event::Out { host, port, remote, rport, proto, flags }),
        3 => (1..4u8, 0..3usize, prop::option::of(any::<usize>()), 0..2usize, 998..1006u16, 0..3u8, flags())
            .prop_map(|(remote, rport, pick, pool, port, proto, flags)| Event::In { remote, rport, pick, pool, port, proto, flags }),
        4 => (any::<usize>(), flags()).prop_map(|(pick, flags)| Event::Reply { pick, flags }),
        1 => (0..6u8, 2..7u8).prop_map(|(k, h)| Event::Edge(k, h)),
        2 => (any::<usize>(), prop::sample::select(vec![3u8, 11, 12]), 0..QUOTES.len(), prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(pick, ty, quote, stranger, unbound)| Event::ErrorIn { pick, ty, quote, stranger, unbound }),
        2 => (any::<bool>(), 2..7u8, any::<usize>(), 0..3u8, 0..2usize, prop::sample::select(vec![0u8, 0, 1, 2]))
            .prop_map(|(out, host, pick, proto, split, order)| Event::Fragments { out, host, pick, proto, split, order }),
        1 => (any::<usize>(), 0..QUOTES.len(), prop::bool::weighted(0.2))
            .prop_map(|(pick, quote, unbound)| Event::ErrorOut { pick, quote, unbound }),
        2 => (0..STEPS.len()).prop_map(Event::Wait),
    ]
}

fn step(p: &mut Pair, e: &Event) {
    match *e {
        Event::Wait(i) => p.now += Duration::from_secs(STEPS[i]),
        Event::Out {
            host: h,
            port,
            remote: r,
            rport,
            proto,
            flags,
        } => {
            let icmp = proto % 3 == 2;
            let dst = remote(r, if icmp { 0 } else { REMOTE_PORTS[rport] });
            p.packet(
                Side::Egress,
                &packet(proto, host(h, HOST_PORTS[port]), dst, flags, true),
            );
        }
        Event::In {
            remote: r,
            rport,
            pick,
            pool,
            port,
            proto,
            flags,
        } => {
            let (proto, to) = match pick.and_then(|i| p.live(i)) {
                Some(b) => (b.proto, b.external),
                None => (proto_of(proto), Endpoint::new(POOL[pool], port)),
            };
            let from = remote(
                r,
                if proto == Proto::Icmp {
                    0
                } else {
                    REMOTE_PORTS[rport]
                },
            );
            p.packet(Side::Ingress, &packet(code(proto), from, to, flags, false));
        }
        Event::Reply { pick, flags } => {
            let Some(b) = p.live(pick) else { return };
            let Some(r) = b.sessions.keys().next_back().copied() else {
                return;
            };
            p.packet(
                Side::Ingress,
                &packet(code(b.proto), r, b.external, flags, false),
            );
        }
        Event::ErrorIn {
            pick,
            ty,
            quote,
            stranger,
            unbound,
        } => {
            let Some(b) = p.live(pick) else { return };
            let Some(mut r) = b.sessions.keys().next_back().copied() else {
                return;
            };
            if stranger {
                r = remote(9, r.port);
            }
            let mut ext = b.external;
            if unbound {
                ext.port = ext.port.wrapping_add(7);
            }
            let sent = packet(code(b.proto), ext, r, SYN, true);
            let router = Ipv4Addr::new(192, 0, 2, 254);
            let code = if ty == 3 { 4 } else { 0 };
            let err = icmp_error(router, ext.addr, ty, code, &sent, QUOTES[quote]);
            p.packet(Side::Ingress, &err);
        }
        Event::ErrorOut {
            pick,
            quote,
            unbound,
        } => {
            let Some(b) = p.live(pick) else { return };
            let Some(r) = b.sessions.keys().next_back().copied() else {
                return;
            };
            let mut internal = b.internal;
            if unbound {
                internal.port = internal.port.wrapping_add(7);
            }
            let received = packet(code(b.proto), r, internal, ACK, false);
            let ty = if b.proto == Proto::Icmp { 11 } else { 3 };
            let err = icmp_error(internal.addr, r.addr, ty, 3, &received, QUOTES[quote]);
            p.packet(Side::Egress, &err);
        }
        Event::Fragments {
            out,
            host: h,
            pick,
            proto,
            split,
            order,
        } => {
            let (proto, src, dst) = if out {
                let proto = proto_of(proto);
                let icmp = proto == Proto::Icmp;
                let dst = remote(1 + (pick % 3) as u8, if icmp { 0 } else { 53 });
                (proto, host(h, HOST_PORTS[pick % 4]), dst)
            } else {
                let Some(b) = p.live(pick) else { return };
                let Some(r) = b.sessions.keys().next_back().copied() else {
                    return;
                };
                (b.proto, r, b.external)
            };
            let whole = match proto {
                Proto::Udp => udp(src, dst, &[0x5a; 40]),
                Proto::Tcp => tcp(src, dst, SYN, &[0x5a; 40]),
                Proto::Icmp if out => echo(src.addr, dst.addr, 8, src.port, 9),
                Proto::Icmp => echo(src.addr, dst.addr, 0, dst.port, 9),
            };
            let at = match proto {
                Proto::Udp => [16, 24][split],
                Proto::Tcp => [24, 32][split],
                Proto::Icmp => 8,
            };
            let (first, second) = fragment(&whole, at);
            let side = if out { Side::Egress } else { Side::Ingress };
            match order {
                0 => {
                    p.packet(side, &first);
                    p.packet(side, &second);
                }
                1 => {
                    p.packet(side, &second);
                    p.packet(side, &first);
                }
                _ => p.packet(side, &second),
            }
        }
        Event::Edge(kind, h) => {
            let a = host(h, 5000);
            let r = remote(1, 53);
            let ip = match kind {
                // A UDP header cut short (total length says so too).
                0 => {
                    let mut u = udp(a, r, b"");
                    u.truncate(24);
                    u[3] = 24;
                    fix_ip_checksum(&mut u);
                    u
                }
                // The gateway's own traffic.
                1 => udp(Endpoint::new(POOL[0], 5000), r, b"own"),
                // GRE from a private host.
                2 => {
                    let mut g = udp(a, r, b"");
                    g[9] = 47;
                    fix_ip_checksum(&mut g);
                    g
                }
                // An ICMP timestamp request (not a query the translator maps).
                3 => {
                    let mut t = echo(a.addr, r.addr, 13, 1, 1);
                    natgw_nat::wire::fill_checksums(&mut t).unwrap();
                    t
                }
                // A ping to the gateway itself, from outside.
                4 => {
                    let ping = echo(r.addr, POOL[1], 8, 7, 1);
                    p.packet(Side::Ingress, &ping);
                    return;
                }
                // Not IPv4 at all (version 6 in an IPv4 frame).
                _ => {
                    let mut v = udp(a, r, b"");
                    v[0] = 0x65;
                    v
                }
            };
            p.packet(Side::Egress, &ip);
        }
    }
}

fn fix_ip_checksum(p: &mut [u8]) {
    use natgw_nat::wire::{checksum, ip, put16};
    put16(p, ip::CHECKSUM, 0);
    let c = checksum(&p[..20], 0);
    put16(p, ip::CHECKSUM, c);
}

fn proto_of(i: u8) -> Proto {
    Proto::ALL[usize::from(i % 3)]
}

fn code(p: Proto) -> u8 {
    match p {
        Proto::Udp => 0,
        Proto::Tcp => 1,
        Proto::Icmp => 2,
    }
}

fn run(filtering: Filtering, ports: std::ops::RangeInclusive<u16>, events: &[Event]) -> Pair {
    let mut p = Pair::new(config(filtering, ports));
    for e in events {
        step(&mut p, e);
    }
    p
}

fn prop_config(seed: u64) -> PropConfig {
    PropConfig {
        cases: 6,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..PropConfig::default()
    }
}

proptest! {
    #![proptest_config(prop_config(0x6562_7066_0001))]
    #[test]
    fn endpoint_independent(events in prop::collection::vec(event(), 300..400)) {
        if root_or_skip("endpoint_independent") {
            run(Filtering::EndpointIndependent, 1000..=1003, &events);
        }
    }
}

proptest! {
    #![proptest_config(prop_config(0x6562_7066_0002))]
    #[test]
    fn address_dependent(events in prop::collection::vec(event(), 300..400)) {
        if root_or_skip("address_dependent") {
            run(Filtering::AddressDependent, 1000..=1003, &events);
        }
    }
}

proptest! {
    #![proptest_config(prop_config(0x6562_7066_0003))]
    #[test]
    fn address_and_port_dependent(events in prop::collection::vec(event(), 300..400)) {
        if root_or_skip("address_and_port_dependent") {
            run(Filtering::AddressAndPortDependent, 1000..=1003, &events);
        }
    }
}

proptest! {
    #![proptest_config(prop_config(0x6562_7066_0004))]
    #[test]
    fn wide_port_range(events in prop::collection::vec(event(), 300..400)) {
        if root_or_skip("wide_port_range") {
            run(Filtering::EndpointIndependent, 1024..=65535, &events);
        }
    }
}

/// The corpus reaches every outcome on both sides, and the programs count them.
#[test]
fn the_corpus_is_not_vacuous() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    if !root_or_skip("the_corpus_is_not_vacuous") {
        return;
    }
    let mut runner = TestRunner::new(prop_config(7));
    let events = prop::collection::vec(event(), 800)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let p = run(Filtering::AddressAndPortDependent, 1000..=1003, &events);
    for wanted in [
        "Egress forward (ICMP error)",
        "Egress drop (ICMP error)",
        "Ingress forward (ICMP error)",
        "Ingress pass (ICMP error)",
        "Egress forward (later fragment)",
        "Egress drop (later fragment)",
        "Ingress forward (later fragment)",
        "Ingress pass (later fragment)",
        "Egress forward",
        "Egress drop",
        "Egress pass",
        "Egress no port",
        "Ingress forward",
        "Ingress pass",
        "Ingress drop",
    ] {
        assert!(
            p.seen.get(wanted).is_some_and(|n| *n > 0),
            "never saw {wanted}: {:?}",
            p.seen
        );
    }
    let c = p.plane.counters().unwrap();
    eprintln!("outcomes: {:?}\ncounters: {c:?}", p.seen);
    for k in [
        "out_translated",
        "in_translated",
        "drop_filtered",
        "drop_no_port",
        "drop_malformed",
        "drop_unsupported",
        "bindings_created",
        "bindings_expired",
    ] {
        assert!(c[k] > 0, "counter {k} never moved: {c:?}");
    }
    assert_eq!(c["out_translated"], p.seen["Egress forward"] as u64);
    assert_eq!(c["in_translated"], p.seen["Ingress forward"] as u64);
}
