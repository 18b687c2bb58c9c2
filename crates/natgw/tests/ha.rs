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
    let (head, _head2) = pair(&lab);
    let config = head.config.to_str().unwrap();
    let out = natgw_env(&lab, "head", &["status", "--json", "--config", config], &[]);
    let status = json(&out);
    assert_eq!(status["ha"]["role"], "master", "{}", text(&out));
    assert_eq!(status["ha"]["keepalived_running"], true);
    assert_eq!(status["ha"]["conntrackd_running"], true);
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
