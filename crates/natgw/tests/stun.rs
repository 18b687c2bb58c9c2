//! End-to-end STUN scenarios in namespaces: natgw's server under abuse, and natgw's
//! server and probe against the other implementations Debian ships (coturn's server and
//! clients, the classic RFC 3489 client `stun` from the stun-client package), each
//! classifying natgw's gateway the same way.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;

use common::*;
use natgw_lab::{Lab, Spec};
use natgw_probe::wire::{AttrRepr, Repr};

const PRIMARY: &str = "198.51.100.10:3478";

/// natgw's STUN server on the public host's two addresses, counters in its log.
fn stun_server(lab: &Lab, extra: &[&str]) -> Service {
    let mut args = vec![
        "stun-server",
        "--listen",
        "198.51.100.10",
        "--alt",
        "198.51.100.11",
    ];
    args.extend_from_slice(extra);
    let server = Service::natgw_in(lab, "pub", &args);
    wait_for(|| server.log().contains("listening on"));
    server
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counters the server printed when it stopped (SIGTERM), by name.
fn final_stats(server: Service) -> HashMap<String, u64> {
    let (code, log) = server.stop_with_log();
    assert_eq!(code, Some(0), "stun-server exit: {log}");
    let line = log
        .lines()
        .find(|l| l.contains("stopped; stats:"))
        .unwrap_or_else(|| panic!("no final stats in: {log}"));
    line.split("stats: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn binding_request(attributes: Vec<AttrRepr>) -> Vec<u8> {
    Repr {
        attributes,
        ..Repr::binding_request([0x46; 12])
    }
    .emit(false)
    .unwrap()
}

/// Sends Binding requests from `ns` to the server as fast as one socket can for
/// `duration`; returns (sent, answers received).
fn flood(ns: &str, duration: Duration) -> (u64, u64) {
    natgw_lab::in_netns(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(PRIMARY).unwrap();
        socket.set_nonblocking(true).unwrap();
        let request = binding_request(vec![]);
        let (mut sent, mut answers) = (0u64, 0u64);
        let mut buf = [0u8; 256];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            for _ in 0..64 {
                if socket.send(&request).is_ok() {
                    sent += 1;
                }
            }
            while socket.recv(&mut buf).is_ok() {
                answers += 1;
            }
        }
        // Late answers still count.
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while socket.recv(&mut buf).is_ok() {
            answers += 1;
        }
        (sent, answers)
    })
    .unwrap()
}

