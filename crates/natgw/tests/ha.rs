//! End-to-end HA: two headnodes running `natgw run` with `[ha]` (keepalived and
//! conntrackd from Debian's packages) in a lab with private nodes and a public server.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use natgw_lab::ha::{self, Failure, Member};
use natgw_lab::{Lab, Spec};

/// Short VRRP adverts keep the tests quick (takeover in about 3.6 intervals).
const ADVERT: f64 = 0.2;

fn log(lab: &Lab, role: &str) -> Stdio {
    std::fs::File::create(scratch(lab, "logs").join(format!("{role}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Removes a lab's scratch directories when the test passed (a failed one keeps the
/// members' logs).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            for what in ["logs", "cfg"] {
                let _ = std::fs::remove_dir_all(
                    std::env::temp_dir().join(format!("{}-{what}", self.0)),
                );
            }
        }
    }
}

/// Both members running, head primary and head2 backup.
fn pair(lab: &Lab) -> (Member, Member) {
    let natgw = binary();
    let head = Member::start(lab, 0, Path::new(&natgw), ADVERT, log(lab, "head")).unwrap();
    let head2 = Member::start(lab, 1, Path::new(&natgw), ADVERT, log(lab, "head2")).unwrap();
    assert!(
        ha::wait_vip(lab, "head", true, Duration::from_secs(15)),
        "head never became primary; logs in {}",
        scratch(lab, "logs").display()
    );
    (head, head2)
}

