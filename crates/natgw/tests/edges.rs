//! End-to-end scenarios for the edges of natgw's reach: `node persist` on files of a
//! scratch root, `node up/down/check` on a lab's private node, and `natgw lab` itself
//! (interrupted, killed, run twice). Each lab has unique namespace names.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use natgw_lab::Spec;

fn persist(lab: &natgw_lab::Lab, root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "node",
        "persist",
        "--gateway",
        "10.0.0.1",
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    natgw_env(lab, "n1", &args, &[])
}

#[test]
fn node_persist_keeps_modes_shows_only_diffs_and_reruns_as_a_no_op() {
    let Some(lab) = lab_or_skip(
        "node_persist_keeps_modes_shows_only_diffs_and_reruns_as_a_no_op",
        Spec::nodes(1),
    ) else {
        return;
    };
    let root = scratch(&lab, "nm-root");
    let dir = root.join("etc/NetworkManager/system-connections");
    std::fs::create_dir_all(&dir).unwrap();
    let keyfile = dir.join("lan");
    std::fs::write(
        &keyfile,
        "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n[802-1x]\npassword=hunter2\n[ipv4]\naddress1=10.0.0.11/24\ngateway=10.0.0.254\nmethod=manual\n",
    )
    .unwrap();
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();

    let dry = persist(&lab, &root, &["--dry-run"]);
    assert_exit(&dry, 0);
    let shown = stdout(&dry);
    assert!(
        shown.contains("-gateway=10.0.0.254") && shown.contains("+gateway=10.0.0.1"),
        "{}",
        text(&dry)
    );
    assert!(!shown.contains("hunter2"), "secret printed: {shown}");
    let json = persist(&lab, &root, &["--dry-run", "--json"]);
    assert!(
        !stdout(&json).contains("hunter2"),
        "secret in JSON: {}",
        stdout(&json)
    );

    assert_exit(&persist(&lab, &root, &[]), 0);
    let meta = std::fs::metadata(&keyfile).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "keyfile mode kept"
    );
    assert!(std::fs::read_to_string(&keyfile)
        .unwrap()
        .contains("gateway=10.0.0.1\n"));
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 1, "no temporary file left behind");

    let again = persist(&lab, &root, &[]);
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("nothing to write"),
        "{}",
        text(&again)
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn node_persist_never_writes_through_a_symlink_out_of_root_and_refuses_bad_gateways() {
    let Some(lab) = lab_or_skip(
        "node_persist_never_writes_through_a_symlink_out_of_root_and_refuses_bad_gateways",
        Spec::nodes(1),
    ) else {
        return;
    };
    let root = scratch(&lab, "link-root");
    let outside = scratch(&lab, "outside");
    std::fs::create_dir_all(root.join("etc/systemd")).unwrap();
    std::fs::write(outside.join("10-lan.network"), "[Match]\nName=eth0\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("etc/systemd/network")).unwrap();
    let out = persist(&lab, &root, &[]);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "wrote outside --root: {}",
        text(&out)
    );

    let net = root.join("etc/network");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(
        net.join("interfaces"),
        "iface eth0 inet static\n address 10.0.0.11/24\n",
    )
    .unwrap();
    for bad in ["10.0.0.0", "10.0.0.255"] {
        let out = natgw_env(
            &lab,
            "n1",
            &[
                "node",
                "persist",
                "--gateway",
                bad,
                "--root",
                root.to_str().unwrap(),
            ],
            &[],
        );
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("not a host"), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read_to_string(net.join("interfaces")).unwrap(),
        "iface eth0 inet static\n address 10.0.0.11/24\n"
    );
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::remove_dir_all(outside);
}

