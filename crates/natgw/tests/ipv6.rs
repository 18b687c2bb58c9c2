//! Outbound IPv6 for private nodes, per mode, end to end in a dual-stack lab: TCP, UDP
//! and ICMPv6 echo out, the source the far side sees, unsolicited inbound dropped,
//! path MTU discovery through the headnode, spoofed sources dropped both ways, IPv4
//! unchanged, and `down` restoring forwarding and `accept_ra`.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use natgw_lab::{
    in_netns, tcp_exchange, udp_exchange, Ipv6Mode, Lab, Listener, Spec, BEYOND6, HEAD_PUBLIC,
    HEAD_PUBLIC6, NPTV6_PUBLIC, SERVER6, SERVER6_ALT, UPSTREAM6,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const SHORT: Duration = Duration::from_millis(500);

/// An exchange that must succeed, tried up to three times: on a loaded machine (other
/// labs flooding the shared per-CPU backlog) a single datagram can be lost.
fn exchange(
    exchange: fn(&str, SocketAddr, Duration) -> Result<SocketAddr, String>,
    ns: &str,
    server: SocketAddr,
) -> Result<SocketAddr, String> {
    let mut last = Err(String::new());
    for _ in 0..3 {
        last = exchange(ns, server, TIMEOUT);
        if last.is_ok() {
            break;
        }
    }
    last
}

/// ICMPv6 echo of `size` bytes from `node` to `to`: one reply of three is enough.
fn echo(lab: &Lab, node: &str, to: Ipv6Addr, size: u16) {
    let (to, size) = (to.to_string(), size.to_string());
    let args = [
        "ping", "-6", "-c", "3", "-i", "0.3", "-W", "2", "-s", &size, &to,
    ];
    in_ns(lab, node, &args);
}

fn server6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(SERVER6), 7006)
}

/// The IPv6 sysctls natgw may change in the headnode.
fn ipv6_sysctls(lab: &Lab) -> Vec<(String, String)> {
    [
        "net.ipv6.conf.all.forwarding",
        "net.ipv6.conf.default.forwarding",
        "net.ipv6.conf.wan0.forwarding",
        "net.ipv6.conf.lan0.forwarding",
        "net.ipv6.conf.wan0.accept_ra",
    ]
    .iter()
    .map(|n| (n.to_string(), lab.read_sysctl("head", n).unwrap()))
    .collect()
}

/// The headnode's public side as configured by router advertisements: its IPv6 default
/// route carries protocol `ra`.
fn advertised_default(lab: &Lab) {
    let via = UPSTREAM6.to_string();
    let args = [
        "-6", "route", "replace", "default", "via", &via, "dev", "wan0", "proto", "ra",
    ];
    lab.ip("head", &args).unwrap();
}

