//! End-to-end tests: the real kernel, in network namespaces built by natgw-lab, driven
//! through natgw's binary exactly as an admin would run it. They need root; without it
//! they are skipped with a visible message, except under CI (CI=true) where that fails.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::*;
use natgw_lab::{tcp_exchange, udp_exchange, Lab, Listener, Spec, HEAD_PUBLIC};

const TIMEOUT: Duration = Duration::from_secs(2);

fn up_with_autodetection_translates_and_drops_unsolicited_inbound(plane: Plane) {
    let Some(lab) = plane.lab(Spec::default()) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();

    // Control: without natgw the private nodes cannot reach out, and with plain
    // forwarding a hostile upstream reaches n1: so the checks below can fail.
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());
    let target = SocketAddr::new(IpAddr::V4(Lab::node_address(1)), 7001);
    let _inbound = Listener::start(&lab.ns("n1"), target).unwrap();
    lab.route_private_from_upstream().unwrap();
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    assert!(
        tcp_exchange(&lab.ns("pub"), target, TIMEOUT).is_ok(),
        "control: plain forwarding lets inbound through"
    );
    lab.sysctl("head", "net.ipv4.ip_forward", "0").unwrap();

    let out = plane.natgw(&lab, &["up"]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("public:     wan0 (203.0.113.1/24)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("10.0.0.0/24 -> snat to 203.0.113.1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("set sysctl net.ipv4.ip_forward: 0 -> 1"),
        "{stdout}"
    );

    for node in ["n1", "n2"] {
        assert_translated(&lab, node, IpAddr::V4(HEAD_PUBLIC));
    }
    let inbound = tcp_exchange(&lab.ns("pub"), target, Duration::from_secs(1));
    assert!(
        inbound.is_err(),
        "unsolicited inbound got through: {inbound:?}"
    );

    let status = natgw(&lab, &["status", "--json"]);
    assert_exit(&status, 0);
    let status = json(&status);
    assert_eq!(status["in_sync"], true);
    assert_eq!(plane.translated(&status), 4, "2 nodes x (TCP + UDP)");
    let counter = |name| nft_status_counter(&status, name);
    assert!(counter("outbound") >= 4 && counter("inbound_replies") >= 4);
    assert!(counter("dropped_unsolicited") >= 1);
    if plane.is_ebpf() {
        assert!(ebpf_counter(&status, "in_translated") >= 4, "{status}");
    }
    assert!(status["conntrack"]["count"].as_u64().unwrap() >= 4);
}
both_planes!(up_with_autodetection_translates_and_drops_unsolicited_inbound);

fn second_up_changes_nothing_and_plan_is_empty(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let before = headnode_snapshot(&lab);
    assert!(
        before.ends_with("state=true"),
        "up records its state: {before}"
    );
    let again = plane.natgw(&lab, &["up"]);
    assert_exit(&again, 0);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no changes"),
        "{}",
        text(&again)
    );
    assert_eq!(headnode_snapshot(&lab), before);
    let plan = json(&plane.natgw(&lab, &["plan", "--json"]));
    assert_eq!(plan["plan"]["changes"], serde_json::json!([]));
    assert_eq!(plan["desired"]["public"]["name"], "wan0");
}
both_planes!(second_up_changes_nothing_and_plan_is_empty);

fn up_with_flags_uses_the_given_address(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    lab.ip("head", &["addr", "add", "203.0.113.7/24", "dev", "wan0"])
        .unwrap();
    let out = plane.natgw(
        &lab,
        &[
            "up",
            "--public",
            "wan0",
            "--private",
            "lan0",
            "--snat-to",
            "203.0.113.7",
        ],
    );
    assert_exit(&out, 0);
    assert_translated(&lab, "n1", "203.0.113.7".parse().unwrap());

    // Changing the desire replaces the table in place; masquerade (nftables only: the
    // eBPF plane refuses it) or the default address use the primary.
    let change = if plane.is_ebpf() {
        plane.natgw(&lab, &["up"])
    } else {
        plane.natgw(&lab, &["up", "--masquerade"])
    };
    let out = change;
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("update (rules changed)"),
        "{}",
        text(&out)
    );
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
}
both_planes!(up_with_flags_uses_the_given_address);

fn config_file_routes_reach_networks_behind_a_router_and_down_restores_everything(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1).with_router()) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    // A foreign table that must survive untouched.
    in_ns(&lab, "head", &["nft", "add", "table", "inet", "foreign"]);
    in_ns(
        &lab,
        "head",
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "foreign",
            "pass",
            "{ type filter hook forward priority 10; policy accept; }",
        ],
    );
    in_ns(
        &lab,
        "head",
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "foreign",
            "pass",
            "ip",
            "saddr",
            "10.0.0.0/8",
            "accept",
        ],
    );
    let before = headnode_snapshot(&lab);

    let config = std::env::temp_dir().join(format!("{}.toml", lab.name));
    std::fs::write(
        &config,
        "# natgw for the lab\npublic = \"wan0\"\nprivate = [\"lan0\"]\nroutes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    )
    .unwrap();
    let out = plane.natgw(&lab, &["up", "--config", config.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("add route 10.20.0.0/24 via 10.0.0.254 (proto 88)"));
    let routes = String::from_utf8_lossy(
        &lab.ip("head", &["route", "show", "proto", "88"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(routes.contains("10.20.0.0/24 via 10.0.0.254"), "{routes}");
    // The node behind the router is translated too (its prefix joined the private set).
    let seen = tcp_exchange(&lab.ns("far"), server(), TIMEOUT).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(HEAD_PUBLIC));
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));

    let down = natgw(&lab, &["down"]);
    assert_exit(&down, 0);
    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "down restores exactly the state before up"
    );
    let again = natgw(&lab, &["down"]);
    assert_exit(&again, 0);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to remove"));
    let _ = std::fs::remove_file(config);
}
both_planes!(config_file_routes_reach_networks_behind_a_router_and_down_restores_everything);

fn down_keeps_forwarding_that_was_already_on(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(lab.read_sysctl("head", "net.ipv4.ip_forward").unwrap(), "1");
}
both_planes!(down_keeps_forwarding_that_was_already_on);