#[test]
fn a_flood_from_one_source_leaves_others_answered_and_every_drop_is_counted() {
    let Some(lab) = lab_or_skip(
        "a_flood_from_one_source_leaves_others_answered_and_every_drop_is_counted",
        Spec::nodes(1),
    ) else {
        return;
    };
    let server = stun_server(&lab, &["--rate-limit", "50", "--stats", "1"]);
    let flood_ns = lab.ns("head");
    let flooder = std::thread::spawn(move || flood(&flood_ns, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(500));
    // A second source (the public host itself) runs a whole discovery meanwhile.
    let (out, report) = probe_json(&lab, "pub", &["--stun", PRIMARY]);
    assert_exit(&out, 0);
    assert_eq!(report["stun"]["behaviour"]["mapping"], "no-nat", "{report}");
    let (sent, answers) = flooder.join().unwrap();
    eprintln!("flood: {sent} requests in 3 s from one source, {answers} answers");
    // The flooder gets its burst and its rate, never one answer per request.
    let bound = 100 + 50 * 4;
    assert!(
        sent > 10 * bound,
        "the flood was too weak to mean anything: {sent}"
    );
    assert!(
        (50..=bound).contains(&answers),
        "{answers} answers to {sent} flood requests"
    );

    // Malformed, oversized and hostile requests, once the flooder's bucket has refilled.
    std::thread::sleep(Duration::from_millis(500));
    let garbage_ns = lab.ns("head");
    natgw_lab::in_netns(&garbage_ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut bad_length = binding_request(vec![]);
        bad_length[3] = 8; // says 8 bytes of attributes, carries none
        s.send_to(&bad_length, PRIMARY).unwrap();
        s.send_to(b"\x00\x01 not stun at all", PRIMARY).unwrap();
        // 3000 bytes: a well-formed request padded past what the server accepts,
        // longer than its receive buffer too.
        let huge = binding_request(vec![AttrRepr::Other {
            kind: natgw_probe::wire::attr::PADDING,
            value: vec![0; 2976],
        }]);
        s.send_to(&huge, PRIMARY).unwrap();
        // Replies aimed at the echo service of the requester's address.
        s.send_to(&binding_request(vec![AttrRepr::ResponsePort(7)]), PRIMARY)
            .unwrap();
        // Eight redirections at once: a burst of five passes, three wait.
        for _ in 0..8 {
            s.send_to(
                &binding_request(vec![AttrRepr::ResponsePort(40000)]),
                PRIMARY,
            )
            .unwrap();
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // --stats 1 printed the counters while it ran, too.
    assert!(
        server.log().contains("\nstats: received="),
        "{}",
        server.log()
    );
    let stats = final_stats(server);
    eprintln!("server counters: {stats:?}");
    assert!(stats["rate_limited"] > sent / 2, "{stats:?}");
    assert_eq!(stats["oversized"], 1, "{stats:?}");
    assert_eq!(stats["malformed"], 2, "{stats:?}");
    assert_eq!(stats["response_port_refused"], 1, "{stats:?}");
    assert_eq!(stats["response_port_limited"], 3, "{stats:?}");
    assert!(stats["answered"] <= bound + 100, "{stats:?}");
}

/// `natgw probe --classic` from n1: (mapping, filtering, RFC 3489 type).
fn classic_probe(lab: &Lab) -> (String, String, String) {
    // The filtering and hairpinning tests wait out a timeout each: keep it short.
    let (out, report) = probe_json(
        lab,
        "n1",
        &["--classic", "--timeout", "1", "--stun", PRIMARY],
    );
    assert_exit(&out, 0);
    let b = &report["stun"]["behaviour"];
    let field = |k: &str| {
        b[k].as_str()
            .unwrap_or_else(|| panic!("{report}"))
            .to_string()
    };
    (field("mapping"), field("filtering"), field("classic_type"))
}

#[test]
fn classic_rfc3489_clients_and_natgw_agree_on_the_gateway_against_both_servers() {
    let Some(lab) = lab_or_skip(
        "classic_rfc3489_clients_and_natgw_agree_on_the_gateway_against_both_servers",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let kernel_nat = (
        "endpoint-independent".to_string(),
        "address-and-port-dependent".to_string(),
        "port-restricted-cone".to_string(),
    );
    {
        let server = stun_server(&lab, &[]);
        assert_eq!(
            classic_client(&lab, "n1"),
            "Primary: Independent Mapping, Port Dependent Filter, preserves ports, no hairpin"
        );
        assert_eq!(classic_probe(&lab), kernel_nat);
        let stats = final_stats(server);
        assert_eq!(stats["malformed"] + stats["rate_limited"], 0, "{stats:?}");
    }
    {
        let _coturn = coturn(&lab);
        assert_eq!(
            classic_client(&lab, "n1"),
            "Primary: Independent Mapping, Port Dependent Filter, preserves ports, no hairpin"
        );
        assert_eq!(classic_probe(&lab), kernel_nat);
    }
    // A NAT that maps every flow to a fresh random port is "symmetric" to everyone.
    foreign_snat(&lab, "scramble", "udp", "203.0.113.1:1024-65535 random");
    let _server = stun_server(&lab, &[]);
    let verdict = classic_client(&lab, "n1");
    assert!(verdict.contains("Dependent Mapping"), "{verdict}");
    let (mapping, _, classic) = classic_probe(&lab);
    assert_eq!(
        (mapping.as_str(), classic.as_str()),
        ("address-and-port-dependent", "symmetric")
    );
}

/// `natgw probe --json --stun PRIMARY EXTRA` from n1, which must succeed.
fn probe_from_n1(lab: &Lab, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--stun", PRIMARY];
    args.extend_from_slice(extra);
    let (out, report) = probe_json(lab, "n1", &args);
    assert_exit(&out, 0);
    report
}

fn requirement<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["stun"]["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {report}"))
}

#[test]
fn tcp_through_natgws_gateway_is_endpoint_independent_and_a_random_port_rule_is_not() {
    let Some(lab) = lab_or_skip(
        "tcp_through_natgws_gateway_is_endpoint_independent_and_a_random_port_rule_is_not",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let server = stun_server(&lab, &[]);
    let report = probe_from_n1(&lab, &["--tcp-lifetime", "3"]);
    let tcp = &report["stun"]["behaviour"]["tcp"];
    assert_eq!(tcp["mapping"], "endpoint-independent", "{report}");
    assert_eq!(tcp["port_preserved"], true, "{report}");
    assert!(tcp["mapped"].as_str().unwrap().starts_with("203.0.113.1:"));
    assert_eq!(tcp["lifetime"]["alive"], true, "{report}");
    assert_eq!(tcp["lifetime"]["server_first"], true, "{report}");
    assert_eq!(requirement(&report, "RFC 5382 REQ-1")["met"], true);
    // Three seconds say nothing about 2 h 4 min: not claimed either way.
    let req5 = requirement(&report, "RFC 5382 REQ-5");
    assert_eq!(req5["met"], serde_json::Value::Null, "{req5}");
    assert!(
        req5["observed"]
            .as_str()
            .unwrap()
            .contains("alive after 3 s idle"),
        "{req5}"
    );

    foreign_snat(&lab, "scramble", "tcp", "203.0.113.1:1024-65535 random");
    let report = probe_from_n1(&lab, &[]);
    let tcp = &report["stun"]["behaviour"]["tcp"];
    assert_eq!(tcp["mapping"], "address-and-port-dependent", "{report}");
    assert_eq!(requirement(&report, "RFC 5382 REQ-1")["met"], false);
    // UDP is untouched by the TCP rule.
    assert_eq!(
        report["stun"]["behaviour"]["mapping"],
        "endpoint-independent"
    );
    let stats = final_stats(server);
    assert!(stats["tcp_accepted"] >= 6, "{stats:?}");
}

/// The classic recipe by hand (no natgw, so the kernel's timeouts), with the conntrack
/// timeout `sysctl` shortened to `secs`.
fn classic_recipe(lab: &Lab, sysctl: &str, secs: &str) {
    foreign_snat(lab, "recipe_udp", "udp", "203.0.113.1");
    foreign_snat(lab, "recipe_tcp", "tcp", "203.0.113.1");
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    lab.sysctl("head", sysctl, secs).unwrap();
}

#[test]
fn udp_lifetime_runs_beside_the_other_tests_and_sees_a_short_timeout() {
    let Some(lab) = lab_or_skip(
        "udp_lifetime_runs_beside_the_other_tests_and_sees_a_short_timeout",
        Spec::nodes(1),
    ) else {
        return;
    };
    // 3 s: idle 2 s survives by a second, idle 4 s does not.
    classic_recipe(&lab, "net.netfilter.nf_conntrack_udp_timeout", "3");
    lab.sysctl("head", "net.netfilter.nf_conntrack_udp_timeout_stream", "3")
        .unwrap();
    let _server = stun_server(&lab, &[]);
    let started = Instant::now();
    let report = probe_from_n1(&lab, &["--lifetime", "8"]);
    let lifetime = &report["stun"]["behaviour"]["lifetime"];
    assert_eq!(lifetime["alive_after_secs"], 2, "{report}");
    assert_eq!(lifetime["expired_after_secs"], 4, "{report}");
    assert_eq!(requirement(&report, "RFC 4787 REQ-5")["met"], false);
    // Idle periods of 1, 2 and 4 s one after another would take 7 s and more.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn tcp_lifetime_sees_a_nat_that_forgets_idle_connections() {
    let Some(lab) = lab_or_skip(
        "tcp_lifetime_sees_a_nat_that_forgets_idle_connections",
        Spec::nodes(1),
    ) else {
        return;
    };
    classic_recipe(
        &lab,
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "2",
    );
    let _server = stun_server(&lab, &[]);
    let report = probe_from_n1(&lab, &["--tcp-lifetime", "5"]);
    let lifetime = &report["stun"]["behaviour"]["tcp"]["lifetime"];
    assert_eq!(lifetime["alive"], false, "{report}");
    assert_eq!(lifetime["server_first"], true, "{report}");
    let req5 = requirement(&report, "RFC 5382 REQ-5");
    assert_eq!(req5["met"], false, "{req5}");
    assert!(
        req5["observed"]
            .as_str()
            .unwrap()
            .contains("gone after 5 s idle"),
        "{req5}"
    );
}

#[test]
fn tcp_connections_are_bounded_per_source_and_bad_streams_are_cut() {
    let Some(lab) = lab_or_skip(
        "tcp_connections_are_bounded_per_source_and_bad_streams_are_cut",
        Spec::nodes(1),
    ) else {
        return;
    };
    let server = stun_server(&lab, &[]);
    let head = lab.ns("head");
    let (held, cut) = natgw_lab::in_netns(&head, || {
        use std::io::{Read, Write};
        use std::net::TcpStream;
        let connect = || TcpStream::connect(PRIMARY).unwrap();
        // One source holds ten connections: the server keeps eight.
        let held: Vec<TcpStream> = (0..10).map(|_| connect()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let open = held
            .iter()
            .filter(|s| {
                let mut s = *s;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                // A refused connection reads EOF at once; a held one times out.
                !matches!(s.read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        drop(held);
        std::thread::sleep(Duration::from_millis(300));
        // A stream that announces more than the server accepts is closed, unanswered.
        let mut s = connect();
        let mut header = binding_request(vec![]);
        header[2..4].copy_from_slice(&4000u16.to_be_bytes());
        s.write_all(&header).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let cut = matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_));
        (open, cut)
    })
    .unwrap();
    assert_eq!(held, 8);
    assert!(cut);
    // Another source is still served over TCP meanwhile.
    let report = probe_json(&lab, "pub", &["--stun", PRIMARY]).1;
    assert_eq!(
        report["stun"]["behaviour"]["tcp"]["mapping"], "no-nat",
        "{report}"
    );
    let stats = final_stats(server);
    assert_eq!(stats["tcp_refused"], 2, "{stats:?}");
    assert_eq!(stats["oversized"], 1, "{stats:?}");
}