fn defaults(lab: &natgw_lab::Lab, role: &str) -> String {
    let out = lab.ip(role, &["-4", "route", "show", "default"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn node_down_restores_every_previous_default_exactly_or_changes_nothing() {
    let Some(lab) = lab_or_skip(
        "node_down_restores_every_previous_default_exactly_or_changes_nothing",
        Spec::nodes(2),
    ) else {
        return;
    };
    lab.ip("n1", &["route", "del", "default"]).unwrap();
    lab.ip(
        "n1",
        &["route", "add", "default", "dev", "eth0", "proto", "static"],
    )
    .unwrap();
    lab.ip(
        "n1",
        &[
            "route",
            "add",
            "default",
            "via",
            "10.0.0.12",
            "metric",
            "100",
            "proto",
            "dhcp",
        ],
    )
    .unwrap();
    let before = defaults(&lab, "n1");
    let up = ["node", "up", "--gateway", "10.0.0.1", "--replace"];
    assert_exit(&natgw_env(&lab, "n1", &up, &[]), 0);
    assert_eq!(
        defaults(&lab, "n1").trim(),
        "default via 10.0.0.1 dev eth0 proto 89",
        "one default left"
    );
    let down = natgw_env(&lab, "n1", &["node", "down"], &[]);
    assert_exit(&down, 0);
    assert_eq!(defaults(&lab, "n1"), before, "{}", text(&down));

    // Changed by someone after `node up`: said, and nothing touched.
    assert_exit(&natgw_env(&lab, "n1", &up, &[]), 0);
    lab.ip(
        "n1",
        &[
            "route",
            "add",
            "default",
            "via",
            "10.0.0.12",
            "metric",
            "50",
        ],
    )
    .unwrap();
    let changed = defaults(&lab, "n1");
    let down = natgw_env(&lab, "n1", &["node", "down"], &[]);
    assert_exit(&down, 1);
    assert!(
        stderr(&down).contains("changed after `natgw node up`"),
        "{}",
        text(&down)
    );
    assert_eq!(defaults(&lab, "n1"), changed);
}

#[test]
fn node_check_asks_the_gateway_instead_of_trusting_a_stale_neighbour_entry() {
    let Some(lab) = lab_or_skip(
        "node_check_asks_the_gateway_instead_of_trusting_a_stale_neighbour_entry",
        Spec::nodes(1),
    ) else {
        return;
    };
    let check = natgw_env(&lab, "n1", &["node", "check", "--json"], &[]);
    assert_eq!(
        check_status(&json(&check), "gateway"),
        "pass",
        "{}",
        text(&check)
    );
    let link = String::from_utf8_lossy(
        &lab.ip("head", &["-o", "link", "show", "lan0"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    lab.ip("head", &["link", "set", "lan0", "down"]).unwrap();
    lab.ip(
        "n1",
        &[
            "neigh", "replace", "10.0.0.1", "lladdr", &mac, "dev", "eth0", "nud", "stale",
        ],
    )
    .unwrap();
    let check = natgw_env(&lab, "n1", &["node", "check", "--json"], &[]);
    assert_exit(&check, 1);
    assert_eq!(
        check_status(&json(&check), "gateway"),
        "fail",
        "{}",
        text(&check)
    );
}

fn check_status(report: &serde_json::Value, id: &str) -> String {
    check(report, id)["status"].as_str().unwrap().to_string()
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// natgw's record directory of namespace `ns`, as natgw inside it resolves it.
fn record_dir(ns: &str) -> std::path::PathBuf {
    natgw_lab::in_netns(ns, || {
        natgw_linux::state_store::path()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf()
    })
    .unwrap()
}

/// Waits up to `secs` for `done`.
fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn lab_namespaces(name: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect()
}

fn lab_command(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command.arg("lab").args(args);
    command
}

#[test]
fn lab_killed_by_sigterm_or_sigkill_leaves_nothing_behind_and_its_name_is_refused_while_it_runs() {
    if !root_or_skip("lab_killed_by_sigterm_or_sigkill_leaves_nothing_behind_and_its_name_is_refused_while_it_runs") {
        return;
    }
    for (i, signal) in ["TERM", "KILL"].iter().enumerate() {
        let name = format!("ngwsig{}x{i}", std::process::id());
        let mut lab = lab_command(&["--name", &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let head = format!("{name}-head");
        // Signal it once its inner `natgw up` has written the headnode's record.
        let mut records = None;
        assert!(
            eventually(60, || {
                if netns_exists(&head) {
                    let dir = record_dir(&head);
                    if dir.join("state.json").exists() {
                        records = Some(dir);
                    }
                }
                records.is_some()
            }),
            "lab {name} never got its gateway up"
        );
        let records = records.unwrap();
        if i == 0 {
            let second = lab_command(&["--name", &name]).output().unwrap();
            assert_exit(&second, 2);
            assert!(stderr(&second).contains("is running"), "{}", text(&second));
            assert!(
                netns_exists(&head),
                "the second lab removed the first one's namespaces"
            );
        }
        kill_and_check_nothing_left(&mut lab, signal, &name, &records);
    }
}

/// Sends `signal` to the lab process, then checks that its namespaces, the headnode's
/// record directory `records` and its marker are all gone.
fn kill_and_check_nothing_left(
    lab: &mut std::process::Child,
    signal: &str,
    name: &str,
    records: &Path,
) {
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &lab.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = lab.wait();
    assert!(
        eventually(20, || lab_namespaces(name).is_empty()),
        "SIG{signal}: namespaces left: {:?}",
        lab_namespaces(name)
    );
    assert!(
        eventually(10, || !records.exists()),
        "SIG{signal}: record {} left",
        records.display()
    );
    assert!(
        !Path::new("/run/natgw-lab").join(name).exists(),
        "marker left"
    );
}

#[test]
fn lab_down_and_lab_leave_a_namespace_the_lab_did_not_make() {
    if !root_or_skip("lab_down_and_lab_leave_a_namespace_the_lab_did_not_make") {
        return;
    }
    let name = format!("ngwforeign{}", std::process::id());
    let foreign = format!("{name}-head");
    natgw_lab::ip(&["netns", "add", &foreign]).unwrap();
    let down = lab_command(&["down", "--name", &name]).output().unwrap();
    let lab = lab_command(&["--name", &name]).output().unwrap();
    let survived = netns_exists(&foreign);
    let _ = natgw_lab::ip(&["netns", "del", &foreign]);
    assert!(survived, "{}\n{}", text(&down), text(&lab));
    assert!(stdout(&down).contains("alone"), "{}", text(&down));
    assert_exit(&lab, 2);
    assert!(
        stderr(&lab).contains("not made by natgw lab"),
        "{}",
        text(&lab)
    );
}

#[test]
fn a_kept_lab_is_not_replaced_by_a_new_one_of_the_same_name() {
    if !root_or_skip("a_kept_lab_is_not_replaced_by_a_new_one_of_the_same_name") {
        return;
    }
    let name = format!("ngwkept{}", std::process::id());
    assert_exit(
        &lab_command(&["--keep", "--name", &name]).output().unwrap(),
        0,
    );
    let inode = std::fs::metadata(format!("/run/netns/{name}-head")).unwrap();
    let again = lab_command(&["--name", &name]).output().unwrap();
    let same = std::fs::metadata(format!("/run/netns/{name}-head")).is_ok_and(|m| {
        std::os::unix::fs::MetadataExt::ino(&m) == std::os::unix::fs::MetadataExt::ino(&inode)
    });
    assert_exit(
        &lab_command(&["down", "--name", &name]).output().unwrap(),
        0,
    );
    assert_exit(&again, 2);
    assert!(same, "the kept lab was replaced: {}", text(&again));
    assert!(lab_namespaces(&name).is_empty());
}

#[test]
fn natgw_removes_records_of_namespaces_that_no_longer_exist() {
    let Some(lab) = lab_or_skip(
        "natgw_removes_records_of_namespaces_that_no_longer_exist",
        Spec::nodes(1),
    ) else {
        return;
    };
    let gone = format!("{}-gone", lab.name);
    natgw_lab::ip(&["netns", "add", &gone]).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &gone, &binary(), "node", "down"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let records = record_dir(&gone);
    assert!(records.exists(), "node down made no record directory");
    natgw_lab::ip(&["netns", "del", &gone]).unwrap();
    // Any natgw command that takes a namespace's lock, in another namespace.
    assert_exit(&natgw_env(&lab, "n1", &["node", "down"], &[]), 0);
    assert!(
        eventually(5, || !records.exists()),
        "{} outlived its namespace",
        records.display()
    );
}

#[test]
fn lab_interrupted_during_its_inner_up_leaves_nothing_behind() {
    if !root_or_skip("lab_interrupted_during_its_inner_up_leaves_nothing_behind") {
        return;
    }
    let name = format!("ngwint{}", std::process::id());
    // A slow nft, so that SIGINT lands while the lab's `natgw up` is applying.
    let dir = std::env::temp_dir().join(format!("{name}-nft"));
    std::fs::create_dir_all(&dir).unwrap();
    let (wrapper, log) = slow_nft(&dir, "0.3");
    let mut lab = lab_command(&["--name", &name])
        .env("NATGW_NFT", &wrapper)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let head = format!("{name}-head");
    let mut records = None;
    assert!(
        eventually(60, || {
            if calls(&log) >= 3 && netns_exists(&head) {
                records = Some(record_dir(&head));
            }
            records.is_some()
        }),
        "lab {name} never started its inner up"
    );
    let records = records.unwrap();
    kill_and_check_nothing_left(&mut lab, "INT", &name, &records);
    let _ = std::fs::remove_dir_all(dir);
}