fn bad_input_exits_2_and_changes_nothing(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    let dir = std::env::temp_dir().join(format!("{}-bad", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &str, &str); 4] = [
        (
            "unknown-key.toml",
            "public = \"wan0\"\nprivte = [\"lan0\"]\n",
            "unknown-key.toml:2:1: unknown field `privte`",
        ),
        (
            "bad-address.toml",
            "snat_to = \"203.0.113.300\"\n",
            "bad-address.toml:1:11: invalid IP address syntax",
        ),
        (
            "not-network.toml",
            "private_prefixes = [\"10.0.0.5/24\"]\n",
            "10.0.0.5/24 is not a network address (host bits are set); write 10.0.0.0/24 instead",
        ),
        (
            "same.toml",
            "public = \"lan0\"\nprivate = [\"lan0\"]\n",
            "\"lan0\" is given as both public and private interface",
        ),
    ];
    for (file, content, message) in cases {
        let path = dir.join(file);
        std::fs::write(&path, content).unwrap();
        let out = plane.natgw(&lab, &["up", "--config", path.to_str().unwrap()]);
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(message),
            "{file}: expected {message:?} in {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    }
    let out = plane.natgw(&lab, &["up", "--public", "eth9"]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("public interface \"eth9\" does not exist"),
        "{}",
        text(&out)
    );
    let out = plane.natgw(&lab, &["up", "--config", "/nonexistent/natgw.toml"]);
    assert_exit(&out, 2);
    let out = plane.natgw(&lab, &["up", "--snat-to", "203.0.113.300"]);
    assert_exit(&out, 2);
    // What one plane refuses on purpose: the eBPF plane what it cannot translate yet,
    // the nftables plane the eBPF plane's own keys.
    let ha = "[ha]\npeer = \"192.168.255.2\"\nsync_interface = \"sync0\"\nvrid = 51\npriority = 150\nprivate_vip = \"10.0.0.1/24\"\npublic_vip = \"203.0.113.10/24\"\n";
    let refused: &[(&str, &str)] = if plane.is_ebpf() {
        &[
            ("masquerade = true\n", "does not support masquerade yet"),
            (
                "port_selection = \"random\"\n",
                "does not support port_selection = \"random\" yet",
            ),
            (
                "[port_blocks]\nsize = 512\n",
                "does not support [port_blocks] yet",
            ),
            (ha, "does not support [ha] yet"),
        ]
    } else {
        &[
            (
                "filtering = \"address-dependent\"\n",
                "filtering applies only to dataplane = \"ebpf\"",
            ),
            (
                "port_range = \"61000-65535\"\n",
                "port_range applies only to dataplane = \"ebpf\"",
            ),
        ]
    };
    let path = dir.join("plane.toml");
    for (content, message) in refused {
        std::fs::write(
            &path,
            format!("public = \"wan0\"\nprivate = [\"lan0\"]\n{content}"),
        )
        .unwrap();
        let out = plane.natgw(&lab, &["up", "--config", path.to_str().unwrap()]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(message), "{content}: {}", text(&out));
    }
    if plane.is_ebpf() {
        let out = plane.natgw(&lab, &["up", "--masquerade"]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("--dataplane ebpf does not support masquerade yet"),
            "{}",
            text(&out)
        );
    }

    // No privilege: an unprivileged user without capabilities.
    let exe = env!("CARGO_BIN_EXE_natgw");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("head"),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            exe,
            "up",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs CAP_NET_ADMIN; run natgw as root"),
        "{}",
        text(&out)
    );

    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "bad input changed the system"
    );
    let _ = std::fs::remove_dir_all(dir);
}
both_planes!(bad_input_exits_2_and_changes_nothing);

fn interface_down_is_reported_and_nothing_changes(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    lab.ip("head", &["link", "set", "lan0", "down"]).unwrap();
    let before = headnode_snapshot(&lab);
    let out = plane.natgw(&lab, &["up", "--private", "lan0"]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ip link set lan0 up"),
        "{}",
        text(&out)
    );
    assert_eq!(headnode_snapshot(&lab), before);
}
both_planes!(interface_down_is_reported_and_nothing_changes);

fn failure_half_way_rolls_back(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1).with_router()) else {
        return;
    };
    let config = std::env::temp_dir().join(format!("{}.toml", lab.name));
    std::fs::write(
        &config,
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let before = headnode_snapshot(&lab);

    // The table step fails after forwarding and the route were changed.
    let out = plane.natgw_env(
        &lab,
        "head",
        &["up", "--config", &config],
        &[("NATGW_TEST_FAIL_AT", "table")],
    );
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("create nftables table inet natgw")
            && stderr.contains("every earlier change was rolled back"),
        "{stderr}"
    );
    assert_eq!(headnode_snapshot(&lab), before);

    // An update whose last step fails puts the previous table (and programs) back.
    assert_exit(&plane.natgw(&lab, &["up", "--config", &config]), 0);
    let installed = headnode_snapshot(&lab);
    let changed = scratch(&lab, "changed").join("natgw.toml");
    let change = if plane.is_ebpf() {
        "filtering = \"address-dependent\"\n"
    } else {
        "masquerade = true\n"
    };
    std::fs::write(
        &changed,
        format!("routes = [{{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }}]\n{change}"),
    )
    .unwrap();
    let out = plane.natgw_env(
        &lab,
        "head",
        &["up", "--config", changed.to_str().unwrap()],
        &[("NATGW_TEST_FAIL_AT", "verify")],
    );
    assert_exit(&out, 1);
    assert_eq!(headnode_snapshot(&lab), installed);
    assert_eq!(status_json(&lab)["in_sync"], true);
    let _ = std::fs::remove_file(config);
}
both_planes!(failure_half_way_rolls_back);

fn drift_is_reported_by_status_and_repaired_by_up(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    // Someone flushes natgw's NAT chain and turns forwarding off.
    in_ns(
        &lab,
        "head",
        &["nft", "flush", "chain", "inet", "natgw", "postrouting"],
    );
    lab.sysctl("head", "net.ipv4.ip_forward", "0").unwrap();
    if plane.is_ebpf() {
        // ... and, on the eBPF plane, removes the programs' pinned links (detaching them).
        let dir = std::path::PathBuf::from(status_json(&lab)["ebpf"]["pin_dir"].as_str().unwrap());
        for link in ["link_egress", "link_ingress"] {
            std::fs::remove_file(dir.join(link)).unwrap();
        }
    }
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());

    let status = natgw(&lab, &["status", "--json"]);
    assert_exit(&status, 1);
    let status = json(&status);
    assert_eq!(status["in_sync"], false);
    let changes: Vec<&str> = status["drift"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    // The table first: forwarding comes back only behind it.
    assert_eq!(changes, ["replace_table", "set_sysctl"]);
    assert_eq!(status["drift"]["changes"][0]["reason"], "drift");

    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    // down still restores the value from before natgw's first change.
    assert_exit(&natgw(&lab, &["down"]), 0);
    assert_eq!(lab.read_sysctl("head", "net.ipv4.ip_forward").unwrap(), "0");
}
both_planes!(drift_is_reported_by_status_and_repaired_by_up);