#[test]
fn established_connections_survive_a_failover_and_a_failback() {
    let Some(lab) = lab_or_skip("ha failover", Spec::nodes(2).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let (mut head, _head2) = pair(&lab);
    // The standby never answers for the shared addresses while the primary is healthy.
    assert!(
        !ha::holds_vip(&lab, "head2"),
        "both headnodes hold the shared address"
    );
    let natgw = binary();
    let mut restart = || Member::start(&lab, 0, Path::new(&natgw), ADVERT, log(&lab, "head-again"));
    let round = ha::failover(&lab, &mut head, Failure::LinkDown, 10, &mut restart).unwrap();
    eprintln!("{round:?}");
    assert_eq!(round.connections_before, 10, "{round:?}");
    assert!(
        round.replicated_before >= 10,
        "conntrackd did not replicate: {round:?}"
    );
    assert!(
        round.survived >= 10,
        "connections lost in the failover: {round:?}"
    );
    assert!(round.tcp_outage_s < 3.0, "{round:?}");
    assert_eq!(
        round.failback_survived,
        Some(10),
        "connections lost in the failback: {round:?}"
    );
}

#[test]
fn a_killed_primary_hands_over_without_dropping_connections() {
    let Some(lab) = lab_or_skip("ha process kill", Spec::nodes(2).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let (mut head, _head2) = pair(&lab);
    let natgw = binary();
    let mut restart = || Member::start(&lab, 0, Path::new(&natgw), ADVERT, log(&lab, "head-again"));
    let round = ha::failover(&lab, &mut head, Failure::ProcessKill, 6, &mut restart).unwrap();
    eprintln!("{round:?}");
    assert!(round.survived >= 6, "{round:?}");
    assert!(round.tcp_outage_s < 3.0, "{round:?}");
    assert_eq!(
        round.failback_survived,
        Some(6),
        "the restarted primary took over: {round:?}"
    );
}

#[test]
fn doctor_reports_a_broken_sync_link_and_status_shows_the_role() {
    let Some(lab) = lab_or_skip("ha doctor", Spec::nodes(1).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let (head, _head2) = pair(&lab);
    let config = head.config.to_str().unwrap();
    let out = natgw_env(&lab, "head", &["status", "--json", "--config", config], &[]);
    let status = json(&out);
    assert_eq!(status["ha"]["role"], "master", "{}", text(&out));
    assert_eq!(status["ha"]["keepalived_running"], true);
    assert_eq!(status["ha"]["conntrackd_running"], true);
    // The primary's transition committed the replicated connections first.
    let steps = status["ha"]["last_steps"].to_string();
    assert!(steps.starts_with("[\"conntrackd -c: "), "{steps}");
    assert!(!steps.contains("FAILED"), "{steps}");
    eprintln!("primary transition: {steps}");
    let out = natgw_env(&lab, "head2", &["status", "--config", config], &[]);
    assert!(
        stdout(&out).contains("ha:         backup"),
        "{}",
        text(&out)
    );
    let out = natgw_env(&lab, "head", &["doctor", "--json", "--config", config], &[]);
    let checks = json(&out)["checks"].clone();
    let check = |id: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {checks}"))["status"]
            .clone()
    };
    assert_eq!(check("ha_sync_link"), "pass", "{checks}");
    assert_eq!(check("ha_one_primary"), "pass", "{checks}");
    assert_eq!(check("ha_running"), "pass", "{checks}");
    // Asked over the sync link: head2 answers with the same fingerprint.
    assert_eq!(check("ha_fingerprint"), "pass", "{checks}");
    // The sync cable breaks (head2's end down): replication stops, doctor says so.
    lab.ip("head2", &["link", "set", "sync0", "down"]).unwrap();
    let out = natgw_env(&lab, "head", &["doctor", "--json", "--config", config], &[]);
    assert_exit(&out, 1);
    let checks = json(&out)["checks"].clone();
    let sync = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "ha_sync_link")
        .unwrap()
        .clone();
    assert_eq!(sync["status"], "fail", "{checks}");
    // VRRP runs on the private segment: still exactly one primary.
    assert!(ha::holds_vip(&lab, "head") && !ha::holds_vip(&lab, "head2"));
}

#[test]
fn an_invalid_ha_section_is_refused_and_changes_nothing() {
    let Some(lab) = lab_or_skip("ha bad config", Spec::nodes(1).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let before = headnode_snapshot(&lab);
    let path = scratch(&lab, "cfg").join("bad.toml");
    for (bad, says) in [
        (
            ha::config(0, 1.0).replace("priority = 150", "priority = 255"),
            "priority",
        ),
        (ha::config(0, 1.0).replace("vrid = 51", "vrid = 0"), "vrid"),
        (
            ha::config(0, 1.0).replace("sync0", "sync0\\\"}"),
            "sync_interface",
        ),
        (
            format!("masquerade = true\n{}", ha::config(0, 1.0)),
            "masquerade",
        ),
    ] {
        std::fs::write(&path, bad).unwrap();
        let out = natgw_env(
            &lab,
            "head",
            &["run", "--config", path.to_str().unwrap()],
            &[],
        );
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
    }
    assert_eq!(
        headnode_snapshot(&lab),
        before,
        "a refused config changed the headnode"
    );
}

#[test]
fn a_keepalived_killed_outright_leaves_no_second_primary() {
    let Some(lab) = lab_or_skip("ha keepalived kill", Spec::nodes(1).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let (_head, _head2) = pair(&lab);
    // SIGKILL the primary's keepalived: it cannot release the addresses; natgw run must.
    let config = natgw_lab::in_netns(&lab.ns("head"), natgw_linux::state_store::ha_dir)
        .unwrap()
        .unwrap()
        .join("keepalived.conf");
    let pids = natgw_linux::ha::processes_with_arg(&config);
    assert!(
        !pids.is_empty(),
        "no keepalived runs with {}",
        config.display()
    );
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    assert!(
        ha::wait_vip(&lab, "head2", true, Duration::from_secs(10)),
        "the backup did not take over"
    );
    // natgw run removes what the dead keepalived left (before head takes over again,
    // after its preempt delay)...
    assert!(
        ha::wait_vip(&lab, "head", false, Duration::from_secs(3)),
        "the killed primary kept the shared address next to the new primary"
    );
    // ...restarts keepalived, and head preempts again.
    assert!(
        ha::wait_vip(&lab, "head", true, Duration::from_secs(15)),
        "head never came back"
    );
    assert!(
        ha::wait_vip(&lab, "head2", false, Duration::from_secs(5)),
        "both headnodes hold the shared address"
    );
}

#[test]
fn lab_ha_reports_surviving_connections() {
    if !root_or_skip("natgw lab --ha") {
        return;
    }
    let name = format!("ngwh{}", std::process::id());
    let out = std::process::Command::new(binary())
        .args(["lab", "--ha", "--rounds", "1", "--connections", "8"])
        .args(["--advert-interval", "0.2", "--json", "--name", &name])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(report["connections_before"], 8, "{report}");
    assert_eq!(report["survived"], 8, "{report}");
    assert_eq!(report["rounds"][0]["failure"], "link-down", "{report}");
    assert!(report["outage_worst_s"].as_f64().unwrap() < 3.0, "{report}");
}

#[test]
fn up_with_ha_drops_instead_of_resetting_and_down_restores_the_pickup_sysctls() {
    let Some(lab) = lab_or_skip("ha up/down", Spec::nodes(1).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let path = scratch(&lab, "cfg").join("head.toml");
    std::fs::write(&path, ha::config(0, 0.3)).unwrap();
    let liberal = "net.netfilter.nf_conntrack_tcp_be_liberal";
    assert_eq!(lab.read_sysctl("head", liberal).unwrap(), "0");
    // Without natgw the kernel answers with a reset: what kills a moved connection.
    lab.ip("head", &["addr", "add", "203.0.113.10/24", "dev", "wan0"])
        .unwrap();
    assert_eq!(
        connect_from_public(&lab),
        std::io::ErrorKind::ConnectionRefused
    );
    lab.ip("head", &["addr", "del", "203.0.113.10/24", "dev", "wan0"])
        .unwrap();
    let out = natgw_env(
        &lab,
        "head",
        &["up", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    assert_eq!(lab.read_sysctl("head", liberal).unwrap(), "1");
    let ruleset = in_ns(&lab, "head", &["nft", "list", "table", "inet", "natgw"]);
    assert!(
        ruleset.contains("ip daddr 203.0.113.10 ct state new counter"),
        "{ruleset}"
    );
    assert!(ruleset.contains("snat ip to 203.0.113.10"), "{ruleset}");
    // The shared address as keepalived would add it: a packet of a connection the
    // kernel has no entry for yet (before conntrackd's commit) is dropped, not reset.
    lab.ip("head", &["addr", "add", "203.0.113.10/24", "dev", "wan0"])
        .unwrap();
    assert_eq!(connect_from_public(&lab), std::io::ErrorKind::TimedOut);
    lab.ip("head", &["addr", "del", "203.0.113.10/24", "dev", "wan0"])
        .unwrap();
    assert_exit(&natgw_env(&lab, "head", &["down"], &[]), 0);
    assert_eq!(
        lab.read_sysctl("head", liberal).unwrap(),
        "0",
        "down restores it"
    );
}

/// How a TCP connection from the public host to the shared address fails.
fn connect_from_public(lab: &Lab) -> std::io::ErrorKind {
    let to = std::net::SocketAddr::from((natgw_lab::HA_PUBLIC_VIP, 7300));
    natgw_lab::in_netns(&lab.ns("pub"), move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(700))
            .map(|_| std::io::ErrorKind::Other)
            .unwrap_or_else(|e| e.kind())
    })
    .unwrap()
}

#[test]
fn a_reloaded_priority_moves_the_primary() {
    let Some(lab) = lab_or_skip("ha reload", Spec::nodes(1).with_ha()) else {
        return;
    };
    let _cleanup = Cleanup(lab.name.clone());
    let (_head, head2) = pair(&lab);
    // SIGHUP with a higher priority on head2: natgw rewrites keepalived's config and
    // reloads it; head2 preempts.
    std::fs::write(
        &head2.config,
        ha::config(1, ADVERT).replace("priority = 100", "priority = 200"),
    )
    .unwrap();
    head2.reload();
    assert!(
        ha::wait_vip(&lab, "head2", true, Duration::from_secs(10)),
        "the reloaded priority did not take effect"
    );
    assert!(ha::wait_vip(&lab, "head", false, Duration::from_secs(5)));
}
