//! `natgw run`: the gateway as a service. It applies the configuration like `up`, then
//! keeps the system that way: kernel notifications (links, addresses, routes, the
//! nftables ruleset), a cheap poll of the sysctls (they have no notifications) and a
//! slow safety timer start a debounced reconcile, which is `up` again: observe → plan →
//! apply → verify under the namespace lock, each drift and repair logged. SIGHUP reloads
//! the configuration; SIGTERM and SIGINT stop it, leaving the rules in place (traffic
//! keeps flowing across a restart) unless `--down-on-exit`.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use natgw_core::{Desired, Settings, SnatMode};
use natgw_linux::dataplane::Dataplane;
use natgw_linux::events::Events;
use natgw_linux::netlink::Netlink;
use natgw_linux::state_store::{self, StateError};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;
use tracing::{error, info, warn};

use super::{gateway, up};
use crate::binding_log::BindingLog;
use crate::cli::{GatewayArgs, ObserveArgs};
use crate::exit::{self, problem};
use crate::metrics::DaemonFigures;
use crate::tracker::Tracker;

/// Notifications come in bursts (a link going down removes addresses and routes):
/// reconcile once, shortly after the first.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the sysctls are read: forwarding switched off is repaired within this.
const SYSCTL_POLL: Duration = Duration::from_millis(500);
/// After a failed reconcile (interface down, another command holding the lock).
const RETRY: Duration = Duration::from_secs(2);
/// A full reconcile even without notifications, in case one was missed.
const SAFETY: Duration = Duration::from_secs(60);