#[test]
fn lab_demo_passes_and_cleans_up() {
    if !root_or_skip("lab_demo_passes_and_cleans_up") {
        return;
    }
    let name = format!("ngwdemo{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_natgw"))
        .args(["lab", "--name", &name])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // IPv4 (8 checks) and IPv6 in the default nat66 mode (7 checks).
    assert!(stdout.contains("15 passed, 0 failed"), "{stdout}");
    assert_eq!(stdout.matches("PASS").count(), 15);
    assert!(
        stdout.contains("server saw [2001:db8:1::1]:"),
        "nat66 to the headnode's address: {stdout}"
    );
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&name))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

fn doctor_passes_a_healthy_gateway(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 0);
    assert!(fails(&report).is_empty(), "{report}");
    // The eBPF plane adds ebpf_kernel, ebpf_privileges, ebpf_attached, ebpf_pinned and
    // ebpf_bindings.
    let checks = if plane.is_ebpf() { 22 } else { 17 };
    assert_eq!(report["checks"].as_array().unwrap().len(), checks);
    assert_eq!(check(&report, "tc-programs")["status"], "pass", "{report}");
    assert_eq!(check(&report, "ipv6")["status"], "pass", "{report}");
    assert_eq!(
        check(&report, "natgw-table")["detail"],
        "table inet natgw is exactly as natgw installed it"
    );
}
both_planes!(doctor_passes_a_healthy_gateway);

fn doctor_fix_repairs_interface_down_and_forwarding_off(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    lab.ip("head", &["link", "set", "lan0", "down"]).unwrap();
    lab.sysctl("head", "net.ipv4.ip_forward", "0").unwrap();
    let (out, report) = doctor(&lab, &plane.args(&["--private", "lan0"]));
    assert_exit(&out, 1);
    assert_eq!(check(&report, "private-interface")["status"], "fail");
    assert_eq!(
        check(&report, "private-interface")["fix"],
        "ip link set lan0 up"
    );
    assert_eq!(check(&report, "ip-forward")["status"], "fail");
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());

    let (out, report) = doctor(&lab, &plane.args(&["--private", "lan0", "--fix"]));
    assert_exit(&out, 0);
    assert!(fails(&report).is_empty(), "{report}");
    let fixed: Vec<&str> = report["fixed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(fixed.contains(&"ip link set lan0 up"), "{fixed:?}");
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
}
both_planes!(doctor_fix_repairs_interface_down_and_forwarding_off);

fn doctor_reports_a_foreign_forward_drop_and_leaves_it_alone(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    // What a container engine does: iptables FORWARD policy DROP (iptables-nft).
    in_ns(&lab, "head", &["iptables", "-P", "FORWARD", "DROP"]);
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());
    let (out, report) = doctor(&lab, &["--fix"]);
    assert_exit(&out, 1);
    let finding = check(&report, "forward-policy");
    assert_eq!(finding["status"], "fail");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("ip filter FORWARD"),
        "{finding}"
    );
    assert!(
        in_ns(&lab, "head", &["iptables", "-S", "FORWARD"]).contains("-P FORWARD DROP"),
        "doctor --fix must not touch foreign firewalls"
    );
    // The printed fix, run by the admin, restores connectivity.
    let fix = finding["fix"].as_str().unwrap();
    paste_fix(&lab, fix);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    let (out, _) = doctor(&lab, &[]);
    assert_exit(&out, 0);
}
both_planes!(doctor_reports_a_foreign_forward_drop_and_leaves_it_alone);

#[test]
fn doctor_finds_a_stale_iptables_snat_address() {
    let Some(lab) = lab_or_skip("doctor_finds_a_stale_iptables_snat_address", Spec::nodes(1))
    else {
        return;
    };
    // The recipe's rule, written before the headnode was renumbered.
    in_ns(
        &lab,
        "head",
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "SNAT",
            "--to",
            "203.0.113.99",
        ],
    );
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "snat");
    assert_eq!(finding["status"], "fail");
    assert!(
        finding["detail"].as_str().unwrap().contains("203.0.113.99"),
        "{finding}"
    );
    assert!(
        finding["fix"]
            .as_str()
            .unwrap()
            .contains("delete the stale rule in ip nat POSTROUTING"),
        "{finding}"
    );
}

fn doctor_warns_on_a_second_default_route(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    lab.ip(
        "head",
        &[
            "route",
            "add",
            "default",
            "via",
            "10.0.0.11",
            "metric",
            "500",
        ],
    )
    .unwrap();
    let (_, report) = doctor(&lab, &plane.args(&["--public", "wan0"]));
    assert_eq!(
        check(&report, "default-route")["status"],
        "warn",
        "{report}"
    );
    // Without flags the doctor checks the gateway `up` recorded: still wan0.
    let (_, report) = doctor(&lab, &[]);
    assert_eq!(
        check(&report, "default-route")["status"],
        "warn",
        "{report}"
    );
    // With nothing recorded, detection itself is ambiguous and says which flag decides.
    assert_exit(&natgw(&lab, &["down"]), 0);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    assert!(
        check(&report, "default-route")["detail"]
            .as_str()
            .unwrap()
            .contains("--public"),
        "{report}"
    );
    // The warning's fix, pasted, deletes exactly the extra route.
    let (_, report) = doctor(&lab, &plane.args(&["--public", "wan0"]));
    paste_fix(
        &lab,
        check(&report, "default-route")["fix"].as_str().unwrap(),
    );
    let (_, report) = doctor(&lab, &plane.args(&["--public", "wan0"]));
    assert_eq!(
        check(&report, "default-route")["status"],
        "pass",
        "{report}"
    );
}
both_planes!(doctor_warns_on_a_second_default_route);