/// A UDP datagram from `source` (added to the node's eth0) to the public server; true
/// when an answer came back.
fn udp_from(lab: &Lab, node: &str, source: Ipv6Addr) -> bool {
    lab.ip(
        node,
        &[
            "-6",
            "addr",
            "add",
            &format!("{source}/128"),
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .unwrap();
    in_netns(&lab.ns(node), move || {
        let socket = UdpSocket::bind((source, 0)).unwrap();
        socket.set_read_timeout(Some(SHORT)).unwrap();
        socket.send_to(b"spoofed", server6()).unwrap();
        socket.recv_from(&mut [0u8; 256]).is_ok()
    })
    .unwrap()
}

/// Everything one mode must do; `config` is the natgw.toml to use (none: detection).
fn scenario(plane: Plane, mode: Ipv6Mode, config: Option<&str>, expect_line: &str) {
    let Some(lab) = plane.lab(Spec::nodes(2).with_ipv6(mode)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    let _server4 = Listener::start(&lab.ns("pub"), server()).unwrap();
    let n1 = lab.node_address6(1).unwrap();
    let target = SocketAddr::new(IpAddr::V6(n1), 7001);
    let _inbound = Listener::start(&lab.ns("n1"), target).unwrap();
    // A hostile upstream that routes the private prefix to the headnode.
    lab.route_private6_from_upstream().unwrap();
    // The public side is configured by router advertisements: its default route says so.
    advertised_default(&lab);

    // Control: plain forwarding lets the hostile upstream in, and nodes out untranslated.
    lab.sysctl("head", "net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    assert!(
        tcp_exchange(&lab.ns("pub"), target, TIMEOUT).is_ok(),
        "control: plain IPv6 forwarding lets inbound through"
    );
    lab.sysctl("head", "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    assert!(tcp_exchange(&lab.ns("n1"), server6(), SHORT).is_err());
    let before = ipv6_sysctls(&lab);
    if mode == Ipv6Mode::Routed {
        // A ULA beside the routed prefix: used inside, never routed out.
        let args = ["-6", "addr", "add", "fd00:78::1/64", "dev", "lan0", "nodad"];
        lab.ip("head", &args).unwrap();
    }

    let mut args = vec!["up".to_string()];
    let dir = scratch(&lab, "ipv6");
    if let Some(text) = config {
        let path = dir.join("natgw.toml");
        std::fs::write(&path, text).unwrap();
        args.extend(["--config".into(), path.display().to_string()]);
    }
    args.extend(["--dataplane".into(), plane.name().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = natgw(&lab, &args);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(expect_line), "{}", text(&out));
    assert!(
        stdout(&out).contains("set sysctl net.ipv6.conf.all.forwarding: 0 -> 1"),
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.wan0.accept_ra")
            .unwrap(),
        "2",
        "router advertisements stay accepted on the public side"
    );

    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 0);
    let finding = check(&report, "ipv6");
    assert_eq!(finding["status"], "pass", "{report}");
    let mode_name = mode.to_string();
    assert!(
        finding["detail"].as_str().unwrap().contains(&mode_name),
        "{finding}"
    );
    let status = natgw(&lab, &["status"]);
    assert_exit(&status, 0);
    assert!(stdout(&status).contains(expect_line), "{}", text(&status));

    for i in 1..=2 {
        let node = format!("n{i}");
        let ns = lab.ns(&node);
        let expect = IpAddr::V6(lab.expected_source6(i).unwrap());
        let tcp = exchange(tcp_exchange, &ns, server6()).unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!(tcp.ip(), expect, "{node}: server saw TCP from {tcp}");
        let udp = exchange(udp_exchange, &ns, server6()).unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!(udp.ip(), expect, "{node}: server saw UDP from {udp}");
        echo(&lab, &node, SERVER6, 56);
        // IPv4 keeps working unchanged on the dual-stack host.
        assert_translated(&lab, &node, IpAddr::V4(HEAD_PUBLIC));
    }

    // natgw's UDP timeout (300 s, not the kernel's 30 s / 120 s) holds for IPv6 flows.
    let flows = in_ns(
        &lab,
        "head",
        &["conntrack", "-L", "-f", "ipv6", "-p", "udp"],
    );
    let timeout: u64 = flows
        .lines()
        .find(|l| l.contains(&format!("src={n1} ")))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no UDP flow of {n1}: {flows}"));
    assert!(
        timeout > 200,
        "IPv6 UDP flow without natgw's timeout: {flows}"
    );

    // status lists the IPv6 translations with the IPv4 ones (routed mode has none);
    // the eBPF plane's IPv4 ones are its bindings.
    let status = json(&natgw(&lab, &["status", "--json"]));
    let hosts = status["translations"]["top_hosts"].to_string();
    assert_eq!(
        hosts.contains(&format!("\"{n1}\"")),
        mode != Ipv6Mode::Routed,
        "{status}"
    );
    if plane.is_ebpf() {
        assert!(ebpf_counter(&status, "bindings_created") >= 4, "{status}");
        assert!(
            !hosts.contains("\"10.0.0.11\""),
            "IPv4 is the programs': {status}"
        );
    }

    // Unsolicited inbound: to the node's own address, and to where it is mapped.
    assert!(tcp_exchange(&lab.ns("pub"), target, SHORT).is_err());
    let mapped = SocketAddr::new(IpAddr::V6(lab.expected_source6(1).unwrap()), 7001);
    assert!(tcp_exchange(&lab.ns("pub"), mapped, SHORT).is_err());
    assert!(nft_counter(&lab, "dropped_unsolicited") > 0);

    // Path MTU: `pub` reaches BEYOND6 over a 1280-byte link; its packet-too-big must
    // come back through the headnode to the node, which then knows the path MTU.
    // Each 1400-byte echo draws one; three tries, for a loaded machine.
    let mut pings = String::new();
    let mut route = String::new();
    for _ in 0..3 {
        let ping = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("n1"),
                "ping",
                "-6",
                "-c",
                "1",
                "-W",
                "2",
            ])
            .args(["-s", "1400", "-M", "do", &BEYOND6.to_string()])
            .output()
            .unwrap();
        pings.push_str(&text(&ping));
        route = in_ns(
            &lab,
            "n1",
            &["ip", "-6", "route", "get", &BEYOND6.to_string()],
        );
        if route.contains("mtu 1280") {
            break;
        }
    }
    assert!(
        route.contains("mtu 1280"),
        "packet-too-big did not reach n1: {route}\n{pings}"
    );
    echo(&lab, "n1", BEYOND6, 1200);

    // Spoofed sources: from a node (outside the private prefix), and from the public
    // side (inside it).
    let spoofed = nft_counter(&lab, "dropped_spoofed");
    assert!(!udp_from(&lab, "n2", "2001:db8:99::5".parse().unwrap()));
    assert!(nft_counter(&lab, "dropped_spoofed") > spoofed);
    if mode == Ipv6Mode::Routed {
        let spoofed = nft_counter(&lab, "dropped_spoofed");
        assert!(!udp_from(&lab, "n1", "fd00:78::11".parse().unwrap()));
        assert!(
            nft_counter(&lab, "dropped_spoofed") > spoofed,
            "a ULA source left untranslated"
        );
    }
    let private_source = lab.node_address6(7).unwrap();
    lab.ip(
        "pub",
        &[
            "-6",
            "addr",
            "add",
            &format!("{private_source}/128"),
            "dev",
            "lo",
            "nodad",
        ],
    )
    .unwrap();
    let spoofed_public = nft_counter(&lab, "dropped_spoofed_public");
    // Three tries: on a loaded machine the first datagram can wait for neighbour
    // discovery past the check.
    let dropped = (0..3).any(|_| {
        in_netns(&lab.ns("pub"), move || {
            let socket = UdpSocket::bind((private_source, 0)).unwrap();
            socket.send_to(b"spoofed", target).unwrap();
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        nft_counter(&lab, "dropped_spoofed_public") > spoofed_public
    });
    assert!(dropped, "the public side's private source was not dropped");

    // An edit of natgw's IPv6 rules is drift (in nptv6 mode too, whose table the
    // nftables schema cannot fully type), and up repairs it.
    in_ns(
        &lab,
        "head",
        &["nft", "flush", "chain", "inet", "natgw", "postrouting"],
    );
    let status = natgw(&lab, &["status", "--json"]);
    assert_exit(&status, 1);
    let status = json(&status);
    assert_eq!(status["drift"]["changes"][0]["reason"], "drift", "{status}");
    assert_exit(&natgw(&lab, &args), 0);
    let udp = exchange(udp_exchange, &lab.ns("n1"), server6()).unwrap();
    assert_eq!(udp.ip(), IpAddr::V6(lab.expected_source6(1).unwrap()));

    // A second up changes nothing; down restores every IPv6 sysctl.
    let again = natgw(&lab, &args);
    assert_exit(&again, 0);
    assert!(stdout(&again).contains("no changes"), "{}", text(&again));
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(ipv6_sysctls(&lab), before);
    assert!(tcp_exchange(&lab.ns("n1"), server6(), SHORT).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

fn nat66_translates_to_the_headnode_address(plane: Plane) {
    scenario(
        plane,
        Ipv6Mode::Nat66,
        None,
        "ipv6:       fd00:77::/64 -> nat66 to 2001:db8:1::1",
    );
}
both_planes!(nat66_translates_to_the_headnode_address);

fn nptv6_maps_the_private_prefix_to_the_public_one(plane: Plane) {
    scenario(
        plane,
        Ipv6Mode::Nptv6,
        Some(&format!("[ipv6]\npublic_prefix = \"{NPTV6_PUBLIC}/64\"\n")),
        "ipv6:       fd00:77::/64 -> nptv6 fd00:77::/64 <-> 2001:db8:177::/64",
    );
}
both_planes!(nptv6_maps_the_private_prefix_to_the_public_one);

fn routed_forwards_the_nodes_own_addresses(plane: Plane) {
    scenario(
        plane,
        Ipv6Mode::Routed,
        None,
        "ipv6:       2001:db8:77::/64 -> routed (no translation)",
    );
}
both_planes!(routed_forwards_the_nodes_own_addresses);

#[test]
fn bad_ipv6_input_exits_2_and_changes_nothing() {
    let test = "bad_ipv6_input_exits_2_and_changes_nothing";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    // Two global addresses on the public side: nat66 cannot pick one by itself.
    lab.ip(
        "head",
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:1::2/64",
            "dev",
            "wan0",
            "nodad",
        ],
    )
    .unwrap();
    let snapshot = |lab: &Lab| {
        let routes = in_ns(lab, "head", &["ip", "-6", "route", "show", "table", "all"]);
        format!(
            "{}\n{routes}\n{:?}",
            headnode_snapshot(lab),
            ipv6_sysctls(lab)
        )
    };
    let before = snapshot(&lab);
    let dir = scratch(&lab, "bad6");
    let cases = [
        (
            "",
            "has several global IPv6 addresses (2001:db8:1::2, 2001:db8:1::1); set [ipv6] mode",
        ),
        (
            "[ipv6]\nmode = \"nat66\"\n",
            "name the one to translate to with [ipv6] address",
        ),
        ("[ipv6]\nmode = \"routed\"\n", "are all ULA (fc00::/7)"),
        ("[ipv6]\nmode = \"nptv6\"\n", "set [ipv6] public_prefix"),
        (
            "[ipv6]\npublic_prefix = \"2001:db8:177::/56\"\n",
            "must have the length of the private prefix",
        ),
        (
            "[ipv6]\nprivate_prefixes = [\"fe80::/64\"]\n",
            "overlaps the link-local range",
        ),
        ("[ipv6]\nmode = \"nat44\"\n", "unknown variant `nat44`"),
        (
            "[ipv6]\naddress = \"fd00:77::5\"\n",
            "is inside the private prefix fd00:77::/64",
        ),
    ];
    for (i, (content, message)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, content).unwrap();
        let out = natgw(&lab, &["up", "--config", path.to_str().unwrap()]);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(message),
            "{content:?}: expected {message:?} in {err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear message: {err}");
    }
    let out = natgw(&lab, &["up", "--ipv6-mode", "nat64"]);
    assert_exit(&out, 2);
    assert_eq!(snapshot(&lab), before, "bad input changed the system");
    // Valid input, and a failure after the IPv6 sysctls were written: rolled back.
    let path = dir.join("good.toml");
    std::fs::write(&path, "[ipv6]\naddress = \"2001:db8:1::2\"\n").unwrap();
    let config = ["up", "--config", path.to_str().unwrap()];
    for step in ["table", "verify"] {
        let out = natgw_env(&lab, "head", &config, &[("NATGW_TEST_FAIL_AT", step)]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains("rolled back"), "{}", text(&out));
        assert_eq!(snapshot(&lab), before, "a failed up at {step} left changes");
    }
    // Mode off leaves IPv6 alone.
    let out = natgw(&lab, &["up", "--ipv6-mode", "off"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("ipv6:       off"), "{}", text(&out));
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.all.forwarding")
            .unwrap(),
        "0"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lab_proves_ipv6_outbound_in_every_mode() {
    if !root_or_skip("lab_proves_ipv6_outbound_in_every_mode") {
        return;
    }
    for (mode, seen) in [
        ("routed", "server saw [2001:db8:77::11]:"),
        ("nptv6", "server saw [2001:db8:177::11]:"),
        ("off", ""),
    ] {
        let name = format!("ngw6lab{mode}{}", std::process::id());
        let out = std::process::Command::new(binary())
            .args(["lab", "--name", &name, "--ipv6-mode", mode])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        let stdout = stdout(&out);
        let checks = if mode == "off" { 8 } else { 15 };
        assert!(
            stdout.contains(&format!("{checks} passed, 0 failed")),
            "{mode}: {stdout}"
        );
        assert!(stdout.contains(seen), "{mode}: {stdout}");
        assert_eq!(
            mode == "off",
            !stdout.contains("ICMPv6"),
            "{mode}: {stdout}"
        );
        assert!(
            !std::path::Path::new(&format!("/run/netns/{name}-head")).exists(),
            "{mode}: lab left behind"
        );
    }
}

#[test]
fn node_up_sets_the_ipv6_default_via_the_headnode_and_down_restores_it() {
    let test = "node_up_sets_the_ipv6_default_via_the_headnode_and_down_restores_it";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    let gateway = lab.node_address6(0).unwrap().to_string();
    let node = |args: &[&str]| natgw_env(&lab, "n1", args, &[]);
    // The lab's IPv6 default already goes through the headnode.
    let out = node(&["node", "up", "--gateway", &gateway]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("no changes"), "{}", text(&out));

    // Another IPv6 default: refused without --replace, nothing changed.
    lab.ip(
        "n1",
        &[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:77::fe",
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    let defaults = |family: &str| in_ns(&lab, "n1", &["ip", family, "route", "show", "default"]);
    let (v4, v6) = (defaults("-4"), defaults("-6"));
    let out = node(&["node", "up", "--gateway", &gateway]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--replace"), "{}", text(&out));
    let out = node(&["node", "up", "--gateway", "fe80::1"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("link-local"), "{}", text(&out));
    assert_eq!((defaults("-4"), defaults("-6")), (v4.clone(), v6.clone()));

    let out = node(&["node", "up", "--gateway", &gateway, "--replace"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("answers neighbour discovery"),
        "{}",
        text(&out)
    );
    let now = defaults("-6");
    assert!(
        now.contains(&format!("via {gateway}")) && now.contains("proto 89"),
        "{now}"
    );
    assert_eq!(defaults("-4"), v4, "the IPv4 default is not touched");
    let udp = exchange(udp_exchange, &lab.ns("n1"), server6()).unwrap();
    assert_eq!(udp.ip(), IpAddr::V6(HEAD_PUBLIC6));
    let out = node(&["node", "check", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(check(&json(&out), "default-route-ipv6")["status"], "pass");

    let out = node(&["node", "down"]);
    assert_exit(&out, 0);
    assert_eq!((defaults("-4"), defaults("-6")), (v4, v6), "{}", text(&out));
}

#[test]
fn probe_reaches_ipv6_targets_and_stun_sees_the_nat66_address() {
    let test = "probe_reaches_ipv6_targets_and_stun_sees_the_nat66_address";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    let config = natgw_probe::server::Config::new(
        SocketAddr::new(IpAddr::V6(SERVER6), natgw_probe::server::DEFAULT_PORT),
        Some(SocketAddr::new(
            IpAddr::V6(SERVER6_ALT),
            natgw_probe::server::DEFAULT_ALT_PORT,
        )),
    );
    let _stun = in_netns(&lab.ns("pub"), move || {
        natgw_probe::server::Server::start(config)
    })
    .unwrap()
    .unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    let tcp = format!("[{SERVER6}]:7006");
    // The UDP probe is a STUN binding request: only the STUN server answers it.
    let udp = format!("[{SERVER6}]:3478");
    let stun = format!("[{SERVER6}]");
    let out = natgw_env(
        &lab,
        "n1",
        &[
            "probe",
            "--json",
            "--icmp",
            &SERVER6.to_string(),
            "--tcp",
            &tcp,
            "--udp",
            &udp,
            "--stun",
            &stun,
        ],
        &[],
    );
    assert_exit(&out, 0);
    let report = json(&out);
    let probes = report["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3, "{report}");
    assert!(probes.iter().all(|p| p["ok"] == true), "{report}");
    let mapped: SocketAddr = report["stun"]["behaviour"]["mapped"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(mapped.ip(), IpAddr::V6(HEAD_PUBLIC6), "{report}");
    // An address nothing answers fails, per probe.
    let out = natgw_env(
        &lab,
        "n1",
        &["probe", "--icmp", "2001:db8:100::99", "--timeout", "0.5"],
        &[],
    );
    assert_exit(&out, 1);
}

#[test]
fn run_repairs_ipv6_forwarding_and_keeps_router_advertisements() {
    let test = "run_repairs_ipv6_forwarding_and_keeps_router_advertisements";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    advertised_default(&lab);
    let works = || {
        udp_exchange(&lab.ns("n1"), server6(), Duration::from_millis(200))
            .is_ok_and(|a| a.ip() == IpAddr::V6(HEAD_PUBLIC6))
    };
    let until = |check: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let mut service = Service::start(&lab, &[]);
    assert!(
        until(&works),
        "natgw run: no IPv6 outbound\n{}",
        service.log()
    );
    for (name, damaged) in [
        ("net.ipv6.conf.all.forwarding", "0"),
        ("net.ipv6.conf.wan0.accept_ra", "1"),
    ] {
        lab.sysctl("head", name, damaged).unwrap();
        let repaired = || lab.read_sysctl("head", name).unwrap() != damaged;
        assert!(until(&repaired), "{name} not repaired\n{}", service.log());
        assert!(
            until(&works),
            "{name}: IPv6 outbound not back\n{}",
            service.log()
        );
    }
    assert!(service.running(), "{}", service.log());
    assert_eq!(service.stop(), Some(0));
}

/// A router advertisement from `pub` on its link to the headnode (a default router for
/// `lifetime` seconds), sent as a router sends it: to all nodes, hop limit 255, from
/// its link-local address.
fn advertise_default_router(lab: &Lab, lifetime: u16) {
    use socket2::{Domain, Protocol, Socket, Type};
    in_netns(&lab.ns("pub"), move || {
        // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert_ne!(ifindex, 0, "pub has no eth0");
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        socket.set_multicast_hops_v6(255).unwrap();
        socket.set_multicast_if_v6(ifindex).unwrap();
        // Type 134, code 0, checksum (the kernel's), hop limit 64, no flags, router
        // lifetime, reachable time 0, retransmission timer 0.
        let mut ra = vec![134, 0, 0, 0, 64, 0];
        ra.extend_from_slice(&lifetime.to_be_bytes());
        ra.extend_from_slice(&[0; 8]);
        let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, ifindex);
        socket.send_to(&ra, &all_nodes.into()).unwrap();
    })
    .unwrap();
}

/// The headnode's IPv6 default route, as `ip -6 route` prints it.
fn head_default6(lab: &Lab) -> String {
    in_ns(lab, "head", &["ip", "-6", "route", "show", "default"])
}

#[test]
fn a_default_route_learnt_from_router_advertisements_survives_up_and_down() {
    let test = "a_default_route_learnt_from_router_advertisements_survives_up_and_down";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    lab.ip("head", &["-6", "route", "del", "default"]).unwrap();
    advertise_default_router(&lab, 1800);
    let learnt = |lab: &Lab| {
        let route = head_default6(lab);
        route.contains("proto ra") && route.contains("via fe80::")
    };
    let start = std::time::Instant::now();
    while !learnt(&lab) && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        learnt(&lab),
        "no default route from the advertisement: {}",
        head_default6(&lab)
    );
    // Control: forwarding on while advertisements are not accepted purges the route.
    lab.sysctl("head", "net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    assert!(
        !learnt(&lab),
        "control: forwarding kept the advertised route"
    );
    lab.sysctl("head", "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    advertise_default_router(&lab, 1800);
    std::thread::sleep(Duration::from_millis(300));
    assert!(learnt(&lab), "{}", head_default6(&lab));

    let out = natgw(&lab, &["up"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("set sysctl net.ipv6.conf.wan0.accept_ra: 1 -> 2"),
        "{}",
        text(&out)
    );
    assert!(
        learnt(&lab),
        "up lost the advertised default route: {}",
        head_default6(&lab)
    );
    let udp = exchange(udp_exchange, &lab.ns("n1"), server6()).unwrap();
    assert_eq!(udp.ip(), IpAddr::V6(HEAD_PUBLIC6));
    // Advertisements keep being processed while forwarding: a zero lifetime withdraws.
    advertise_default_router(&lab, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !learnt(&lab),
        "a withdrawal was ignored: {}",
        head_default6(&lab)
    );
    advertise_default_router(&lab, 1800);
    std::thread::sleep(Duration::from_millis(300));
    assert!(learnt(&lab), "{}", head_default6(&lab));

    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.wan0.accept_ra")
            .unwrap(),
        "1"
    );
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.all.forwarding")
            .unwrap(),
        "0"
    );
    assert!(learnt(&lab), "down lost the advertised default route");
}

#[test]
fn doctor_finds_ipv6_forwarding_off_and_fix_turns_it_back_on() {
    let test = "doctor_finds_ipv6_forwarding_off_and_fix_turns_it_back_on";
    let Some(lab) = lab_or_skip(test, Spec::nodes(1).with_ipv6(Ipv6Mode::Nat66)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server6()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    lab.sysctl("head", "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    assert!(udp_exchange(&lab.ns("n1"), server6(), SHORT).is_err());
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    assert_eq!(check(&report, "ipv6")["status"], "fail", "{report}");
    let (out, report) = doctor(&lab, &["--fix"]);
    assert_exit(&out, 0);
    assert!(fails(&report).is_empty(), "{report}");
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.all.forwarding")
            .unwrap(),
        "1"
    );
    let udp = exchange(udp_exchange, &lab.ns("n1"), server6()).unwrap();
    assert_eq!(udp.ip(), IpAddr::V6(HEAD_PUBLIC6));
    // down still restores the value from before up, not the one doctor repaired.
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(
        lab.read_sysctl("head", "net.ipv6.conf.all.forwarding")
            .unwrap(),
        "0"
    );
}