pub fn run(args: &GatewayArgs, down_on_exit: bool, observe: &ObserveArgs) -> exit::Result<i32> {
    let settings = gateway::settings(args)?;
    // As `up`: refused at start rather than retried forever.
    if settings.dataplane == natgw_core::dataplane::DataplaneKind::Ebpf {
        super::up::ebpf_carried(settings.public.as_deref().unwrap_or_default())?;
    }
    gateway::require_privilege()?;
    // Before any thread exists, so that none of them takes these signals.
    let signals = signal_fd().map_err(problem)?;
    let _daemon = state_store::daemon_lock().map_err(|e| match e {
        StateError::Locked { holder, .. } => problem(anyhow!(
            "another `natgw run` already keeps the gateway of this network namespace ({holder}); stop it first (systemctl stop natgw)"
        )),
        other => problem(other),
    })?;
    let events = Events::subscribe()
        .map_err(|e| problem(anyhow!("cannot subscribe to kernel notifications: {e}")))?;
    let figures = Arc::new(DaemonFigures::default());
    let mut tracker = start_observing(observe, settings.log_mappings, &figures)?;
    // The eBPF plane's bindings, for the same mapping log.
    let mut bindings = BindingLog::default();
    let mut daemon = Daemon {
        netlink: gateway::connect()?,
        dataplane: gateway::select(&settings, false, args),
        settings,
        forwarding: Vec::new(),
        ebpf_public: None,
        last_problem: None,
        ready: false,
        repairs: 0,
        figures,
        ha: super::ha::Ha::default(),
    };
    let watchdog = watchdog_interval();
    info!("natgw run: keeping the gateway of this network namespace");

    let mut due = Some(Instant::now());
    let mut next_poll = Instant::now() + SYSCTL_POLL;
    let mut next_safety = Instant::now() + SAFETY;
    let mut next_ping = watchdog.map(|w| Instant::now() + w);
    let stop = loop {
        let now = Instant::now();
        let wake = [due, Some(next_poll), Some(next_safety), next_ping]
            .into_iter()
            .flatten()
            .min()
            .expect("the poll timer is always set");
        let mut fds = vec![
            events.fds()[0],
            events.fds()[1],
            signals.as_fd().as_raw_fd(),
        ];
        fds.extend(tracker.as_ref().map(Tracker::fd));
        let ha_slot = fds.len();
        fds.extend(daemon.ha.fd());
        let bindings_slot = fds.len();
        fds.extend(bindings.fd());
        let ready = wait(&fds, wake.saturating_duration_since(now));
        if daemon.ha.fd().is_some() && ready.get(ha_slot).copied().unwrap_or(false) {
            daemon.ha.answer();
        }
        if ready.get(bindings_slot).copied().unwrap_or(false) {
            if let Some(log) = tracker.as_mut().and_then(Tracker::log_mut) {
                bindings.drain(log);
            }
        }
        if ready.get(3).copied().unwrap_or(false) {
            if let Some(tracker) = tracker.as_mut() {
                tracker.on_readable();
            }
        }
        if ready[0] || ready[1] {
            events.drain();
            // Sooner than a pending retry: the change may be what the retry waits for.
            let soon = Instant::now() + DEBOUNCE;
            due = Some(due.map_or(soon, |d| d.min(soon)));
        }
        if ready[2] {
            match signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => {
                        if daemon.reload(args) {
                            due = Some(Instant::now());
                        }
                    }
                    Ok(signal) => break signal,
                    Err(_) => {}
                },
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot read a signal"),
            }
        }
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + SYSCTL_POLL;
            if daemon.forwarding_drifted() || daemon.programs_missing() {
                due = Some(now);
            }
            if daemon.ha.poll(daemon.settings.ha.as_ref(), &daemon.netlink) {
                due = Some(now);
            }
            // The programs may have been loaded again (their ring is another map).
            bindings.refresh(tracker.as_mut().and_then(Tracker::log_mut));
        }
        if now >= next_safety {
            next_safety = now + SAFETY;
            due.get_or_insert(now);
        }
        if due.is_some_and(|d| now >= d) {
            // Notifications that arrive meanwhile (our own changes among them) are read
            // in the next round: one more, usually empty, reconcile rather than a
            // missed change.
            due = match daemon.reconcile() {
                Ok(()) => None,
                Err(()) => Some(Instant::now() + RETRY),
            };
            bindings.refresh(tracker.as_mut().and_then(Tracker::log_mut));
        }
        if let (Some(ping), Some(interval)) = (next_ping, watchdog) {
            if now >= ping {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                next_ping = Some(now + interval);
            }
        }
    };

    info!(signal = %stop, "stopping");
    if let Some(log) = tracker.as_mut().and_then(Tracker::log_mut) {
        bindings.drain(log);
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    // An HA member that stops hands the gateway addresses to its peer.
    daemon.ha.stop(daemon.settings.ha.as_ref(), &daemon.netlink);
    if down_on_exit {
        return daemon.down();
    }
    info!("natgw's rules stay in place (--down-on-exit removes them)");
    Ok(exit::OK)
}

struct Daemon {
    netlink: Netlink,
    dataplane: Box<dyn Dataplane>,
    settings: Settings,
    /// The forwarding sysctls of the last desired gateway, for the cheap poll.
    forwarding: Vec<(String, String)>,
    /// With the eBPF plane, the public interface its programs must be attached to (the
    /// cheap poll checks them: detaching raises no notification).
    ebpf_public: Option<String>,
    /// Logged once until it changes, so a down interface does not flood the log.
    last_problem: Option<String>,
    ready: bool,
    repairs: u64,
    /// Reconcile counters and health, for the metrics.
    figures: Arc<DaemonFigures>,
    /// keepalived and conntrackd, with `[ha]`.
    ha: super::ha::Ha,
}