#[test]
fn lab_keep_leaves_the_topology_and_lab_down_removes_it() {
    if !root_or_skip("lab_keep_leaves_the_topology_and_lab_down_removes_it") {
        return;
    }
    let name = format!("ngwkeep{}", std::process::id());
    let exe = env!("CARGO_BIN_EXE_natgw");
    let out = Command::new(exe)
        .args(["lab", "--keep", "--name", &name])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("ip netns exec {name}-n1 bash")));
    assert!(std::path::Path::new(&format!("/run/netns/{name}-head")).exists());
    let out = Command::new(exe)
        .args(["lab", "down", "--name", &name])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        // sw, head, pub, n1, n2 and the dual-stack lab's host beyond the upstream.
        String::from_utf8_lossy(&out.stdout).contains("removed 6 namespace(s)"),
        "{}",
        text(&out)
    );
    assert!(!std::path::Path::new(&format!("/run/netns/{name}-head")).exists());
}

fn doctor_warns_on_strict_rp_filter_big_private_mtu_and_mixed_iptables(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    lab.sysctl("head", "net.ipv4.conf.all.rp_filter", "1")
        .unwrap();
    lab.ip("head", &["link", "set", "lan0", "mtu", "9000"])
        .unwrap();
    in_ns(
        &lab,
        "head",
        &[
            "iptables-legacy",
            "-A",
            "FORWARD",
            "-s",
            "10.0.0.0/24",
            "-j",
            "ACCEPT",
        ],
    );
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 0);
    assert_eq!(check(&report, "rp-filter")["status"], "warn", "{report}");
    assert!(check(&report, "rp-filter")["fix"]
        .as_str()
        .unwrap()
        .contains("rp_filter=2"));
    assert_eq!(check(&report, "mtu")["status"], "warn", "{report}");
    assert_eq!(check(&report, "netfilter")["status"], "warn", "{report}");
    assert!(check(&report, "netfilter")["detail"]
        .as_str()
        .unwrap()
        .contains("iptables-legacy"));
}
both_planes!(doctor_warns_on_strict_rp_filter_big_private_mtu_and_mixed_iptables);

fn doctor_fix_restores_a_missing_route_to_a_network_behind_a_router(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1).with_router()) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let config = std::env::temp_dir().join(format!("{}.toml", lab.name));
    std::fs::write(
        &config,
        "routes = [{ to = \"10.20.0.0/24\", via = \"10.0.0.254\" }]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    assert_exit(&plane.natgw(&lab, &["up", "--config", &config]), 0);
    lab.ip("head", &["route", "del", "10.20.0.0/24"]).unwrap();
    assert!(tcp_exchange(&lab.ns("far"), server(), Duration::from_millis(500)).is_err());
    let (out, report) = doctor(&lab, &plane.args(&["--config", &config]));
    assert_exit(&out, 1);
    assert_eq!(
        check(&report, "private-routes")["status"],
        "fail",
        "{report}"
    );
    let (out, _) = doctor(&lab, &plane.args(&["--config", &config, "--fix"]));
    assert_exit(&out, 0);
    assert_eq!(
        tcp_exchange(&lab.ns("far"), server(), TIMEOUT)
            .unwrap()
            .ip(),
        IpAddr::V4(HEAD_PUBLIC)
    );
    let _ = std::fs::remove_file(config);
}
both_planes!(doctor_fix_restores_a_missing_route_to_a_network_behind_a_router);

