//! HA in the binary: `natgw run` keeps keepalived and conntrackd configured and
//! running (`Ha`), keepalived calls `natgw ha-notify ROLE` on each transition, and
//! `status` / `doctor` report the pair.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{anyhow, Context};
use natgw_core::doctor::ha::HaObserved;
use natgw_core::doctor::Finding;
use natgw_core::ha::{HaConfig, HaFiles, HaRecord, HaRender, Role, FINGERPRINT_PORT};
use natgw_core::{Desired, IfName, Observed};
use natgw_linux::ha::{self as daemons, Daemons, CONNTRACKD, KEEPALIVED};
use natgw_linux::netlink::Netlink;
use natgw_linux::state_store;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::exit::{self, problem, usage};

/// The record `ha-notify` keeps in the namespace's state directory.
const RECORD: &str = "ha.json";

fn files() -> anyhow::Result<HaFiles> {
    let dir = state_store::ha_dir()?;
    HaFiles::new(dir).map_err(|e| anyhow!(e))
}

/// The HA part of `natgw run`.
#[derive(Default)]
pub struct Ha {
    daemons: Option<Daemons>,
    /// The configs last written: (keepalived, conntrackd).
    written: Option<(String, String)>,
    /// Tells the peer this node's fingerprint: the socket on the sync address, and
    /// the section it answers for.
    answerer: Option<(UdpSocket, HaConfig)>,
}

impl Ha {
    /// Renders the configs from the resolved gateway, writes them when they changed,
    /// and starts or reloads the daemons.
    pub fn reconcile(
        &mut self,
        ha: Option<&HaConfig>,
        desired: &Desired,
        observed: &Observed,
    ) -> Result<(), String> {
        let Some(ha) = ha else {
            self.answerer = None;
            if let Some(mut d) = self.daemons.take() {
                info!("[ha] removed from the config: stopping keepalived and conntrackd");
                d.stop();
            }
            return Ok(());
        };
        let text = |e: anyhow::Error| format!("{e:#}");
        let files = files().map_err(text)?;
        let configs = render(ha, desired, observed, &files).map_err(text)?;
        self.listen(ha, observed);
        let daemons = self
            .daemons
            .get_or_insert_with(|| Daemons::new(files.clone()));
        if self.written.as_ref() != Some(&configs) {
            state_store::write_private(&files.dir, "keepalived.conf", &configs.0)
                .and_then(|()| {
                    state_store::write_private(&files.dir, "conntrackd.conf", &configs.1)
                })
                .map_err(|e| text(e.into()))?;
            if let Some((keepalived, conntrackd)) = &self.written {
                if *conntrackd != configs.1 {
                    info!("[ha] conntrackd's config changed: restarting it");
                    daemons.restart_conntrackd();
                }
                if *keepalived != configs.0 {
                    info!("[ha] keepalived's config changed: reloading it");
                    daemons.reload_keepalived();
                }
            }
            self.written = Some(configs);
        }
        for name in daemons.ensure().map_err(|e| text(e.into()))? {
            info!(daemon = name, config = %files.dir.display(), "[ha] started");
        }
        Ok(())
    }

