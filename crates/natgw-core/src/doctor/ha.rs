//! HA checks: the two daemons installed and running, the sync link up and the peer
//! answering on it, exactly one primary, and the shared settings' fingerprint shown so
//! both headnodes can be compared. Pure: the binary gathers `HaObserved`.

use serde::Serialize;

use super::{Finding, Fix};
use crate::ha::{HaRecord, Role};

/// What the binary found about this headnode's HA instance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaObserved {
    pub keepalived_installed: bool,
    pub conntrackd_installed: bool,
    pub keepalived_running: bool,
    pub conntrackd_running: bool,
    /// The last transition `natgw ha-notify` recorded.
    pub record: Option<HaRecord>,
    /// Whether this headnode holds the private and public shared addresses now.
    pub holds_private_vip: bool,
    pub holds_public_vip: bool,
    /// The sync interface: `None` when it does not exist; else (up, carrier).
    pub sync_link: Option<(bool, bool)>,
    /// Whether the peer answered an ARP probe on the sync link (`None`: not probed).
    pub peer_answers: Option<bool>,
    /// Whether another host answered ARP for the private shared address.
    pub other_holds_private_vip: Option<bool>,
    pub fingerprint: String,
    /// The peer's, asked over the sync link (`None`: it did not answer).
    pub peer_fingerprint: Option<String>,
    pub sync_interface: String,
    pub peer: String,
}