#[test]
fn doctor_warns_when_no_nameserver_is_configured() {
    let Some(lab) = lab_or_skip(
        "doctor_warns_when_no_nameserver_is_configured",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    // `ip netns exec` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
    let dir = std::path::PathBuf::from(format!("/etc/netns/{}", lab.ns("head")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("resolv.conf"), "# no nameserver\n").unwrap();
    let (out, report) = doctor(&lab, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_exit(&out, 0);
    assert_eq!(check(&report, "dns")["status"], "warn", "{report}");
}

fn doctor_fix_brings_the_public_interface_up_and_restores_the_recorded_default_route(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    // Taking the uplink down also takes the admin's default route with it.
    lab.ip("head", &["link", "set", "wan0", "down"]).unwrap();
    let (out, report) = doctor(&lab, &plane.args(&["--public", "wan0"]));
    assert_exit(&out, 1);
    assert_eq!(check(&report, "public-interface")["status"], "fail");
    assert_eq!(
        check(&report, "public-interface")["fix"],
        "ip link set wan0 up"
    );
    assert_eq!(check(&report, "default-route")["status"], "fail");

    let (out, report) = doctor(&lab, &plane.args(&["--public", "wan0", "--fix"]));
    assert_exit(&out, 0);
    assert_eq!(
        check(&report, "public-interface")["status"],
        "pass",
        "{report}"
    );
    // The default route went with the link; `up` recorded it, so --fix puts it back
    // as it was (same gateway and route protocol).
    assert_eq!(
        check(&report, "default-route")["status"],
        "pass",
        "{report}"
    );
    let routes = in_ns(&lab, "head", &["ip", "route", "show", "default"]);
    assert_eq!(routes.trim(), "default via 203.0.113.254 dev wan0");
}
both_planes!(doctor_fix_brings_the_public_interface_up_and_restores_the_recorded_default_route);

#[test]
fn doctor_reports_conntrack_insert_failures_from_port_exhaustion() {
    let Some(lab) = lab_or_skip(
        "doctor_reports_conntrack_insert_failures_from_port_exhaustion",
        Spec::default(),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    let (_, report) = doctor(&lab, &[]);
    assert_eq!(check(&report, "conntrack")["status"], "pass", "{report}");
    // A foreign NAT rule that squeezes all UDP into one source port: the second
    // private node's flow to the same server clashes and the kernel drops it.
    foreign_snat(&lab, "squeeze", "udp", "203.0.113.1:5000");
    assert!(udp_exchange(&lab.ns("n1"), server(), TIMEOUT).is_ok());
    assert!(udp_exchange(&lab.ns("n2"), server(), Duration::from_millis(500)).is_err());
    let (_, report) = doctor(&lab, &[]);
    let finding = check(&report, "conntrack");
    assert_eq!(finding["status"], "warn", "{report}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("failed to insert 1"),
        "{finding}"
    );
}

fn missing_nft_tool_is_named_with_its_package(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    let no_nft = [("NATGW_NFT", "/nonexistent/nft")];
    let out = natgw_env(&lab, "head", &["doctor", "--json"], &no_nft);
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(check(&report, "netfilter")["status"], "fail");
    assert!(check(&report, "netfilter")["fix"]
        .as_str()
        .unwrap()
        .contains("apt-get install nftables"));
    let out = natgw_env(&lab, "head", &["up"], &no_nft);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("apt-get install nftables"),
        "{}",
        text(&out)
    );
    assert_eq!(headnode_snapshot(&lab), before);
}
both_planes!(missing_nft_tool_is_named_with_its_package);

#[test]
fn probe_through_the_gateway_reports_the_public_address_and_the_kernel_nat_behaviour() {
    let Some(lab) = lab_or_skip(
        "probe_through_the_gateway_reports_the_public_address_and_the_kernel_nat_behaviour",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let _server = natgw_stun_server(&lab);
    let (out, report) = probe_json(
        &lab,
        "n1",
        &[
            "--stun",
            "198.51.100.10:3478",
            "--lifetime",
            "2",
            "--icmp",
            "198.51.100.10",
            "--udp",
            "198.51.100.10:3478",
        ],
    );
    assert_exit(&out, 0);
    let b = &report["stun"]["behaviour"];
    let mapped: SocketAddr = b["mapped"].as_str().unwrap().parse().unwrap();
    assert_eq!(mapped.ip(), IpAddr::V4(HEAD_PUBLIC));
    assert_eq!(b["other_address"], "198.51.100.11:3479");
    // Linux conntrack NAT as configured by natgw: port-preserving endpoint-independent
    // mapping, address-and-port-dependent filtering, no hairpinning.
    assert_eq!(b["mapping"], "endpoint-independent");
    assert_eq!(b["filtering"], "address-and-port-dependent");
    assert_eq!(b["hairpinning"], false);
    assert_eq!(b["port_preserved"], true);
    assert_eq!(b["lifetime"]["alive_after_secs"], 2);
    let reqs = report["stun"]["requirements"].as_array().unwrap();
    assert_eq!(reqs[0]["met"], true, "REQ-1");
    assert_eq!(reqs[4]["met"], false, "REQ-9 hairpinning");
    for p in report["probes"].as_array().unwrap() {
        assert_eq!(p["ok"], true, "{p}");
    }
}

#[test]
fn behaviour_classifier_on_topologies_known_by_construction() {
    let Some(lab) = lab_or_skip(
        "behaviour_classifier_on_topologies_known_by_construction",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let _server = natgw_stun_server(&lab);
    // No NAT at all: the headnode's own traffic leaves with its own address.
    let (out, report) = probe_json(&lab, "head", &["--stun", "198.51.100.10"]);
    assert_exit(&out, 0);
    assert_eq!(report["stun"]["behaviour"]["mapping"], "no-nat");
    assert_eq!(
        report["stun"]["behaviour"]["filtering"],
        "endpoint-independent"
    );

    // A NAT that maps every flow to a fresh random port.
    foreign_snat(&lab, "scramble", "udp", "203.0.113.1:1024-65535 random");
    let (out, report) = probe_json(&lab, "n1", &["--stun", "198.51.100.10"]);
    assert_exit(&out, 0);
    assert_eq!(
        report["stun"]["behaviour"]["mapping"], "address-and-port-dependent",
        "{report}"
    );
    assert_eq!(report["stun"]["requirements"][0]["met"], false);
}

#[test]
fn stun_interoperates_with_coturn_both_ways() {
    let Some(lab) = lab_or_skip("stun_interoperates_with_coturn_both_ways", Spec::nodes(1)) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    {
        // coturn's clients against natgw's server. turnutils_stunclient waits without a
        // timeout for its change-request answers, which a filtering NAT drops: run it
        // from the headnode's public side, where all three RFC 5780 answers arrive.
        let _server = natgw_stun_server(&lab);
        let client = in_ns(
            &lab,
            "head",
            &[
                "timeout",
                "10",
                "turnutils_stunclient",
                "-p",
                "3478",
                "198.51.100.10",
            ],
        );
        assert!(client.contains("RFC 5780 response 3"), "{client}");
        assert!(
            client.contains("UDP reflexive addr: 203.0.113.1:"),
            "{client}"
        );
        assert!(
            client.contains("Other addr: : 198.51.100.11:3479"),
            "{client}"
        );
        assert!(!client.contains("error"), "{client}");
        let discovery = in_ns(
            &lab,
            "n1",
            &["turnutils_natdiscovery", "-m", "-f", "198.51.100.10"],
        );
        assert!(
            discovery.contains("NAT with Endpoint Independent Mapping!"),
            "{discovery}"
        );
        assert!(
            discovery.contains("NAT with Address and Port Dependent Filtering!"),
            "{discovery}"
        );
    }
    // natgw's client against coturn's server, with the same verdict.
    let _coturn = coturn(&lab);
    let (out, report) = probe_json(&lab, "n1", &["--stun", "198.51.100.10:3478"]);
    assert_exit(&out, 0);
    let b = &report["stun"]["behaviour"];
    assert_eq!(b["mapping"], "endpoint-independent", "{report}");
    assert_eq!(b["filtering"], "address-and-port-dependent");
    assert_eq!(
        b["mapped"].as_str().unwrap().split(':').next(),
        Some("203.0.113.1")
    );
}

#[test]
fn probe_failures_are_per_probe_results_within_their_timeout() {
    let Some(lab) = lab_or_skip(
        "probe_failures_are_per_probe_results_within_their_timeout",
        Spec::nodes(1),
    ) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    let _not_stun = Listener::start(&lab.ns("pub"), server()).unwrap();
    // Names resolve with no nameserver, so an unknown host fails at once, locally.
    let dir = std::path::PathBuf::from(format!("/etc/netns/{}", lab.ns("n1")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("resolv.conf"), "").unwrap();
    let started = std::time::Instant::now();
    let (out, report) = probe_json(
        &lab,
        "n1",
        &[
            "--timeout",
            "1",
            "--stun",
            "198.51.100.10:7000",
            "--tcp",
            "198.51.100.99:80",
            "--tcp",
            "no-such-host.invalid:80",
            "--udp",
            "198.51.100.10:9",
            "--icmp",
            "198.51.100.99",
        ],
    );
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_exit(&out, 1);
    assert!(elapsed < Duration::from_secs(10), "probes took {elapsed:?}");
    let probes = report["probes"].as_array().unwrap();
    let detail = |i: usize| probes[i]["detail"].as_str().unwrap().to_string();
    assert!(probes.iter().all(|p| p["ok"] == false), "{report}");
    assert!(detail(0).contains("no echo reply"), "{}", detail(0));
    assert!(
        detail(1).contains("no answer from 198.51.100.99:80"),
        "{}",
        detail(1)
    );
    assert!(
        detail(2).contains("unknown host no-such-host.invalid"),
        "{}",
        detail(2)
    );
    assert!(detail(3).contains("port unreachable"), "{}", detail(3));
    assert!(
        report["stun"]["error"]
            .as_str()
            .unwrap()
            .contains("no STUN answer from 198.51.100.10:7000"),
        "{report}"
    );

    let out = natgw_env(&lab, "n1", &["probe"], &[]);
    assert_exit(&out, 2);
    // A server without a distinct alternate cannot do RFC 5780; refused before binding.
    let out = natgw_env(
        &lab,
        "pub",
        &[
            "stun-server",
            "--listen",
            "198.51.100.10",
            "--alt",
            "198.51.100.10:3479",
        ],
        &[],
    );
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--alt must differ"),
        "{}",
        text(&out)
    );
    let out = natgw_env(
        &lab,
        "pub",
        &["stun-server", "--listen", "not-an-address"],
        &[],
    );
    assert_exit(&out, 2);
}

fn n1_routes(lab: &Lab) -> String {
    String::from_utf8_lossy(&lab.ip("n1", &["route", "show"]).unwrap().stdout).into_owned()
}

#[test]
fn node_up_and_down_manage_the_default_route() {
    let Some(lab) = lab_or_skip("node_up_and_down_manage_the_default_route", Spec::nodes(2)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    lab.ip("n1", &["route", "del", "default"]).unwrap();
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());

    let out = natgw_env(&lab, "n1", &["node", "up", "--gateway", "10.0.0.1"], &[]);
    assert_exit(&out, 0);
    assert!(
        n1_routes(&lab).contains("default via 10.0.0.1 dev eth0 proto 89"),
        "{}",
        n1_routes(&lab)
    );
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    let again = natgw_env(&lab, "n1", &["node", "up", "--gateway", "10.0.0.1"], &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no changes"),
        "{}",
        text(&again)
    );
    let check = natgw_env(&lab, "n1", &["node", "check", "--json"], &[]);
    assert_exit(&check, 0);
    assert_eq!(check_status(&json(&check), "gateway"), "pass");
    assert_exit(&natgw_env(&lab, "n1", &["node", "down"], &[]), 0);
    assert!(!n1_routes(&lab).contains("default"), "{}", n1_routes(&lab));
    let check = natgw_env(&lab, "n1", &["node", "check", "--json"], &[]);
    assert_exit(&check, 1);
    assert_eq!(check_status(&json(&check), "default-route"), "fail");

    // A different default is only replaced on request, and comes back with `down`.
    lab.ip("n1", &["route", "add", "default", "via", "10.0.0.12"])
        .unwrap();
    let before = n1_routes(&lab);
    let out = natgw_env(&lab, "n1", &["node", "up", "--gateway", "10.0.0.1"], &[]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("default via 10.0.0.12 dev eth0"),
        "{}",
        text(&out)
    );
    assert_eq!(n1_routes(&lab), before);
    assert_exit(
        &natgw_env(
            &lab,
            "n1",
            &["node", "up", "--gateway", "10.0.0.1", "--replace"],
            &[],
        ),
        0,
    );
    assert!(n1_routes(&lab).contains("default via 10.0.0.1"));
    assert_exit(&natgw_env(&lab, "n1", &["node", "down"], &[]), 0);
    assert_eq!(
        n1_routes(&lab),
        before,
        "node down restores the previous default exactly"
    );
}

fn check_status(report: &serde_json::Value, id: &str) -> String {
    check(report, id)["status"].as_str().unwrap().to_string()
}

#[test]
fn node_up_refuses_gateways_that_are_off_link_or_silent() {
    let Some(lab) = lab_or_skip(
        "node_up_refuses_gateways_that_are_off_link_or_silent",
        Spec::nodes(1),
    ) else {
        return;
    };
    let before = n1_routes(&lab);
    let out = natgw_env(
        &lab,
        "n1",
        &["node", "up", "--gateway", "192.168.77.1", "--replace"],
        &[],
    );
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not on-link"),
        "{}",
        text(&out)
    );
    let started = std::time::Instant::now();
    let out = natgw_env(
        &lab,
        "n1",
        &["node", "up", "--gateway", "10.0.0.99", "--replace"],
        &[],
    );
    assert_exit(&out, 1);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not answer ARP"),
        "{}",
        text(&out)
    );
    assert_eq!(n1_routes(&lab), before, "nothing half-changed");
}

#[test]
fn node_persist_writes_the_config_of_the_network_manager_found() {
    let Some(lab) = lab_or_skip(
        "node_persist_writes_the_config_of_the_network_manager_found",
        Spec::nodes(1),
    ) else {
        return;
    };
    let root = std::env::temp_dir().join(format!("{}-root", lab.name));
    let network = root.join("etc/systemd/network");
    std::fs::create_dir_all(&network).unwrap();
    std::fs::write(
        network.join("10-lan.network"),
        "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.11/24\n",
    )
    .unwrap();
    let root_arg = root.to_str().unwrap();
    let dry = natgw_env(
        &lab,
        "n1",
        &[
            "node",
            "persist",
            "--gateway",
            "10.0.0.1",
            "--root",
            root_arg,
            "--dry-run",
        ],
        &[],
    );
    assert_exit(&dry, 0);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would change"),
        "{}",
        text(&dry)
    );
    let dropin = network.join("10-lan.network.d/natgw-gateway.conf");
    assert!(!dropin.exists(), "--dry-run wrote a file");
    assert_exit(
        &natgw_env(
            &lab,
            "n1",
            &[
                "node",
                "persist",
                "--gateway",
                "10.0.0.1",
                "--root",
                root_arg,
            ],
            &[],
        ),
        0,
    );
    assert!(std::fs::read_to_string(&dropin)
        .unwrap()
        .contains("[Network]\nGateway=10.0.0.1\n"));
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let none = natgw_env(
        &lab,
        "n1",
        &[
            "node",
            "persist",
            "--gateway",
            "10.0.0.1",
            "--root",
            empty.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&none, 1);
    assert!(String::from_utf8_lossy(&none.stdout)
        .contains("GATEWAY=10.0.0.1 in /etc/sysconfig/network"));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn json_logs_are_one_object_per_line_and_read_commands_stay_quiet() {
    let Some(lab) = lab_or_skip(
        "json_logs_are_one_object_per_line_and_read_commands_stay_quiet",
        Spec::nodes(1),
    ) else {
        return;
    };
    // An empty NATGW_LOG is the default filter, whatever the test runner's is.
    let defaults = [("NATGW_LOG", "")];
    let events = |out: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };

    let up = natgw_env(
        &lab,
        "head",
        &["--log-format", "json", "-v", "up"],
        &defaults,
    );
    assert_exit(&up, 0);
    let logged = events(&up);
    assert!(
        logged.iter().any(|e| e["message"] == "starting"),
        "{}",
        text(&up)
    );
    for event in &logged {
        assert!(event["level"].is_string(), "{event}");
        assert!(
            event["target"].as_str().unwrap().starts_with("natgw"),
            "{event}"
        );
    }

    // Read commands on a gateway that is in place: their output, and no log line.
    for args in [&["status"][..], &["plan"], &["status", "--json"]] {
        let out = natgw_env(&lab, "head", args, &defaults);
        assert_exit(&out, 0);
        assert!(out.stderr.is_empty(), "{args:?} logged: {}", text(&out));
    }

    // A refused input is one event carrying the error and the exit code.
    let out = natgw_env(
        &lab,
        "head",
        &["--log-format", "json", "up", "--public", "eth9"],
        &defaults,
    );
    assert_exit(&out, 2);
    let logged = events(&out);
    assert_eq!(logged.len(), 1, "{}", text(&out));
    assert_eq!(logged[0]["level"], "ERROR");
    assert_eq!(logged[0]["outcome"], "refused");
    assert_eq!(logged[0]["exit_code"], 2);
    assert!(
        logged[0]["message"]
            .as_str()
            .unwrap()
            .contains("public interface \"eth9\" does not exist"),
        "{}",
        text(&out)
    );
    assert_exit(&natgw(&lab, &["down"]), 0);
}

#[test]
fn doctor_counts_only_real_snat_statements() {
    let Some(lab) = lab_or_skip("doctor_counts_only_real_snat_statements", Spec::nodes(1)) else {
        return;
    };
    // A chain that only has "snat" in its name and a counter that only mentions it.
    let nft = |args: &[&str]| {
        let mut full = vec!["nft"];
        full.extend_from_slice(args);
        in_ns(&lab, "head", &full);
    };
    nft(&["add", "table", "ip", "foreign"]);
    nft(&["add", "chain", "ip", "foreign", "snat_x"]);
    nft(&[
        "add",
        "rule",
        "ip",
        "foreign",
        "snat_x",
        "ip",
        "saddr",
        "10.0.0.0/24",
        "counter",
    ]);
    let hook = "{ type nat hook postrouting priority srcnat; }";
    nft(&["add", "chain", "ip", "foreign", "post", hook]);
    nft(&[
        "add", "rule", "ip", "foreign", "post", "oifname", "wan0", "jump", "snat_x",
    ]);
    nft(&[
        "add",
        "rule",
        "ip",
        "foreign",
        "post",
        "counter",
        "comment",
        "\"snat for lan0\"",
    ]);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "snat");
    assert_eq!(finding["status"], "fail", "{finding}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .starts_with("no rule source-translates"),
        "{finding}"
    );
}

fn doctor_passes_a_foreign_drop_chain_that_accepts_the_private_prefix(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    in_ns(&lab, "head", &["nft", "add", "table", "ip", "guard"]);
    let hook = "{ type filter hook forward priority filter; policy drop; }";
    in_ns(
        &lab,
        "head",
        &["nft", "add", "chain", "ip", "guard", "forward", hook],
    );
    for rule in [
        &["ct", "state", "established,related", "accept"][..],
        &["ip", "saddr", "10.0.0.0/24", "accept"],
    ] {
        let mut full = vec!["nft", "add", "rule", "ip", "guard", "forward"];
        full.extend_from_slice(rule);
        in_ns(&lab, "head", &full);
    }
    // The chain really lets the gateway's traffic through.
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    assert_doctor_passes(&lab, "forward-policy");

    // A rule in it that drops the private side is reported, by its text.
    let drop = [
        "nft", "insert", "rule", "ip", "guard", "forward", "iifname", "lan0", "drop",
    ];
    in_ns(&lab, "head", &drop);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "forward-policy");
    assert!(
        finding["detail"].as_str().unwrap().ends_with(
            "drops new connections from 10.0.0.0/24 (lan0) to wan0: `iifname lan0 drop`"
        ),
        "{finding}"
    );
}
both_planes!(doctor_passes_a_foreign_drop_chain_that_accepts_the_private_prefix);

fn doctor_reports_a_rule_added_inside_natgws_table_and_fix_restores_it(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let target = SocketAddr::new(IpAddr::V4(Lab::node_address(1)), 7001);
    let _inbound = Listener::start(&lab.ns("n1"), target).unwrap();
    lab.route_private_from_upstream().unwrap();
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 0);
    assert_eq!(check(&report, "natgw-table")["status"], "pass");
    assert!(tcp_exchange(&lab.ns("pub"), target, Duration::from_millis(500)).is_err());

    // Someone opens the public side inside natgw's own table. (On the eBPF plane the
    // egress program translates the node's answer, which then matches nothing at the
    // upstream: there the added rule closes the private side instead.)
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    let side = if plane.is_ebpf() { "lan0" } else { "wan0" };
    let verdict = if plane.is_ebpf() { "drop" } else { "accept" };
    let edit = [
        "nft", "insert", "rule", "inet", "natgw", "forward", "iifname", side, verdict,
    ];
    in_ns(&lab, "head", &edit);
    if plane.is_ebpf() {
        assert!(
            tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err(),
            "control: the added rule stops outbound"
        );
    } else {
        assert!(
            tcp_exchange(&lab.ns("pub"), target, TIMEOUT).is_ok(),
            "control: the added rule lets unsolicited inbound through"
        );
    }
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "natgw-table");
    assert_eq!(finding["status"], "fail", "{report}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("changed outside natgw"),
        "{finding}"
    );

    let (out, report) = doctor(&lab, &["--fix"]);
    assert_exit(&out, 0);
    assert_eq!(check(&report, "natgw-table")["status"], "pass", "{report}");
    let table = in_ns(&lab, "head", &["nft", "list", "table", "inet", "natgw"]);
    assert!(
        !table.contains(&format!("iifname \"{side}\" {verdict}")),
        "{table}"
    );
    assert!(tcp_exchange(&lab.ns("pub"), target, Duration::from_millis(500)).is_err());
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));

    // Gone altogether (a `flush ruleset`): reported, and --fix puts it back.
    in_ns(&lab, "head", &["nft", "flush", "ruleset"]);
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    assert!(check(&report, "natgw-table")["detail"]
        .as_str()
        .unwrap()
        .contains("is gone"));
    let (out, _) = doctor(&lab, &["--fix"]);
    assert_exit(&out, 0);
}
both_planes!(doctor_reports_a_rule_added_inside_natgws_table_and_fix_restores_it);