    /// Binds the fingerprint socket on the sync address (again when it changed).
    fn listen(&mut self, ha: &HaConfig, observed: &Observed) {
        let Ok(address) = sync_address(ha, observed) else {
            return;
        };
        let at = SocketAddr::from((address, FINGERPRINT_PORT));
        let bound = self
            .answerer
            .as_ref()
            .and_then(|(s, _)| s.local_addr().ok());
        if bound == Some(at) {
            if let Some((_, config)) = self.answerer.as_mut() {
                *config = ha.clone();
            }
            return;
        }
        match UdpSocket::bind(at).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(socket) => self.answerer = Some((socket, ha.clone())),
            Err(e) => {
                warn!(address = %at, error = %e, "[ha] cannot answer the peer's fingerprint question")
            }
        }
    }

    /// The fingerprint socket, for the daemon's poll.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.answerer.as_ref().map(|(s, _)| s.as_raw_fd())
    }

    /// Answers the questions waiting on the fingerprint socket (the peer's only).
    pub fn answer(&self) {
        let Some((socket, config)) = &self.answerer else {
            return;
        };
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(answer) = natgw_core::ha::fingerprint_answer(&buf[..n], from, config) {
                let _ = socket.send_to(&answer, from);
            }
        }
    }

    /// Children that ended: logged; a keepalived that died without giving the shared
    /// addresses up (SIGKILL, a crash) leaves them here while the peer takes over, so
    /// natgw removes them. Returns whether something must be restarted.
    pub fn poll(&mut self, ha: Option<&HaConfig>, netlink: &Netlink) -> bool {
        let Some(daemons) = self.daemons.as_mut() else {
            return false;
        };
        let ended = daemons.reap();
        for (name, status) in &ended {
            error!(daemon = name, %status, "[ha] ended; restarting it");
            if *name == KEEPALIVED {
                if let Some(ha) = ha {
                    release_addresses(ha, netlink);
                }
            }
        }
        !ended.is_empty()
    }

    /// `natgw run` stops: keepalived hands the addresses to the peer.
    pub fn stop(&mut self, ha: Option<&HaConfig>, netlink: &Netlink) {
        if let Some(mut d) = self.daemons.take() {
            info!("[ha] stopping keepalived and conntrackd; the peer takes over");
            d.stop();
            if let Some(ha) = ha {
                release_addresses(ha, netlink);
            }
        }
    }
}

/// Removes the shared addresses from whichever interface holds them.
fn release_addresses(ha: &HaConfig, netlink: &Netlink) {
    let Ok(addresses) = netlink.addresses() else {
        return;
    };
    for vip in [ha.private_vip.addr(), ha.public_vip.addr()] {
        for a in addresses.iter().filter(|a| a.address == IpAddr::V4(vip)) {
            match netlink.del_address(a.ifindex, a.address) {
                Ok(true) => {
                    warn!(address = %vip, "[ha] removed the shared address keepalived left behind")
                }
                Ok(false) => {}
                Err(e) => {
                    error!(address = %vip, error = %e, "[ha] cannot remove the shared address")
                }
            }
        }
    }
}

/// keepalived.conf and conntrackd.conf for this gateway.
fn render(
    ha: &HaConfig,
    desired: &Desired,
    observed: &Observed,
    files: &HaFiles,
) -> anyhow::Result<(String, String)> {
    let vip = ha.private_vip.addr();
    let private = desired
        .private
        .iter()
        .find(|i| i.addresses.iter().any(|a| a.contains(&IpAddr::V4(vip))))
        .ok_or_else(|| {
            anyhow!(
                "[ha] private_vip {vip} is on none of the private interfaces' networks; give each headnode an address on it"
            )
        })?;
    let sync = IfName::new(&ha.sync_interface).map_err(|e| anyhow!("[ha] sync_interface: {e}"))?;
    let sync_address = sync_address(ha, observed)?;
    let natgw = std::env::current_exe().context("cannot find natgw's own path")?;
    let r = HaRender {
        config: ha,
        public: &desired.public.name,
        private: &private.name,
        sync: &sync,
        sync_address,
        files,
        natgw: &natgw,
    };
    Ok((r.keepalived()?, r.conntrackd()?))
}

/// This headnode's IPv4 address on the sync link, on the peer's network.
fn sync_address(ha: &HaConfig, observed: &Observed) -> anyhow::Result<Ipv4Addr> {
    let link = observed
        .links
        .iter()
        .find(|l| l.name == ha.sync_interface)
        .ok_or_else(|| anyhow!("[ha] sync_interface {} does not exist", ha.sync_interface))?;
    observed
        .addresses_of(link.index)
        .find_map(|a| match a.address {
            IpAddr::V4(v4) if a.network().contains(&IpAddr::V4(ha.peer)) => Some(v4),
            _ => None,
        })
        .ok_or_else(|| {
            anyhow!(
                "[ha] sync_interface {} has no IPv4 address on the network of peer {}; add one (ip addr add ADDR/LEN dev {})",
                ha.sync_interface,
                ha.peer,
                ha.sync_interface
            )
        })
}