pub fn findings(o: &HaObserved) -> Vec<Finding> {
    let mut out = Vec::new();
    let missing: Vec<&str> = [
        ("keepalived", o.keepalived_installed),
        ("conntrackd", o.conntrackd_installed),
    ]
    .iter()
    .filter(|(_, present)| !present)
    .map(|(name, _)| *name)
    .collect();
    out.push(if missing.is_empty() {
        Finding::pass("ha_installed", "keepalived and conntrackd are installed")
    } else {
        Finding::fail(
            "ha_installed",
            format!("{} not installed", missing.join(" and ")),
            Fix::run(&[&["apt-get", "install"][..], &missing].concat()),
        )
    });
    let stopped: Vec<&str> = [
        ("keepalived", o.keepalived_running),
        ("conntrackd", o.conntrackd_running),
    ]
    .iter()
    .filter(|(_, running)| !running)
    .map(|(name, _)| *name)
    .collect();
    out.push(if stopped.is_empty() {
        Finding::pass(
            "ha_running",
            "keepalived and conntrackd run for this gateway",
        )
    } else {
        Finding::fail(
            "ha_running",
            format!("{} not running for this gateway", stopped.join(" and ")),
            Fix::say("start the gateway service (natgw run starts both):").then_run(&[
                "systemctl",
                "start",
                "natgw",
            ]),
        )
    });
    out.push(match (&o.sync_link, o.peer_answers) {
        (None, _) => Finding::fail(
            "ha_sync_link",
            format!("sync interface {} does not exist", o.sync_interface),
            Fix::say("create the dedicated link to the peer, or correct [ha] sync_interface"),
        ),
        (Some((up, carrier)), _) if !up || !carrier => Finding::fail(
            "ha_sync_link",
            format!(
                "sync link {} is {}: connection state is not replicated, a failover now drops connections",
                o.sync_interface,
                if *up { "without carrier" } else { "down" }
            ),
            Fix::run(&["ip", "link", "set", &o.sync_interface, "up"])
                .then_say("and check the cable to the peer"),
        ),
        (_, Some(false)) => Finding::fail(
            "ha_sync_link",
            format!(
                "peer {} does not answer on sync link {}: connection state is not replicated",
                o.peer, o.sync_interface
            ),
            Fix::say("check the peer is up and its [ha] sync address, and the cable between them"),
        ),
        _ => Finding::pass(
            "ha_sync_link",
            format!("sync link {} up, peer {} answers", o.sync_interface, o.peer),
        ),
    });
    let role = o.record.as_ref().map(|r| r.role);
    let holds = o.holds_private_vip || o.holds_public_vip;
    out.push(match (role, holds, o.other_holds_private_vip) {
        (_, true, Some(true)) => Finding::fail(
            "ha_one_primary",
            "both headnodes hold the shared addresses (another host answers for the private one)",
            Fix::say("check VRRP reaches the peer on the private segment (same vrid, no filter dropping protocol 112); stop natgw on one headnode meanwhile"),
        ),
        (Some(Role::Master), false, _) => Finding::fail(
            "ha_one_primary",
            "primary by keepalived's last word but the shared addresses are missing",
            Fix::run(&["systemctl", "restart", "natgw"]),
        ),
        (Some(Role::Backup | Role::Fault | Role::Stop), true, _) => Finding::fail(
            "ha_one_primary",
            "not primary, yet holding the shared addresses",
            Fix::run(&["systemctl", "restart", "natgw"]),
        ),
        (_, false, Some(false)) => Finding::fail(
            "ha_one_primary",
            "no headnode answers for the private shared address: private nodes have no gateway",
            Fix::say("start natgw on a headnode, and check its private link"),
        ),
        (role, holds, _) => Finding::pass(
            "ha_one_primary",
            format!(
                "{} ({}), exactly one primary",
                role.map_or("role not reported yet".to_string(), |r| r.to_string()),
                if holds { "holds the shared addresses" } else { "the peer holds the shared addresses" }
            ),
        ),
    });
    out.push(match &o.peer_fingerprint {
        Some(peer) if *peer == o.fingerprint => Finding::pass(
            "ha_fingerprint",
            format!("both headnodes' shared HA settings match (fingerprint {peer})"),
        ),
        Some(peer) => Finding::fail(
            "ha_fingerprint",
            format!(
                "the peer's shared HA settings differ (fingerprint {peer}, this one {})",
                o.fingerprint
            ),
            Fix::say("make vrid, private_vip, public_vip and advert_interval equal in both [ha] sections"),
        ),
        None => Finding::warn(
            "ha_fingerprint",
            format!(
                "the peer did not tell its HA fingerprint over the sync link (this one {})",
                o.fingerprint
            ),
            Fix::say("check natgw run runs on the peer; compare `natgw status` on both"),
        ),
    });
    if let Some(r) = o.record.as_ref().filter(|r| !r.sync_ok) {
        out.push(Finding::warn(
            "ha_transition",
            format!(
                "the last transition ({}) could not sync connection state: {}",
                r.role,
                r.sync_problem.as_deref().unwrap_or("unknown")
            ),
            Fix::say("check conntrackd's log in natgw's state directory (ha/conntrackd.log)"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn healthy() -> HaObserved {
        HaObserved {
            keepalived_installed: true,
            conntrackd_installed: true,
            keepalived_running: true,
            conntrackd_running: true,
            record: Some(HaRecord {
                role: Role::Master,
                since: 1.0,
                sync_ok: true,
                sync_problem: None,
                steps: vec![],
            }),
            holds_private_vip: true,
            holds_public_vip: true,
            sync_link: Some((true, true)),
            peer_answers: Some(true),
            other_holds_private_vip: Some(false),
            fingerprint: "00aa".into(),
            peer_fingerprint: Some("00aa".into()),
            sync_interface: "sync0".into(),
            peer: "192.168.255.2".into(),
        }
    }

    fn status(o: &HaObserved, id: &str) -> Status {
        findings(o).into_iter().find(|f| f.id == id).unwrap().status
    }

    #[test]
    fn a_healthy_primary_passes_everything() {
        assert!(findings(&healthy())
            .iter()
            .all(|f| f.status == Status::Pass));
    }

    #[test]
    fn each_problem_fails_its_check() {
        let mut o = healthy();
        o.conntrackd_installed = false;
        assert_eq!(status(&o, "ha_installed"), Status::Fail);
        let mut o = healthy();
        o.keepalived_running = false;
        assert_eq!(status(&o, "ha_running"), Status::Fail);
        let mut o = healthy();
        o.sync_link = Some((true, false));
        assert_eq!(status(&o, "ha_sync_link"), Status::Fail);
        let mut o = healthy();
        o.peer_answers = Some(false);
        assert_eq!(status(&o, "ha_sync_link"), Status::Fail);
        let mut o = healthy();
        o.other_holds_private_vip = Some(true);
        assert_eq!(status(&o, "ha_one_primary"), Status::Fail);
        let mut o = healthy();
        o.holds_private_vip = false;
        o.holds_public_vip = false;
        assert_eq!(
            status(&o, "ha_one_primary"),
            Status::Fail,
            "primary without addresses"
        );
        let mut o = healthy();
        o.peer_fingerprint = Some("00bb".into());
        assert_eq!(status(&o, "ha_fingerprint"), Status::Fail);
        o.peer_fingerprint = None;
        assert_eq!(status(&o, "ha_fingerprint"), Status::Warn);
    }

    #[test]
    fn a_backup_passes_while_the_peer_answers_and_fails_when_nobody_does() {
        let mut o = healthy();
        o.record.as_mut().unwrap().role = Role::Backup;
        o.holds_private_vip = false;
        o.holds_public_vip = false;
        o.other_holds_private_vip = Some(true);
        assert_eq!(status(&o, "ha_one_primary"), Status::Pass);
        o.other_holds_private_vip = Some(false);
        assert_eq!(status(&o, "ha_one_primary"), Status::Fail);
    }
}