#[test]
fn doctor_mtu_fix_is_a_command_nft_accepts() {
    let Some(lab) = lab_or_skip("doctor_mtu_fix_is_a_command_nft_accepts", Spec::nodes(1)) else {
        return;
    };
    assert_exit(&natgw(&lab, &["up"]), 0);
    lab.ip("head", &["link", "set", "lan0", "mtu", "9000"])
        .unwrap();
    let (_, report) = doctor(&lab, &[]);
    let finding = check(&report, "mtu");
    assert_eq!(finding["status"], "warn", "{report}");
    let fix = finding["fix"].as_str().unwrap();
    assert!(fix.contains("mss_clamp = true"), "{fix}");
    assert!(
        fix.lines().any(|l| l.starts_with("# ")),
        "prose on its own lines: {fix}"
    );
    paste_fix(&lab, fix);
    let (_, report) = doctor(&lab, &[]);
    assert_eq!(check(&report, "mtu")["status"], "pass", "{report}");
}

#[test]
fn doctor_points_dockers_forward_drop_at_docker_user() {
    let Some(lab) = lab_or_skip(
        "doctor_points_dockers_forward_drop_at_docker_user",
        Spec::nodes(1),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    // Docker's layout (iptables-nft): FORWARD drops, jumps to DOCKER-USER first.
    for args in [
        &["-N", "DOCKER"][..],
        &["-N", "DOCKER-USER"],
        &["-A", "DOCKER-USER", "-j", "RETURN"],
        &["-A", "FORWARD", "-j", "DOCKER-USER"],
        &[
            "-A",
            "FORWARD",
            "-o",
            "docker0",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        &["-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"],
        &["-P", "FORWARD", "DROP"],
    ] {
        let mut full = vec!["iptables"];
        full.extend_from_slice(args);
        in_ns(&lab, "head", &full);
    }
    assert!(tcp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "forward-policy");
    let fix = finding["fix"].as_str().unwrap();
    assert!(
        fix.starts_with("iptables -I DOCKER-USER -i lan0 -o wan0 -j ACCEPT\n"),
        "{finding}"
    );
    paste_fix(&lab, fix);
    assert_translated(&lab, "n1", IpAddr::V4(HEAD_PUBLIC));
    // The conntrack match iptables-nft keeps opaque in JSON is read from
    // iptables-nft-save: the replies are seen as accepted.
    assert_doctor_passes(&lab, "forward-policy");
}

#[test]
fn doctor_prints_checks_it_cannot_run_as_skip() {
    let Some(lab) = lab_or_skip("doctor_prints_checks_it_cannot_run_as_skip", Spec::nodes(1))
    else {
        return;
    };
    let no_nft = [("NATGW_NFT", "/nonexistent/nft")];
    let out = natgw_env(&lab, "head", &["doctor", "--json"], &no_nft);
    let report = json(&out);
    for id in ["snat", "forward-policy", "natgw-table"] {
        assert_eq!(check(&report, id)["status"], "skip", "{report}");
    }
    let out = natgw_env(&lab, "head", &["doctor"], &no_nft);
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("skip  snat") && l.contains("nft tool is not installed")),
        "{stdout}"
    );
}

