//! End-to-end scenarios for what autodetection and `doctor --fix` may take over: never a
//! tunnel, overlay or container runtime's interface, never a host where natgw was not
//! brought up; and doctor's forward-policy judged per private interface.

mod common;

use common::*;
use natgw_lab::Spec;

fn autodetection_skips_tunnels_and_container_bridges_and_says_so(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    // A VPN's tun device and Docker's bridge, both with private addresses.
    lab.ip("head", &["tuntap", "add", "tun0", "mode", "tun"])
        .unwrap();
    lab.ip("head", &["addr", "add", "10.8.0.1/24", "dev", "tun0"])
        .unwrap();
    lab.ip("head", &["link", "set", "tun0", "up"]).unwrap();
    lab.ip("head", &["link", "add", "docker0", "type", "bridge"])
        .unwrap();
    lab.ip("head", &["addr", "add", "172.17.0.1/16", "dev", "docker0"])
        .unwrap();
    lab.ip("head", &["link", "set", "docker0", "up"]).unwrap();

    let out = plane.natgw(&lab, &["plan", "--json"]);
    assert_exit(&out, 0);
    let plan = json(&out);
    let private: Vec<&str> = plan["desired"]["private"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(private, ["lan0"], "{plan}");
    let warnings = plan["desired"]["warnings"].to_string();
    assert!(
        warnings.contains("skipped tun0: a tunnel or overlay (tun)"),
        "{warnings}"
    );
    assert!(
        warnings.contains("skipped docker0: a container or VM runtime's interface"),
        "{warnings}"
    );
    // Named, they join.
    let out = plane.natgw(&lab, &["plan", "--private", "lan0", "--private", "tun0"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("10.8.0.0/24"), "{}", text(&out));
}
both_planes!(autodetection_skips_tunnels_and_container_bridges_and_says_so);

#[test]
fn doctor_fix_does_not_create_a_gateway_natgw_never_brought_up() {
    let Some(lab) = lab_or_skip(
        "doctor_fix_does_not_create_a_gateway_natgw_never_brought_up",
        Spec::nodes(1),
    ) else {
        return;
    };
    let before = headnode_snapshot(&lab);
    let out = natgw(&lab, &["doctor", "--fix"]);
    assert!(
        stdout(&out).contains("natgw was never brought up here"),
        "{}",
        text(&out)
    );
    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "doctor --fix created a gateway"
    );
}

fn forward_policy_is_judged_for_every_private_interface(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    // A second private network; a foreign drop chain that lets only it through.
    add_private_network(&lab, "lan1", "192.168.7.1/24");
    assert_exit(&plane.natgw(&lab, &["up"]), 0);
    in_ns(&lab, "head", &["nft", "add", "table", "ip", "guard"]);
    in_ns(
        &lab,
        "head",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "guard",
            "gate",
            "{ type filter hook forward priority 10; policy drop; }",
        ],
    );
    in_ns(
        &lab,
        "head",
        &[
            "nft", "add", "rule", "ip", "guard", "gate", "iifname", "lan1", "accept",
        ],
    );
    let (out, report) = doctor(&lab, &[]);
    assert_exit(&out, 1);
    let finding = check(&report, "forward-policy");
    assert_eq!(finding["status"], "fail", "{report}");
    assert!(
        finding["detail"].as_str().unwrap().contains("lan0"),
        "{finding}"
    );
    // lan1's replies are dropped too: the fix covers both networks, and pasted whole
    // into a shell it lets the gateway's traffic through.
    let fix = finding["fix"].as_str().unwrap();
    for iface in ["lan0", "lan1"] {
        assert!(
            fix.contains(&format!("iifname \"wan0\" oifname \"{iface}\"")),
            "{fix}"
        );
    }
    paste_fix(&lab, fix);
    assert_doctor_passes(&lab, "forward-policy");
}
both_planes!(forward_policy_is_judged_for_every_private_interface);