impl Daemon {
    /// One round of `up`: returns `Err` when it should be retried.
    fn reconcile(&mut self) -> Result<(), ()> {
        self.figures.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        let outcome = self.try_reconcile();
        self.figures
            .verified
            .store(matches!(outcome, Ok(Some(_))), Ordering::Relaxed);
        match outcome {
            Ok(Some(status)) => {
                self.last_problem = None;
                let _ = sd_notify::notify(false, &[NotifyState::Status(&status)]);
                if !self.ready {
                    self.ready = true;
                    info!(%status, "ready");
                    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(problem) => {
                if self.last_problem.as_ref() != Some(&problem) {
                    error!(problem = %problem, "the gateway cannot be brought to its desired state; retrying");
                    let _ = sd_notify::notify(
                        false,
                        &[NotifyState::Status(&format!("degraded: {problem}"))],
                    );
                    self.last_problem = Some(problem);
                }
                Err(())
            }
        }
    }

    /// `Ok(Some(status line))` when the gateway is in place, `Ok(None)` when nothing
    /// could be looked at this time but nothing is wrong either.
    fn try_reconcile(&mut self) -> Result<Option<String>, String> {
        let text = |f: exit::Failure| format!("{:#}", f.error);
        let _lock = gateway::lock("run").map_err(text)?;
        let mut observed =
            gateway::observe(&self.netlink, self.dataplane.as_ref()).map_err(text)?;
        if let Some(problem) = &observed.state_problem {
            return Err(format!("{problem}; run `natgw down` to recover"));
        }
        let recorded = observed.state.as_ref().and_then(|s| s.gateway.clone());
        let recalled = natgw_core::remember::recall(&self.settings, recorded.as_ref(), &observed);
        if !recalled.gone.is_empty() {
            return Err(format!(
                "the recorded {} no longer exist(s); name the interfaces in the config (`public`, `private`)",
                recalled.gone.join(", ")
            ));
        }
        let settings = recalled.settings;
        let desired = natgw_core::desired(&settings, &observed).map_err(|e| e.to_string())?;
        gateway::on_public(&mut self.dataplane, &desired, &mut observed).map_err(text)?;
        self.forwarding = desired
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.ebpf_public = desired
            .dataplane
            .ebpf()
            .map(|_| desired.public.name.as_str().to_string());
        self.figures.set_gateway(&desired);
        up::switch_carried(&desired, &observed).map_err(text)?;
        let plan = natgw_core::plan(&desired, &observed);
        if !plan.is_empty() {
            for change in &plan.changes {
                info!(change = %change, "drift found");
            }
            up::apply_and_verify(
                &plan,
                &observed,
                &settings,
                &desired,
                &self.netlink,
                self.dataplane.as_ref(),
                false,
            )
            .map_err(|f| {
                self.figures.apply_errors.fetch_add(1, Ordering::Relaxed);
                text(f)
            })?;
            self.repairs += 1;
            self.figures.drift_repairs.fetch_add(1, Ordering::Relaxed);
            info!(changes = plan.changes.len(), "repaired and verified");
            flush_old_translations(recorded.as_ref(), &desired);
        }
        self.ha
            .reconcile(settings.ha.as_ref(), &desired, &observed)?;
        if let Some(lost) = natgw_core::plan::uplink_lost(&desired, &observed) {
            // The uplink's routes belong to the admin's network manager: say it, never
            // fight it.
            if self.last_problem.as_ref() != Some(&lost) {
                warn!(problem = %lost, "waiting for the uplink's default route");
            }
        }
        Ok(Some(status_line(&desired, self.repairs)))
    }

    /// Whether a forwarding sysctl no longer has the desired value.
    fn forwarding_drifted(&self) -> bool {
        self.forwarding
            .iter()
            .any(|(name, want)| natgw_linux::sysctl::read(name).ok().as_ref() != Some(want))
    }

    /// Whether the eBPF programs are no longer attached and pinned.
    fn programs_missing(&self) -> bool {
        self.ebpf_public
            .as_deref()
            .is_some_and(|public| !natgw_linux::ebpf::running(public))
    }

    /// SIGHUP: a valid configuration replaces the running one; an invalid one is
    /// logged and changes nothing.
    fn reload(&mut self, args: &GatewayArgs) -> bool {
        match gateway::settings(args) {
            Ok(settings) => {
                info!("configuration reloaded");
                let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
                // The config may name the other data plane.
                self.dataplane = gateway::select(&settings, false, args);
                self.settings = settings;
                true
            }
            Err(failure) => {
                error!(error = %format!("{:#}", failure.error), "reload refused; the running gateway stays as it was");
                false
            }
        }
    }

    /// `--down-on-exit`: what `natgw down` does.
    fn down(&self) -> exit::Result<i32> {
        let _lock = gateway::lock("run --down-on-exit")?;
        let observed =
            natgw_linux::observe(&self.netlink, self.dataplane.as_ref()).map_err(exit::problem)?;
        let report = natgw_linux::teardown(&observed, &self.netlink, self.dataplane.as_ref());
        for line in &report.errors {
            error!(error = %line, "could not undo");
        }
        Ok(if report.errors.is_empty() {
            exit::OK
        } else {
            exit::PROBLEM
        })
    }
}

/// When the SNAT address changed (the public address moved), connections translated
/// to the old one would linger and fail; the kernel does this itself for masquerade.
fn flush_old_translations(recorded: Option<&Desired>, desired: &Desired) {
    let Some(SnatMode::To(old)) = recorded.map(|r| &r.snat) else {
        return;
    };
    if desired.snat == SnatMode::To(*old) {
        return;
    }
    match natgw_linux::conntrack::flush_translated_to(*old) {
        Ok(report) => {
            info!(address = %old, %report, "flushed connections translated to the old address")
        }
        Err(e) => {
            warn!(address = %old, error = %e, "cannot flush connections translated to the old address")
        }
    }
}

fn status_line(desired: &Desired, repairs: u64) -> String {
    let private: Vec<String> = desired.private.iter().map(|i| i.name.to_string()).collect();
    format!(
        "gateway up: {} -> {} via {}; {repairs} apply(s) since start",
        private.join(","),
        desired.snat,
        desired.public.name
    )
}

/// SIGHUP, SIGTERM and SIGINT, blocked for normal delivery and read from a file
/// descriptor in the loop.
fn signal_fd() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(signal);
    }
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Half the watchdog period systemd asked for, when it asked.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// `--metrics-listen` and `--log-mappings`: the translation view fed by conntrack
/// events (read in the loop) and the metrics listener (a thread of this process).
fn start_observing(
    observe: &ObserveArgs,
    log_by_config: bool,
    figures: &Arc<DaemonFigures>,
) -> exit::Result<Option<Tracker>> {
    // `log_mappings = true` in the config: the default path, unless a flag names one.
    let log_path = observe.log_mappings.clone().or_else(|| {
        log_by_config.then(|| std::path::PathBuf::from(crate::mapping_log::DEFAULT_PATH))
    });
    if log_path.is_some() {
        natgw_linux::ebpf::follow_events();
    }
    if observe.metrics_listen.is_none() && log_path.is_none() {
        return Ok(None);
    }
    let log = match &log_path {
        Some(path) => Some(
            crate::mapping_log::MappingLog::open(path, crate::mapping_log::DEFAULT_MAX_BYTES)
                .map_err(problem)?,
        ),
        None => None,
    };
    let tracker = Tracker::start(figures.clone(), log).map_err(problem)?;
    if let Some(addr) = observe.metrics_listen {
        let sources = crate::metrics::Sources {
            figures: figures.clone(),
            view: tracker.view(),
        };
        let bound = crate::metrics::serve(addr, sources).map_err(problem)?;
        info!(address = %bound, "serving /metrics and /healthz");
    }
    Ok(Some(tracker))
}

/// Waits until one of `fds` is readable or `timeout` passed; which are readable.
fn wait(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pollfds` is a valid array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, millis) };
    let mut ready = vec![false; fds.len()];
    if n > 0 {
        for (slot, pfd) in ready.iter_mut().zip(&pollfds) {
            *slot = pfd.revents & (libc::POLLIN | libc::POLLERR) != 0;
        }
    }
    ready
}