#[test]
fn doctor_reports_old_conntrack_losses_as_old_and_then_only_new_ones() {
    let Some(lab) = lab_or_skip(
        "doctor_reports_old_conntrack_losses_as_old_and_then_only_new_ones",
        Spec::default(),
    ) else {
        return;
    };
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    assert_exit(&natgw(&lab, &["up"]), 0);
    foreign_snat(&lab, "squeeze", "udp", "203.0.113.1:5000");
    assert!(udp_exchange(&lab.ns("n1"), server(), TIMEOUT).is_ok());
    assert!(udp_exchange(&lab.ns("n2"), server(), Duration::from_millis(500)).is_err());
    // First run: the totals, said to be totals.
    let (_, report) = doctor(&lab, &[]);
    let finding = check(&report, "conntrack");
    assert_eq!(finding["status"], "warn", "{report}");
    let detail = finding["detail"].as_str().unwrap();
    assert!(
        detail.contains("since boot") && detail.contains("may be old"),
        "{finding}"
    );
    let fix = finding["fix"].as_str().unwrap();
    assert!(
        fix.contains("more SNAT addresses") && !fix.contains("nf_conntrack_max"),
        "{fix}"
    );
    // Nothing new since: nothing to report.
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 0);
    let finding = check(&report, "conntrack");
    assert_eq!(finding["status"], "pass", "{report}");
    assert!(finding["detail"]
        .as_str()
        .unwrap()
        .contains("no connection lost since the last doctor run"));
}

#[test]
fn probe_without_nat_says_so_instead_of_hairpinning_yes() {
    let Some(lab) = lab_or_skip(
        "probe_without_nat_says_so_instead_of_hairpinning_yes",
        Spec::nodes(1),
    ) else {
        return;
    };
    let _server = natgw_stun_server(&lab);
    let out = natgw_env(&lab, "head", &["probe", "--stun", "198.51.100.10"], &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mapping:          no NAT"), "{stdout}");
    assert!(
        stdout.contains("hairpinning:      n/a (no NAT)"),
        "{stdout}"
    );
    assert!(!stdout.contains("hairpinning:      yes"), "{stdout}");
    let (_, report) = probe_json(&lab, "head", &["--stun", "198.51.100.10"]);
    assert_eq!(
        report["stun"]["behaviour"]["hairpinning"],
        serde_json::Value::Null
    );
}