/// `natgw ha-notify ROLE`, run by keepalived on each transition. On becoming primary it
/// commits the connections replicated from the peer into the kernel first (natgw's
/// ruleset drops, rather than resets, replies that arrive before), then resynchronises;
/// on becoming backup or failing it expires the stale entries and asks the primary for
/// a full resync.
pub fn notify(role: &str) -> exit::Result<i32> {
    let role = Role::parse(role).ok_or_else(|| {
        usage(anyhow!(
            "unknown role {role:?}; keepalived passes master, backup, fault or stop"
        ))
    })?;
    let files = files().map_err(problem)?;
    let _lock = state_store::ha_notify_lock(Duration::from_secs(30)).map_err(problem)?;
    let steps: &[&[&str]] = match role {
        // -c commit the external cache, -f flush both caches, -R resync the internal
        // cache with the kernel, -B send it all to the peer (conntrackd's
        // primary-backup.sh).
        Role::Master => &[&["-c"], &["-f"], &["-R"], &["-B"]],
        // -t shorten the kernel timers of the entries this node no longer serves, -n
        // ask the primary for a full resync of the external cache.
        Role::Backup => &[&["-t"], &["-n"]],
        Role::Fault => &[&["-t"]],
        Role::Stop => &[],
    };
    let mut problems = Vec::new();
    let mut done = Vec::new();
    for args in steps {
        let started = std::time::Instant::now();
        let outcome = daemons::control(&files, args);
        let ms = started.elapsed().as_millis();
        let failed = if outcome.is_ok() { "" } else { ", FAILED" };
        done.push(format!("conntrackd {}: {ms} ms{failed}", args.join(" ")));
        match outcome {
            Ok(_) => info!(step = args.join(" "), took_ms = ms as u64, %role, "[ha] conntrackd"),
            Err(e) => {
                error!(error = %e, %role, "[ha] conntrackd step failed");
                problems.push(e.to_string());
            }
        }
    }
    let record = HaRecord {
        role,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        sync_ok: problems.is_empty(),
        sync_problem: (!problems.is_empty()).then(|| problems.join("; ")),
        steps: done,
    };
    state_store::save_named(RECORD, &record).map_err(problem)?;
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::PROBLEM
    })
}

/// The pair as `natgw status` shows it.
#[derive(Debug, Serialize)]
pub struct HaStatus {
    pub role: Option<Role>,
    /// Unix seconds of the last transition.
    pub since: Option<f64>,
    pub peer: Ipv4Addr,
    pub fingerprint: String,
    pub keepalived_running: bool,
    pub conntrackd_running: bool,
    /// conntrackd's statistics (`conntrackd -s`), when it answers.
    pub sync: Option<String>,
    pub sync_problem: Option<String>,
    /// The last transition's conntrackd steps with their durations.
    pub last_steps: Vec<String>,
}

pub fn status(ha: &HaConfig) -> Option<HaStatus> {
    let files = files().ok()?;
    let record: Option<HaRecord> = state_store::load_named(RECORD).ok().flatten();
    let (keepalived_running, conntrackd_running) = running(&files);
    let sync = conntrackd_running
        .then(|| daemons::control(&files, &["-s", "network"]).ok())
        .flatten()
        .map(|s| s.trim().to_string());
    Some(HaStatus {
        role: record.as_ref().map(|r| r.role),
        since: record.as_ref().map(|r| r.since),
        peer: ha.peer,
        fingerprint: ha.fingerprint(),
        keepalived_running,
        conntrackd_running,
        sync,
        sync_problem: record.as_ref().and_then(|r| r.sync_problem.clone()),
        last_steps: record.map(|r| r.steps).unwrap_or_default(),
    })
}

