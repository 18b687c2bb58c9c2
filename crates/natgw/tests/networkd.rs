//! `natgw node persist` checked by systemd-networkd itself: networkd runs inside a
//! network namespace of the test's own, in a private mount namespace whose
//! /etc/systemd/network is the test's directory (and whose /sys is read-only, so
//! networkd does not wait for udev). Nothing of the host's networkd is touched.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// A namespace with a veth `eth1` whose peer is up, removed when dropped.
struct Node(String);

impl Node {
    fn new(name: String) -> Node {
        for args in [
            vec!["netns", "add", &name],
            vec![
                "-n", &name, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1",
            ],
            vec!["-n", &name, "link", "set", "peer1", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        }
        Node(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs networkd for a few seconds on `config_dir` as /etc/systemd/network.
    fn networkd(&self, config_dir: &Path) -> String {
        let script = format!(
            "mount -t tmpfs tmpfs /run/systemd && mount -o remount,ro /sys && mount --bind {} /etc/systemd/network && SYSTEMD_LOG_LEVEL=info timeout 3 {NETWORKD}",
            config_dir.display()
        );
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "unshare", "-m", "sh", "-c", &script,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn networkd_applies_the_gateway_natgw_node_persist_wrote() {
    if !root_or_skip("networkd_applies_the_gateway_natgw_node_persist_wrote") {
        return;
    }
    if !Path::new(NETWORKD).exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "under CI systemd-networkd must be there (scripts/install-deps.sh installs systemd)"
        );
        eprintln!("SKIPPED networkd check: {NETWORKD} missing (apt-get install systemd)");
        return;
    }
    let node = Node::new(format!("ngwnd{}", std::process::id()));
    let root = std::env::temp_dir().join(format!("{}-root", node.0));
    let network = root.join("etc/systemd/network");
    std::fs::create_dir_all(&network).unwrap();
    // The admin's file, with an IPv6 gateway that must survive.
    std::fs::write(
        network.join("10-eth1.network"),
        "[Match]\nName=eth1\n\n[Network]\nAddress=10.77.0.2/24\nAddress=fd77::2/64\nGateway=fd77::1\n",
    )
    .unwrap();
    node.networkd(&network);
    assert!(node.ip(&["addr", "show", "eth1"]).contains("10.77.0.2/24"));

    let out = Command::new("ip")
        .args(["netns", "exec", &node.0, &binary()])
        .args(["node", "persist", "--gateway", "10.77.0.1", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_exit(&out, 0);

    // A reboot, as networkd sees it: the interface comes up with nothing configured.
    node.ip(&["addr", "flush", "dev", "eth1"]);
    node.ip(&["link", "set", "eth1", "down"]);
    let log = node.networkd(&network);
    let v4 = node.ip(&["route", "show", "default"]);
    assert_eq!(
        v4.lines().map(str::trim).collect::<Vec<_>>(),
        ["default via 10.77.0.1 dev eth1 proto static"],
        "networkd log:\n{log}"
    );
    let v6 = node.ip(&["-6", "route", "show", "default"]);
    assert!(v6.contains("default via fd77::1 dev eth1"), "{v6}\n{log}");
    let _ = std::fs::remove_dir_all(root);
}
