//! End-to-end scenarios for natgw's promises, each the way an attacker or a careless
//! admin would break it (issue "A gateway that keeps its promises"). Each scenario
//! fails on natgw before that issue (run with NATGW_E2E_BIN=old-natgw to see it).

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use natgw_lab::{in_netns, Lab, Listener, Spec, HEAD_PUBLIC, UPSTREAM};

fn write_config(lab: &Lab, name: &str, content: &str) -> String {
    let path = scratch(lab, "cfg").join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

fn interface_names_that_are_nft_syntax_or_wildcards_are_refused(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    // A veth pair inside the headnode; one end carries a private address, so
    // autodetection takes it as a private interface.
    for (name, peer, address) in [
        ("x\"}accept#", "hv0", "10.9.0.1/24"),
        ("e*", "hv1", "10.9.1.1/24"),
    ] {
        lab.ip(
            "head",
            &["link", "add", name, "type", "veth", "peer", "name", peer],
        )
        .unwrap();
        lab.ip("head", &["addr", "add", address, "dev", name])
            .unwrap();
        lab.ip("head", &["link", "set", name, "up"]).unwrap();
        lab.ip("head", &["link", "set", peer, "up"]).unwrap();
        let before = headnode_snapshot(&lab);
        for args in [
            vec!["up"],
            vec!["up", "--private", "lan0", "--private", name],
        ] {
            let out = plane.natgw(&lab, &args);
            assert_exit(&out, 2);
            let err = stderr(&out);
            assert!(
                err.contains(&format!("{name:?}")) && err.contains("rename it"),
                "{args:?}: {err}"
            );
            assert_eq!(
                headnode_snapshot(&lab),
                before,
                "{args:?} changed the system"
            );
        }
        lab.ip("head", &["link", "del", peer]).unwrap();
    }
    // Ordinary names still work.
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
}
both_planes!(interface_names_that_are_nft_syntax_or_wildcards_are_refused);

fn the_public_side_cannot_open_a_pinhole_with_a_private_source(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let n1 = Lab::node_address(1);
    let _service = Listener::start(&lab.ns("n1"), SocketAddr::new(IpAddr::V4(n1), 5353)).unwrap();
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));

    // The upstream host sends to the headnode a frame claiming n1's address as source,
    // for a public destination (203.0.113.81, routed via the headnode).
    lab.ip("pub", &["addr", "add", &format!("{n1}/32"), "dev", "lo"])
        .unwrap();
    lab.ip(
        "pub",
        &["route", "add", "203.0.113.81/32", "via", "203.0.113.1"],
    )
    .unwrap();
    in_netns(&lab.ns("pub"), move || {
        let socket = UdpSocket::bind((n1, 5353)).unwrap();
        socket.send_to(b"open", "203.0.113.81:9999").unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    lab.ip("pub", &["route", "del", "203.0.113.81/32"]).unwrap();
    lab.ip("pub", &["addr", "del", &format!("{n1}/32"), "dev", "lo"])
        .unwrap();
    lab.ip("pub", &["addr", "add", "203.0.113.81/32", "dev", "lo"])
        .unwrap();
    // The "reply" to the translation that frame would have created.
    let answer = in_netns(&lab.ns("pub"), || {
        let socket = UdpSocket::bind("203.0.113.81:9999").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        socket.send_to(b"hello n1", "203.0.113.1:5353").unwrap();
        let mut buf = [0u8; 256];
        socket
            .recv_from(&mut buf)
            .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap();
    assert!(
        answer.is_err(),
        "the private node's UDP service answered through a pinhole: {answer:?}"
    );
    let status = json(&natgw(&lab, &["status", "--json"]));
    let dropped = status["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dropped_spoofed_public")
        .unwrap()["packets"]
        .as_u64()
        .unwrap();
    assert!(dropped >= 1, "{status}");
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
}
both_planes!(the_public_side_cannot_open_a_pinhole_with_a_private_source);

/// Where the kernel keeps an ingress chain across its device's removal (Linux 6.16
/// and later), natgw checks public spoofs there; the check must hold for a public
/// interface recreated under the same name (VPN and PPP uplinks do that), with no new
/// `up`. On older kernels the check is an `iifname` rule, which holds anyway.
fn public_spoofs_drop_also_after_the_public_interface_is_recreated(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    lab.ip("head", &["link", "del", "wan0"]).unwrap();
    lab.ip(
        "head",
        &[
            "link",
            "add",
            "wan0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.ns("pub"),
        ],
    )
    .unwrap();
    for (role, ifname, address) in [("head", "wan0", HEAD_PUBLIC), ("pub", "eth0", UPSTREAM)] {
        lab.ip(
            role,
            &["addr", "add", &format!("{address}/24"), "dev", ifname],
        )
        .unwrap();
        lab.ip(role, &["link", "set", ifname, "up"]).unwrap();
    }
    let before = nft_counter(&lab, "dropped_spoofed_public");
    // The upstream host sends datagrams claiming a private node's address.
    let n1 = Lab::node_address(1);
    lab.ip("pub", &["addr", "add", &format!("{n1}/32"), "dev", "lo"])
        .unwrap();
    in_netns(&lab.ns("pub"), move || {
        let socket = UdpSocket::bind((n1, 0)).unwrap();
        for _ in 0..3 {
            socket.send_to(b"spoofed", (HEAD_PUBLIC, 9)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = nft_counter(&lab, "dropped_spoofed_public");
    assert!(
        after >= before + 3,
        "dropped_spoofed_public: {before} -> {after}"
    );
}
both_planes!(public_spoofs_drop_also_after_the_public_interface_is_recreated);

/// `down` turns forwarding off before it removes the table and the programs: a node
/// opening a new flow every 100 µs all through `down` never reaches the public side
/// with its private address (the gateway forwarded them until the last step before).
fn down_never_lets_a_private_source_out(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let (private, public, sent) = steady_stream(&lab, Stream::NEW_FLOWS, || {
        assert_exit(&natgw(&lab, &["down"]), 0);
    });
    assert_eq!(
        private, 0,
        "{private} of {sent} datagrams left with the private source"
    );
    assert!(public > 0, "none of {sent} datagrams arrived translated");
}
both_planes!(down_never_lets_a_private_source_out);

/// `up` turns forwarding on only after the table (and the programs) are in, and a
/// failed `up` turns it off before it takes them away: a node opening a new flow every
/// 100 µs all through a failed `up` and a good one never reaches the public side with
/// its private address.
fn up_never_lets_a_private_source_out(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let (private, public, sent) = steady_stream(&lab, Stream::NEW_FLOWS, || {
        let failed = plane.natgw_env(&lab, "head", &["up"], &[("NATGW_TEST_FAIL_AT", "verify")]);
        assert_exit(&failed, 1);
        assert_exit(&plane.natgw(&lab, &["up"]), 0);
    });
    assert_eq!(
        private, 0,
        "{private} of {sent} datagrams left with the private source"
    );
    assert!(public > 0, "none of {sent} datagrams arrived translated");
    assert_exit(&natgw(&lab, &["down"]), 0);
}
both_planes!(up_never_lets_a_private_source_out);

/// A `down` that cannot turn forwarding back off (here /proc/sys is read-only for it)
/// keeps natgw's rules: without them the gateway would forward private sources
/// untranslated. It says so, exits 1, and a later `down` finishes the job.
fn down_keeps_the_rules_while_forwarding_stays_on(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let out = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\"",
            "sh",
            "ip",
            "netns",
            "exec",
            &lab.ns("head"),
            &binary(),
            "down",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    assert!(text(&out).contains("kept natgw's"), "{}", text(&out));
    assert_eq!(
        in_ns(&lab, "head", &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    in_ns(&lab, "head", &["nft", "list", "table", "inet", "natgw"]);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(
        in_ns(&lab, "head", &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "0"
    );
}
both_planes!(down_keeps_the_rules_while_forwarding_stays_on);

/// The slow `nft` of common::slow_nft, in the lab's scratch directory.
fn slow_nft(lab: &Lab, delay: &str) -> (String, std::path::PathBuf) {
    common::slow_nft(&scratch(lab, "slownft"), delay)
}

/// Starts natgw in its own process group, so it can be killed with its children.
fn spawn_natgw(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Child {
    natgw_command(lab, "head", args, env)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

fn a_second_command_waits_for_the_lock_and_then_names_its_holder(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let (nft, log) = slow_nft(&lab, "1");
    let mut first = spawn_natgw(&lab, &plane.args(&["up"]), &[("NATGW_NFT", &nft)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(&log) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for command in [vec!["up"], vec!["down"], vec!["status"]] {
        let started = Instant::now();
        let out = natgw_env(&lab, "head", &command, &[("NATGW_LOCK_WAIT", "0.5")]);
        assert_exit(&out, 1);
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(
            stderr(&out).contains(&format!("pid {}, `natgw up`", first.id())),
            "{command:?}: {}",
            text(&out)
        );
    }
    let first_out = first.wait().unwrap();
    assert!(first_out.success());
    // A waiter that outlasts the holder goes on and finds nothing to do.
    assert!(stdout(&plane.natgw(&lab, &["up"])).contains("no changes"));
}
both_planes!(a_second_command_waits_for_the_lock_and_then_names_its_holder);

fn many_concurrent_ups_and_downs_leave_a_consistent_gateway(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let before = headnode_snapshot(&lab);
    let ups: Vec<Child> = (0..12)
        .map(|_| spawn_natgw(&lab, &plane.args(&["up"]), &[("NATGW_LOCK_WAIT", "60")]))
        .collect();
    let mut applied = 0;
    for child in ups {
        let out = child.wait_with_output().unwrap();
        assert_exit(&out, 0);
        applied += stdout(&out).contains("verified") as usize;
    }
    assert_eq!(
        applied, 1,
        "exactly one up applied, the others found no changes"
    );
    assert_exit(&natgw(&lab, &["status"]), 0);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    let downs: Vec<Child> = (0..6)
        .map(|_| spawn_natgw(&lab, &["down"], &[("NATGW_LOCK_WAIT", "60")]))
        .collect();
    for child in downs {
        assert_exit(&child.wait_with_output().unwrap(), 0);
    }
    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "forwarding and rules restored"
    );
}
both_planes!(many_concurrent_ups_and_downs_leave_a_consistent_gateway);

/// Kills `up` (with its nft) while it runs the `call`-th nft command, then checks that
/// `finish` (`down` or `up`) completes from what was left.
fn kill_up_during_nft_call(plane: Plane, call: usize, finish: &str) {
    let lab = lab(Spec::nodes(1).with_router());
    let config = write_config(
        &lab,
        "routes.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    );
    let before = headnode_snapshot(&lab);
    let (nft, log) = slow_nft(&lab, "0.4");
    let mut up = spawn_natgw(
        &lab,
        &plane.args(&["up", "--config", &config]),
        &[("NATGW_NFT", &nft)],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls(&log) < call && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(calls(&log), call, "natgw up made fewer nft calls");
    kill_group(&mut up);
    // Whatever was left, nothing claims the gateway is in place.
    let status = plane.natgw(&lab, &["status", "--config", &config]);
    assert_exit(&status, 1);
    let plan = plane.natgw(&lab, &["plan", "--config", &config]);
    assert!(!stdout(&plan).contains("no changes"), "{}", text(&plan));

    let out = if finish == "up" {
        plane.natgw(&lab, &[finish, "--config", &config])
    } else {
        natgw(&lab, &[finish])
    };
    assert_exit(&out, 0);
    if finish == "up" {
        assert_exit(&plane.natgw(&lab, &["status", "--config", &config]), 0);
        let again = plane.natgw(&lab, &["up", "--config", &config]);
        assert!(stdout(&again).contains("no changes"), "{}", text(&again));
        assert_exit(&natgw(&lab, &["down"]), 0);
    }
    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "killed during nft call {call}, then `{finish}`"
    );
}

/// nft calls of a first `up`: 1 observe, 2 check, 3 snapshot, 4 install, 5 read
/// back, 6 verify. Forwarding is switched on between 2 and 3. The eBPF plane observes
/// once more when detection has found the public interface (its programs live there),
/// and attaches and pins its programs between install and read back.
fn nft_calls_of_up(plane: Plane) -> usize {
    if plane.is_ebpf() {
        7
    } else {
        6
    }
}

/// `up` killed during each of its nft calls in turn, each time in a fresh lab.
fn kill_up_at_every_step(plane: Plane, finish: &str) {
    if !root_or_skip(plane.test) {
        return;
    }
    if plane.is_ebpf() {
        host_bpffs();
    }
    for call in 1..=nft_calls_of_up(plane) {
        kill_up_during_nft_call(plane, call, finish);
    }
}

fn up_killed_at_any_step_is_undone_by_down(plane: Plane) {
    kill_up_at_every_step(plane, "down");
}
both_planes!(up_killed_at_any_step_is_undone_by_down);

fn up_killed_at_any_step_is_completed_by_up(plane: Plane) {
    kill_up_at_every_step(plane, "up");
}
both_planes!(up_killed_at_any_step_is_completed_by_up);

fn addresses_and_prefixes_that_cannot_work_are_refused(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(2)) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    for (addr, why) in [
        ("10.0.0.12", "inside the private prefix 10.0.0.0/24"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "not a unicast address"),
        ("224.0.0.1", "not a unicast address"),
        ("127.0.0.1", "loopback"),
    ] {
        let out = plane.natgw(&lab, &["up", "--snat-to", addr]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(&format!("SNAT address {addr} ")) && stderr(&out).contains(why),
            "{}",
            text(&out)
        );
    }
    for (prefix, why) in [
        ("0.0.0.0/0", "switches anti-spoofing off"),
        (
            "203.0.113.0/25",
            "overlaps the public network 203.0.113.0/24",
        ),
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/4", "multicast"),
    ] {
        let config = write_config(
            &lab,
            "prefix.toml",
            &format!("# extra\nprivate_prefixes = [\"{prefix}\"]\n"),
        );
        let out = plane.natgw(&lab, &["up", "--config", &config]);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("prefix.toml:2: private prefix") && err.contains(why),
            "{prefix}: {err}"
        );
    }
    assert_eq!(headnode_snapshot(&lab), before);
    // An address the public interface does not carry is only a warning.
    let out = plane.natgw(&lab, &["plan", "--snat-to", "203.0.113.9"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("warning: SNAT address 203.0.113.9 is not an address of wan0"));
    // ... and a doctor finding once it is in use.
    assert_exit(&plane.natgw(&lab, &["up", "--snat-to", "203.0.113.9"]), 0);
    let (_, report) = doctor(&lab, &[]);
    let snat = check(&report, "snat");
    assert_eq!(snat["status"], "warn", "{report}");
    assert!(
        snat["detail"]
            .as_str()
            .unwrap()
            .contains("wan0 does not carry it"),
        "{snat}"
    );
}
both_planes!(addresses_and_prefixes_that_cannot_work_are_refused);

fn conflicting_routes_are_refused_and_an_existing_route_is_never_adopted(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(2).with_router()) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    for (routes, why) in [
        (
            "{ to = \"0.0.0.0/0\", via = \"10.0.0.12\" }",
            "is the default route",
        ),
        (
            "{ to = \"203.0.113.0/24\", via = \"10.0.0.12\" }",
            "overlaps the public network",
        ),
        (
            "{ to = \"10.0.0.0/24\", via = \"10.0.0.12\" }",
            "overlaps the connected private network 10.0.0.0/24",
        ),
        (
            "{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" },\n  { to = \"10.20.0.0/24\", via = \"10.0.0.12\" }",
            "configured twice",
        ),
    ] {
        let config = write_config(&lab, "routes.toml", &format!("routes = [\n  {routes}\n]\n"));
        let out = plane.natgw(&lab, &["up", "--config", &config]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(why), "{routes}: {}", text(&out));
        assert_eq!(headnode_snapshot(&lab), before);
    }
    // Someone else's route to the same network through another router: adding natgw's
    // fails (EEXIST) and everything is rolled back; the foreign route is not recorded.
    lab.ip(
        "head",
        &[
            "route",
            "add",
            "10.20.0.0/24",
            "via",
            "10.0.0.12",
            "proto",
            "static",
        ],
    )
    .unwrap();
    let before = headnode_snapshot(&lab);
    let config = write_config(
        &lab,
        "routes.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    );
    for _ in 0..2 {
        let out = plane.natgw(&lab, &["up", "--config", &config]);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains("add route 10.20.0.0/24 via 10.0.0.254")
                && stderr(&out).contains("every earlier change was rolled back"),
            "{}",
            text(&out)
        );
        assert_eq!(headnode_snapshot(&lab), before);
    }
}
both_planes!(conflicting_routes_are_refused_and_an_existing_route_is_never_adopted);

#[test]
fn a_node_default_route_on_the_headnode_belongs_to_node_up() {
    let Some(lab) = lab_or_skip(
        "a_node_default_route_on_the_headnode_belongs_to_node_up",
        Spec::nodes(1),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    // Cascaded NAT: the headnode is itself a node of an upstream gateway.
    lab.ip("pub", &["addr", "add", "203.0.113.81/24", "dev", "eth0"])
        .unwrap();
    let out = natgw(
        &lab,
        &["node", "up", "--gateway", "203.0.113.81", "--replace"],
    );
    assert_exit(&out, 0);
    let out = natgw(&lab, &["up"]);
    assert_exit(&out, 0);
    assert!(!stdout(&out).contains("delete route"), "{}", text(&out));
    let routes = in_ns(&lab, "head", &["ip", "route", "show", "default"]);
    assert!(
        routes.contains("default via 203.0.113.81 dev wan0 proto 89"),
        "{routes}"
    );
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));

    // The uplink loses its default route: `up` no longer says everything is fine.
    lab.ip("head", &["route", "del", "default"]).unwrap();
    let out = natgw(&lab, &["up"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("wan0 lost its IPv4 default route"),
        "{}",
        text(&out)
    );
}

fn down_without_a_working_nft_fails_and_keeps_what_it_still_needs(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let out = natgw_env(
        &lab,
        "head",
        &["down"],
        &[("NATGW_NFT", "/nonexistent/nft")],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("apt-get install nftables"),
        "{}",
        text(&out)
    );
    assert!(in_ns(&lab, "head", &["nft", "list", "tables"]).contains("inet natgw"));
    assert!(state_path(&lab).exists(), "the record of the table is kept");
    let out = natgw(&lab, &["down"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("delete nftables table inet natgw"));
    assert_eq!(headnode_snapshot(&lab), before);
}
both_planes!(down_without_a_working_nft_fails_and_keeps_what_it_still_needs);

fn a_corrupt_record_does_not_block_status_doctor_or_down(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1).with_router()) else {
        return;
    };
    let config = write_config(
        &lab,
        "routes.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    );
    assert_exit(&plane.natgw(&lab, &["up", "--config", &config]), 0);
    std::fs::write(state_path(&lab), "garbage{").unwrap();

    let out = natgw(&lab, &["status"]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("public:     wan0"), "{}", text(&out));
    assert!(
        stdout(&out).contains("record:     UNUSABLE"),
        "{}",
        text(&out)
    );
    let out = natgw(&lab, &["doctor", "--json"]);
    assert!(json(&out)["checks"].as_array().unwrap().len() > 5);
    let out = plane.natgw(&lab, &["up"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("run `natgw down` first"),
        "{}",
        text(&out)
    );

    let out = natgw(&lab, &["down"]);
    assert_exit(&out, 1);
    let report = stdout(&out);
    assert!(
        report.contains("delete nftables table inet natgw"),
        "{report}"
    );
    assert!(
        report.contains("delete route 10.20.0.0/24 via 10.0.0.254"),
        "{report}"
    );
    assert!(report.contains("net.ipv4.ip_forward is 1"), "{report}");
    assert!(!in_ns(&lab, "head", &["nft", "list", "tables"]).contains("natgw"));
    assert!(in_ns(&lab, "head", &["ip", "route", "show", "proto", "88"]).is_empty());
    assert!(!state_path(&lab).exists());
    let out = natgw(&lab, &["down"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("nothing to remove"));
}
both_planes!(a_corrupt_record_does_not_block_status_doctor_or_down);

#[test]
fn a_tampered_record_cannot_make_down_write_other_sysctls() {
    let Some(lab) = lab_or_skip(
        "a_tampered_record_cannot_make_down_write_other_sysctls",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let path = state_path(&lab);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    // A path outside /proc/sys and a per-namespace sysctl natgw never manages.
    let outside = scratch(&lab, "tamper");
    let escape = format!(
        "net.ipv4.conf.../../../../..{}.forwarding",
        outside.display().to_string().replace('/', ".")
    );
    let escape = escape.replace("...", "../").replace("..", "../");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rp_before = lab
        .read_sysctl("head", "net.ipv4.conf.lan0.rp_filter")
        .unwrap();
    record["sysctls"]["net.ipv4.conf.lan0.rp_filter"] = "2".into();
    record["sysctls"][&escape] = "1".into();
    std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();

    let out = natgw(&lab, &["down"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("refusing to write sysctl"),
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.read_sysctl("head", "net.ipv4.conf.lan0.rp_filter")
            .unwrap(),
        rp_before
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside /proc/sys"
    );
    let _ = std::fs::remove_dir_all(outside);

    // A record others can write is not trusted at all.
    assert_exit(&natgw(&lab, &["up"]), 0);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = natgw(&lab, &["status"]);
    assert!(
        stdout(&out).contains("writable by other users"),
        "{}",
        text(&out)
    );
}

fn doctor_checks_the_recorded_gateway_when_the_uplink_is_down(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    lab.ip("head", &["link", "set", "wan0", "down"]).unwrap();
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let public = check(&report, "public-interface");
    assert_eq!(public["status"], "fail", "{report}");
    assert!(
        public["detail"]
            .as_str()
            .unwrap()
            .contains("wan0 is administratively down"),
        "{report}"
    );

    let out = natgw(&lab, &["doctor", "--fix"]);
    assert!(
        stdout(&out).contains("ip link set wan0 up"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("ip route add default via 203.0.113.254 dev wan0"),
        "{}",
        text(&out)
    );
    assert_exit(&natgw(&lab, &["status"]), 0);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
}
both_planes!(doctor_checks_the_recorded_gateway_when_the_uplink_is_down);

fn status_without_flags_checks_the_gateway_up_made(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1).with_router()) else {
        return;
    };
    let config = write_config(
        &lab,
        "routes.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    );
    // What the command line asked for beyond the config: masquerade, or the eBPF plane
    // (which refuses masquerade).
    let up = if plane.is_ebpf() {
        plane.natgw(&lab, &["up", "--config", &config])
    } else {
        plane.natgw(&lab, &["up", "--config", &config, "--masquerade"])
    };
    assert_exit(&up, 0);
    let out = natgw(&lab, &["status"]);
    assert_exit(&out, 0);
    let asked = if plane.is_ebpf() {
        "dataplane:  ebpf"
    } else {
        "-> masquerade"
    };
    assert!(stdout(&out).contains(asked), "{}", text(&out));
    assert!(stdout(&out).contains("route:      10.20.0.0/24 via 10.0.0.254"));
    let out = natgw(&lab, &["doctor"]);
    assert_exit(&out, 0);
    // Flags on the command line are a new question, answered as asked.
    let out = natgw(&lab, &["status", "--snat-to", "203.0.113.1"]);
    assert_exit(&out, 1);
}
both_planes!(status_without_flags_checks_the_gateway_up_made);

#[test]
fn mss_clamp_is_natgws_own_option_and_satisfies_the_doctor() {
    let Some(lab) = lab_or_skip(
        "mss_clamp_is_natgws_own_option_and_satisfies_the_doctor",
        Spec::nodes(1),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    lab.ip("head", &["link", "set", "lan0", "mtu", "9000"])
        .unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    let mtu = |lab: &Lab| check(&doctor(lab, &[]).1, "mtu")["status"].clone();
    assert_eq!(mtu(&lab), "warn");
    let config = write_config(&lab, "clamp.toml", "mss_clamp = true\n");
    let out = natgw(&lab, &["up", "--config", &config]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("update (rules changed)"),
        "{}",
        text(&out)
    );
    let table = in_ns(&lab, "head", &["nft", "list", "table", "inet", "natgw"]);
    assert!(
        table.contains("tcp option maxseg size set rt mtu"),
        "{table}"
    );
    assert_eq!(mtu(&lab), "pass");
    let seen = natgw_lab::tcp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2)).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(HEAD_PUBLIC));
}

/// A namespace of the test's own beside the lab, removed when dropped.
struct ExtraNamespace(String);

impl Drop for ExtraNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

#[test]
fn interfaces_natgw_does_not_manage_are_not_opened_by_its_forwarding() {
    let Some(lab) = lab_or_skip(
        "interfaces_natgw_does_not_manage_are_not_opened_by_its_forwarding",
        Spec::nodes(1),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    // A management network on a third interface, which natgw is not told about.
    let mg = ExtraNamespace(format!("{}-mg", lab.name));
    in_ns(&lab, "head", &["true"]);
    std::process::Command::new("ip")
        .args(["netns", "add", &mg.0])
        .output()
        .unwrap();
    lab.ip(
        "head",
        &[
            "link", "add", "mgmt0", "type", "veth", "peer", "name", "eth0", "netns", &mg.0,
        ],
    )
    .unwrap();
    lab.ip("head", &["addr", "add", "192.168.50.1/24", "dev", "mgmt0"])
        .unwrap();
    lab.ip("head", &["link", "set", "mgmt0", "up"]).unwrap();
    for args in [
        vec!["addr", "add", "192.168.50.2/24", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["link", "set", "lo", "up"],
        vec!["route", "add", "default", "via", "192.168.50.1"],
    ] {
        let out = std::process::Command::new("ip")
            .args(["-n", &mg.0])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let host = SocketAddr::new("192.168.50.2".parse().unwrap(), 7001);
    let _service = Listener::start(&mg.0, host).unwrap();
    lab.ip(
        "pub",
        &["route", "add", "192.168.50.0/24", "via", "203.0.113.1"],
    )
    .unwrap();
    // Control: plain forwarding would open the management network to the outside.
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    assert!(natgw_lab::tcp_exchange(&lab.ns("pub"), host, Duration::from_secs(1)).is_ok());
    lab.sysctl("head", "net.ipv4.ip_forward", "0").unwrap();

    assert_exit(
        &natgw(&lab, &["up", "--public", "wan0", "--private", "lan0"]),
        0,
    );
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    let inbound = natgw_lab::tcp_exchange(&lab.ns("pub"), host, Duration::from_secs(1));
    assert!(
        inbound.is_err(),
        "the public side reached 192.168.50.2: {inbound:?}"
    );
    let outbound = natgw_lab::tcp_exchange(&mg.0, server(), Duration::from_secs(1));
    assert!(
        outbound.is_err(),
        "an untranslated private source left through wan0: {outbound:?}"
    );
}

#[test]
fn private_interface_addresses_that_switch_protection_off_are_refused() {
    let Some(lab) = lab_or_skip(
        "private_interface_addresses_that_switch_protection_off_are_refused",
        Spec::nodes(1),
    ) else {
        return;
    };
    for (address, why) in [
        ("10.99.0.1/0", "covers every address"),
        ("203.0.113.200/25", "overlaps the public network"),
    ] {
        lab.ip("head", &["addr", "add", address, "dev", "lan0"])
            .unwrap();
        let before = headnode_snapshot(&lab);
        let out = natgw(&lab, &["up", "--masquerade"]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(&format!("address {address} on lan0"))
                && stderr(&out).contains(why),
            "{}",
            text(&out)
        );
        assert_eq!(headnode_snapshot(&lab), before);
        lab.ip("head", &["addr", "del", address, "dev", "lan0"])
            .unwrap();
    }
    // Route gateways that are this host, or a network's own addresses.
    for via in ["10.0.0.1", "10.0.0.0", "10.0.0.255"] {
        let config = write_config(
            &lab,
            "via.toml",
            &format!("routes = [{{ to = \"10.20.0.0/24\", via = \"{via}\" }}]\n"),
        );
        let out = natgw(&lab, &["up", "--config", &config]);
        assert_exit(&out, 2);
    }
    // SNAT to the public network's own broadcast or network address.
    for addr in ["203.0.113.255", "203.0.113.0"] {
        assert_exit(&natgw(&lab, &["up", "--snat-to", addr]), 2);
    }
}

#[test]
fn doctor_fix_never_writes_over_an_unusable_record() {
    let Some(lab) = lab_or_skip(
        "doctor_fix_never_writes_over_an_unusable_record",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    std::fs::write(state_path(&lab), "garbage{").unwrap();
    in_ns(&lab, "head", &["nft", "delete", "table", "inet", "natgw"]);
    let (out, report) = doctor(&lab, &["--fix"]);
    assert_exit(&out, 1);
    assert_eq!(check(&report, "record")["status"], "fail", "{report}");
    assert!(!in_ns(&lab, "head", &["nft", "list", "tables"]).contains("natgw"));
    assert_eq!(
        std::fs::read_to_string(state_path(&lab)).unwrap(),
        "garbage{"
    );
}

#[test]
fn a_recorded_interface_that_vanished_is_reported_not_taken_for_a_typo() {
    let Some(lab) = lab_or_skip(
        "a_recorded_interface_that_vanished_is_reported_not_taken_for_a_typo",
        Spec::nodes(1),
    ) else {
        return;
    };
    add_private_network(&lab, "lan9", "192.168.9.1/24");
    assert_exit(&natgw(&lab, &["up"]), 0);
    lab.ip("head", &["link", "del", "lan9"]).unwrap();
    let out = natgw(&lab, &["status"]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("the recorded private interface \"lan9\" no longer exists"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("public:     wan0"));
    let out = natgw(&lab, &["up"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("--private"), "{}", text(&out));
    assert_exit(&natgw(&lab, &["up", "--private", "lan0"]), 0);
}

#[test]
fn a_route_can_move_to_another_router_and_many_routes_apply() {
    let Some(lab) = lab_or_skip(
        "a_route_can_move_to_another_router_and_many_routes_apply",
        Spec::nodes(2).with_router(),
    ) else {
        return;
    };
    let first = write_config(
        &lab,
        "r1.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.12\" }]\n",
    );
    let second = write_config(
        &lab,
        "r2.toml",
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    );
    assert_exit(&natgw(&lab, &["up", "--config", &first]), 0);
    assert_exit(&natgw(&lab, &["up", "--config", &second]), 0);
    let routes = in_ns(&lab, "head", &["ip", "route", "show", "proto", "88"]);
    assert_eq!(routes.trim(), "10.20.0.0/24 via 10.0.0.254 dev lan0");

    let many: Vec<String> = (0..500)
        .map(|i| {
            format!(
                "{{ to = \"10.{}.{}.0/24\", via = \"10.0.0.254\" }}",
                100 + i / 256,
                i % 256
            )
        })
        .collect();
    let config = write_config(
        &lab,
        "many.toml",
        &format!("routes = [\n{}\n]\n", many.join(",\n")),
    );
    let started = Instant::now();
    assert_exit(&natgw(&lab, &["up", "--config", &config]), 0);
    println!("up with 500 routes: {:?}", started.elapsed());
    let routes = in_ns(&lab, "head", &["ip", "route", "show", "proto", "88"]);
    assert_eq!(routes.lines().count(), 500);
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert!(in_ns(&lab, "head", &["ip", "route", "show", "proto", "88"]).is_empty());
}

fn up_does_not_say_verified_over_a_foreign_firewall_that_drops_everything(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    in_ns(&lab, "head", &["nft", "add", "table", "ip", "filter"]);
    in_ns(
        &lab,
        "head",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "filter",
            "FORWARD",
            "{ type filter hook forward priority 0; policy drop; }",
        ],
    );
    let out = plane.natgw(&lab, &["up"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("another firewall stops the gateway"),
        "{}",
        text(&out)
    );
    assert!(!stdout(&out).contains("verified"), "{}", text(&out));
}
both_planes!(up_does_not_say_verified_over_a_foreign_firewall_that_drops_everything);

#[test]
fn down_restores_per_interface_forwarding_too() {
    let Some(lab) = lab_or_skip("down_restores_per_interface_forwarding_too", Spec::nodes(1))
    else {
        return;
    };
    lab.sysctl("head", "net.ipv4.conf.lan0.forwarding", "1")
        .unwrap();
    assert_eq!(lab.read_sysctl("head", "net.ipv4.ip_forward").unwrap(), "0");
    assert_exit(&natgw(&lab, &["up"]), 0);
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(lab.read_sysctl("head", "net.ipv4.ip_forward").unwrap(), "0");
    assert_eq!(
        lab.read_sysctl("head", "net.ipv4.conf.lan0.forwarding")
            .unwrap(),
        "1"
    );
    assert_eq!(
        lab.read_sysctl("head", "net.ipv4.conf.wan0.forwarding")
            .unwrap(),
        "0"
    );
}

#[test]
fn a_fifo_planted_as_the_record_does_not_hang_natgw() {
    let Some(lab) = lab_or_skip(
        "a_fifo_planted_as_the_record_does_not_hang_natgw",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let path = state_path(&lab);
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = Instant::now();
    let out = natgw(&lab, &["status"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("not a regular file"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_file(&path);
}