pub fn print_status(s: &HaStatus) {
    let role = s
        .role
        .map_or("not reported yet".to_string(), |r| r.to_string());
    let since = s.since.map_or(String::new(), |t| {
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - t;
        format!(" (last transition {ago:.0} s ago)")
    });
    println!(
        "ha:         {role}{since}; peer {}; fingerprint {}",
        s.peer, s.fingerprint
    );
    println!(
        "            keepalived {}, conntrackd {}",
        if s.keepalived_running {
            "running"
        } else {
            "NOT RUNNING"
        },
        if s.conntrackd_running {
            "running"
        } else {
            "NOT RUNNING"
        }
    );
    if !s.last_steps.is_empty() {
        println!("            last transition: {}", s.last_steps.join(", "));
    }
    if let Some(p) = &s.sync_problem {
        println!("            last transition's sync FAILED: {p}");
    }
}

/// Whether this instance's keepalived and conntrackd run (by their config file).
fn running(files: &HaFiles) -> (bool, bool) {
    (
        !daemons::processes_with_arg(&files.keepalived_conf()).is_empty(),
        !daemons::processes_with_arg(&files.conntrackd_conf()).is_empty(),
    )
}

/// The peer's fingerprint, asked over the sync link (1 s timeout).
fn ask_fingerprint(local: Ipv4Addr, peer: Ipv4Addr) -> Option<String> {
    let socket = UdpSocket::bind((local, 0)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    socket
        .send_to(
            &natgw_core::ha::fingerprint_request(),
            (peer, FINGERPRINT_PORT),
        )
        .ok()?;
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    (from.ip() == IpAddr::V4(peer))
        .then(|| natgw_core::ha::parse_fingerprint_answer(&buf[..n]))
        .flatten()
}

/// The doctor's HA checks.
pub fn findings(ha: &HaConfig, observed: &Observed) -> Vec<Finding> {
    let files = files().ok();
    let (keepalived_running, conntrackd_running) = files.as_ref().map_or((false, false), running);
    let holds = |vip: Ipv4Addr| {
        observed
            .addresses
            .iter()
            .any(|a| a.address == IpAddr::V4(vip))
    };
    let sync_link = observed.links.iter().find(|l| l.name == ha.sync_interface);
    let probe = |ifindex: u32, source: Ipv4Addr, target: Ipv4Addr| {
        natgw_linux::arp::probe(ifindex, source, target, Duration::from_millis(1500))
            .ok()
            .flatten()
    };
    let peer_answers = sync_link.and_then(|l| {
        let source = sync_address(ha, observed).ok()?;
        probe(l.index, source, ha.peer)
    });
    // Someone else answering for the private shared address: the peer while this one
    // is backup, a second primary while this one holds it. Asked from this host's own
    // address on that network, never from the shared one.
    let vip = ha.private_vip.addr();
    let other_holds_private_vip = observed.addresses.iter().find_map(|a| match a.address {
        IpAddr::V4(own) if own != vip && a.network().contains(&IpAddr::V4(vip)) => {
            probe(a.ifindex, own, vip)
        }
        _ => None,
    });
    let peer_fingerprint = sync_address(ha, observed)
        .ok()
        .and_then(|local| ask_fingerprint(local, ha.peer));
    let o = HaObserved {
        peer_fingerprint,
        keepalived_installed: daemons::binary(KEEPALIVED).is_ok(),
        conntrackd_installed: daemons::binary(CONNTRACKD).is_ok(),
        keepalived_running,
        conntrackd_running,
        record: state_store::load_named(RECORD).ok().flatten(),
        holds_private_vip: holds(vip),
        holds_public_vip: holds(ha.public_vip.addr()),
        sync_link: sync_link.map(|l| (l.up, l.carrier)),
        peer_answers,
        other_holds_private_vip,
        fingerprint: ha.fingerprint(),
        sync_interface: ha.sync_interface.clone(),
        peer: ha.peer.to_string(),
    };
    natgw_core::doctor::ha::findings(&o)
}
