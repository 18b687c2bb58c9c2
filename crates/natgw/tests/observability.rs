//! End-to-end scenarios for what natgw shows about its translations: `natgw run
//! --metrics-listen` scraped before and after known traffic (and checked with
//! `promtool check metrics`), the health check, the mapping log and `natgw trace`, and
//! `status --json`. The metrics listener binds inside the lab's headnode namespace and
//! is scraped from inside it.
//!
//! The scrape-cost benchmark with 50,000 UDP translations is `scrape_cost_with_50000_translations`,
//! ignored by default: `cargo test -p natgw --test observability -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use natgw_lab::{tcp_exchange, udp_exchange, Lab, Listener, Spec, HEAD_PUBLIC};

fn value(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    *series
        .get(name)
        .unwrap_or_else(|| panic!("no series {name} in {series:#?}"))
}

/// Waits until the gateway translates and the listener answers /healthz with 200.
pub fn wait_ready(lab: &Lab, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let healthy = http_get(lab, "/healthz").is_some_and(|(s, _)| s.contains("200"));
        if healthy
            && tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(200))
                .is_ok_and(|a| a.ip() == IpAddr::V4(HEAD_PUBLIC))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("natgw run did not become ready:\n{}", service.log());
}

/// `promtool check metrics` on a scrape; without promtool outside CI, a note.
fn promtool_accepts(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not run ({e}); apt-get install prometheus");
            return;
        }
        Err(e) => panic!("promtool: {e} (scripts/install-deps.sh installs it)"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics_count_known_traffic_exactly_and_pass_promtool(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(2)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let service = Service::start(&lab, &plane.args(&["--metrics-listen", METRICS]));
    wait_ready(&lab, &service);
    // Let the readiness probe's connection settle into the counters.
    std::thread::sleep(Duration::from_millis(300));

    let (_, before) = scrape(&lab);
    const UDP: usize = 5;
    const TCP: usize = 3;
    for _ in 0..UDP {
        udp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2)).unwrap();
    }
    let (_, after_udp) = scrape(&lab);
    let delta =
        |after: &BTreeMap<String, f64>, name: &str| value(after, name) - value(&before, name);
    // One datagram out and one reply in per exchange, each a new translation.
    assert_eq!(
        delta(
            &after_udp,
            "natgw_forwarded_packets_total{direction=\"outbound\"}"
        ),
        UDP as f64
    );
    assert_eq!(
        delta(
            &after_udp,
            "natgw_forwarded_packets_total{direction=\"inbound\"}"
        ),
        UDP as f64
    );
    // 20 bytes IP + 8 UDP + "who am i" (8) out; the reply "peer=10.0.0.11:PORT\n" varies by port digits.
    assert_eq!(
        delta(
            &after_udp,
            "natgw_forwarded_bytes_total{direction=\"outbound\"}"
        ),
        (UDP * 36) as f64
    );
    // New translations: natgw's rule's counter (conntrack's first packets) on nftables,
    // the programs' new bindings on eBPF.
    let new_translations = if plane.is_ebpf() {
        "natgw_ebpf_events_total{event=\"bindings_created\"}"
    } else {
        "natgw_new_translations_total"
    };
    assert_eq!(delta(&after_udp, new_translations), UDP as f64);

    for _ in 0..TCP {
        tcp_exchange(&lab.ns("n2"), server(), Duration::from_secs(2)).unwrap();
    }
    // Events reach the daemon asynchronously: wait for the view to catch up (the eBPF
    // plane's figures are read from its maps at each scrape).
    let created = if plane.is_ebpf() {
        new_translations
    } else {
        "natgw_translations_created_total"
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (text, after) = loop {
        let (text, after) = scrape(&lab);
        if delta(&after, created) >= (UDP + TCP) as f64 || Instant::now() > deadline {
            break (text, after);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(delta(&after, new_translations), (UDP + TCP) as f64);
    assert_eq!(delta(&after, created), (UDP + TCP) as f64);
    // UDP entries live 30 s (bindings 5 min) and closed TCP ones sit in TIME_WAIT (the
    // bindings in the transitory state): all still in use.
    let in_use = |protocol: &str| {
        if plane.is_ebpf() {
            format!("natgw_ebpf_bindings{{protocol=\"{protocol}\"}}")
        } else {
            format!("natgw_translations{{protocol=\"{protocol}\"}}")
        }
    };
    assert_eq!(delta(&after, &in_use("udp")), UDP as f64);
    assert_eq!(delta(&after, &in_use("tcp")), TCP as f64);
    assert!(
        delta(
            &after,
            "natgw_forwarded_packets_total{direction=\"outbound\"}"
        ) >= (UDP + 3 * TCP) as f64
    );
    assert!(value(&after, "natgw_conntrack_entries") >= (UDP + TCP) as f64);
    assert!(value(&after, "natgw_conntrack_entries_max") > 0.0);
    assert_eq!(
        delta(
            &after,
            "natgw_dropped_packets_total{reason=\"unsolicited\"}"
        ),
        0.0
    );
    assert!(value(&after, "natgw_reconcile_runs_total") >= 1.0);
    assert_eq!(value(&after, "natgw_gateway_verified"), 1.0);
    assert_eq!(value(&after, "natgw_conntrack_insert_failed_total"), 0.0);
    if plane.is_ebpf() {
        // Per-destination port use is conntrack's view; the eBPF plane shows its
        // bindings against the capacity instead.
        assert_eq!(value(&after, "natgw_ebpf_programs_attached"), 2.0);
        assert_eq!(value(&after, "natgw_ebpf_bindings_capacity"), 4536.0);
        assert!(text.contains("dataplane=\"ebpf\""), "{text}");
        promtool_accepts(&text);
        return;
    }
    let server_ip = server().ip().to_string();
    let busiest = format!(
        "natgw_public_ports_used{{public=\"{HEAD_PUBLIC}\",protocol=\"udp\",destination=\"{server_ip}\",port=\"{}\"}}",
        server().port()
    );
    assert_eq!(value(&after, &busiest), UDP as f64, "{text}");
    assert_eq!(
        value(
            &after,
            &format!("natgw_public_ports_allowed{{public=\"{HEAD_PUBLIC}\"}}")
        ),
        64512.0
    );
    assert!(
        text.contains("natgw_info{version=\"") && text.contains("public=\"wan0\""),
        "{text}"
    );
    promtool_accepts(&text);
}
both_planes!(metrics_count_known_traffic_exactly_and_pass_promtool);

fn health_turns_503_when_the_gateway_cannot_be_kept(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let service = Service::start(&lab, &plane.args(&["--metrics-listen", METRICS]));
    wait_ready(&lab, &service);
    // The private interface gone: the gateway cannot be brought to its desired state.
    lab.ip("head", &["link", "del", "lan0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < deadline {
        last = http_get(&lab, "/healthz");
        if last.as_ref().is_some_and(|(s, _)| s.contains("503")) {
            let (_, series) = scrape(&lab);
            assert_eq!(value(&series, "natgw_gateway_verified"), 0.0);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("healthz stayed {last:?}:\n{}", service.log());
}
both_planes!(health_turns_503_when_the_gateway_cannot_be_kept);

#[test]
fn metrics_listener_is_off_by_default() {
    let Some(lab) = lab_or_skip("metrics_listener_is_off_by_default", Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let service = Service::start(&lab, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "not ready:\n{}", service.log());
    }
    assert!(
        http_get(&lab, "/metrics").is_none(),
        "something listens on {METRICS}"
    );
}

/// Sends one UDP datagram per (source port, destination port) from a raw socket in
/// `ns` (no socket per flow): each is a new translation at the headnode.
fn udp_flows(lab: &Lab, ns_role: &str, source_ports: std::ops::Range<u16>, dest_ports: &[u16]) {
    let dest_ports = dest_ports.to_vec();
    let server = match server().ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!(),
    };
    natgw_lab::in_netns(&lab.ns(ns_role), move || {
        // SAFETY: plain socket calls with valid, initialised arguments.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(server).to_be(),
                },
                sin_zero: [0; 8],
            };
            let mut sent = 0u32;
            for &dport in &dest_ports {
                for sport in source_ports.clone() {
                    // UDP header + 4 bytes; checksum 0 means "none" in IPv4.
                    let mut packet = [0u8; 12];
                    packet[0..2].copy_from_slice(&sport.to_be_bytes());
                    packet[2..4].copy_from_slice(&dport.to_be_bytes());
                    packet[4..6].copy_from_slice(&12u16.to_be_bytes());
                    packet[8..12].copy_from_slice(b"flow");
                    let n = libc::sendto(
                        fd,
                        packet.as_ptr() as *const libc::c_void,
                        packet.len(),
                        0,
                        &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                    assert_eq!(n, 12, "sendto: {}", std::io::Error::last_os_error());
                    sent += 1;
                    // Paced so that no queue on the way drops a first packet.
                    if sent.is_multiple_of(2000) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            libc::close(fd);
        }
    })
    .unwrap();
}

/// The benchmark: the time of a full scrape (HTTP request to the last byte,
/// inside the headnode) with 50,000 open UDP translations. Prints the figures; run with
/// `cargo test -p natgw --test observability -- --ignored --nocapture scrape_cost`.
#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn scrape_cost_with_50000_translations() {
    let Some(lab) = lab_or_skip("scrape_cost_with_50000_translations", Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    // Four destination ports (64,512 flows per destination at most), 12,500 flows each.
    const DEST_PORTS: [u16; 4] = [7001, 7002, 7003, 7004];
    const PER_PORT: u16 = 12_500;
    let total = DEST_PORTS.len() * PER_PORT as usize;
    // Sinks that never read: no ICMP port-unreachable back for every flow.
    let _sinks = natgw_lab::in_netns(&lab.ns("pub"), || {
        DEST_PORTS
            .iter()
            .map(|p| std::net::UdpSocket::bind((server().ip(), *p)).unwrap())
            .collect::<Vec<_>>()
    })
    .unwrap();
    // Unreplied UDP entries would expire after 30 s, in the middle of the measurement.
    lab.sysctl("head", "net.netfilter.nf_conntrack_udp_timeout", "600")
        .unwrap();
    let service = Service::start(&lab, &["--metrics-listen", METRICS]);
    wait_ready(&lab, &service);

    let start = Instant::now();
    udp_flows(&lab, "n1", 20_000..20_000 + PER_PORT, &DEST_PORTS);
    let udp = "natgw_translations{protocol=\"udp\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, series) = scrape(&lab);
        if value(&series, udp) >= total as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} UDP translations:\n{}",
            value(&series, udp),
            service.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{total} UDP translations created and seen by natgw run in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..30 {
        let t = Instant::now();
        let (status, body) = http_get(&lab, "/metrics").unwrap();
        times.push(t.elapsed());
        assert!(status.contains("200"));
        text = body;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "scrape with {total} UDP translations: median {:.1} ms, worst {:.1} ms over {} scrapes ({} bytes)",
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap()),
        times.len(),
        text.len()
    );
    let (_, series) = scrape(&lab);
    assert!(value(&series, udp) >= total as f64);
    for port in DEST_PORTS {
        let used = format!(
            "natgw_public_ports_used{{public=\"{HEAD_PUBLIC}\",protocol=\"udp\",destination=\"{}\",port=\"{port}\"}}",
            server().ip()
        );
        if let Some(v) = series.get(&used) {
            assert_eq!(
                *v, PER_PORT as f64,
                "the busiest destination uses one port per flow"
            );
        }
    }
    println!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("natgw_") && !l.contains("info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    promtool_accepts(&text);
}

/// The mapping log's lines, parsed.
fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mapping_log_and_trace_name_the_private_host_also_after_the_flow_ended() {
    let Some(lab) = lab_or_skip(
        "mapping_log_and_trace_name_the_private_host_also_after_the_flow_ended",
        Spec::nodes(2),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let log = scratch(&lab, "maplog").join("mappings.jsonl");
    let log_arg = log.to_str().unwrap().to_string();
    let service = Service::start(
        &lab,
        &["--metrics-listen", METRICS, "--log-mappings", &log_arg],
    );
    wait_ready(&lab, &service);

    let public = udp_exchange(&lab.ns("n2"), server(), Duration::from_secs(2)).unwrap();
    let public_text = public.to_string();
    let is_ours = |l: &serde_json::Value, event: &str| {
        l["public"] == public_text.as_str() && l["protocol"] == "udp" && l["event"] == event
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log_lines(&log).iter().any(|l| is_ours(l, "created")) {
        assert!(
            Instant::now() < deadline,
            "no created line for {public}:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the mapping log is root-only");

    let trace = |extra: &[&str]| {
        let mut args = vec![
            "trace",
            &public_text,
            "--proto",
            "udp",
            "--log",
            &log_arg,
            "--json",
        ];
        args.extend_from_slice(extra);
        natgw(&lab, &args)
    };
    let live = trace(&[]);
    assert_exit(&live, 0);
    let holders = json(&live)["holders"].clone();
    assert_eq!(holders.as_array().unwrap().len(), 1, "{}", text(&live));
    assert!(
        holders[0]["private"]
            .as_str()
            .unwrap()
            .starts_with("10.0.0.12:"),
        "{}",
        text(&live)
    );
    assert_eq!(holders[0]["live"], true);

    // The flow ends (its conntrack entry removed in the lab's headnode).
    in_ns(
        &lab,
        "head",
        &["conntrack", "-D", "-p", "udp", "--orig-src", "10.0.0.12"],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log_lines(&log).iter().any(|l| is_ours(l, "ended")) {
        assert!(
            Instant::now() < deadline,
            "no ended line for {public}:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = log_lines(&log);
    let created = lines.iter().find(|l| is_ours(l, "created")).unwrap()["time_ms"]
        .as_u64()
        .unwrap();
    let ended = lines.iter().find(|l| is_ours(l, "ended")).unwrap()["time_ms"]
        .as_u64()
        .unwrap();
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(
        !raw.contains(&server().ip().to_string()),
        "a destination in the log:\n{raw}"
    );

    // After the end, at a time inside the flow: the log still names the host.
    let during = format!("{:.3}", (created + ended) as f64 / 2000.0);
    let out = trace(&["--at", &during]);
    assert_exit(&out, 0);
    let holders = json(&out)["holders"].clone();
    assert!(
        holders[0]["private"]
            .as_str()
            .unwrap()
            .starts_with("10.0.0.12:"),
        "{}",
        text(&out)
    );
    assert_eq!(holders[0]["live"], false);
    // Human output names it too.
    let human = natgw(
        &lab,
        &["trace", &public_text, "--log", &log_arg, "--at", &during],
    );
    assert!(
        stdout(&human).contains("held by 10.0.0.12:"),
        "{}",
        text(&human)
    );

    // After the end: no record covers that time, said plainly, exit 1.
    let after = format!("{:.3}", (ended + 1000) as f64 / 1000.0);
    let out = natgw(
        &lab,
        &["trace", &public_text, "--log", &log_arg, "--at", &after],
    );
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("no record covers"), "{}", text(&out));
}

fn status_json_top_hosts_match_the_traffic_sent(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(3)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    for (node, flows) in [("n1", 2), ("n2", 5), ("n3", 1)] {
        for _ in 0..flows {
            udp_exchange(&lab.ns(node), server(), Duration::from_secs(2)).unwrap();
        }
    }
    let out = natgw(&lab, &["status", "--json"]);
    assert_exit(&out, 0);
    if plane.is_ebpf() {
        // Per host and destination is conntrack's view of its translations; the eBPF
        // plane counts its bindings per protocol against the capacity.
        let status = json(&out);
        assert_eq!(status["ebpf"]["bindings"]["udp"], 8, "{status}");
        assert_eq!(ebpf_counter(&status, "bindings_created"), 8, "{status}");
        assert_eq!(status["ebpf"]["bindings_capacity"], 4536, "{status}");
        return;
    }
    let t = json(&out)["translations"].clone();
    let top: Vec<(String, u64)> = t["top_hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", text(&out)))
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["translations"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        top,
        [
            ("10.0.0.12".to_string(), 5),
            ("10.0.0.11".to_string(), 2),
            ("10.0.0.13".to_string(), 1)
        ]
    );
    assert_eq!(t["by_protocol"]["udp"], 8);
    assert_eq!(
        t["top_destinations"][0]["destination"],
        server().to_string()
    );
    assert_eq!(t["port_use"][0]["ports_used"], 8);
    assert_eq!(t["port_use"][0]["ports_allowed"], 64512);
    let human = natgw(&lab, &["status"]);
    assert!(
        stdout(&human).contains("translations: 8 in use (udp 8)"),
        "{}",
        text(&human)
    );
    assert!(
        stdout(&human).contains("8 of 64512 used towards udp"),
        "{}",
        text(&human)
    );
}
both_planes!(status_json_top_hosts_match_the_traffic_sent);
