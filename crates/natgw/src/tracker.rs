//! The daemon's view of natgw's live translations: one dump at start, then conntrack
//! NEW/DESTROY events read from the daemon's poll loop. A burst that overruns the event
//! socket is recovered by one more dump. Each event also goes to the mapping log, when
//! there is one.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use natgw_core::mapping::{MappingEvent, TranslationView};
use natgw_linux::ctnetlink::{Ctnetlink, Subscription};
use tracing::{info, warn};

use crate::mapping_log::MappingLog;
use crate::metrics::DaemonFigures;

pub struct Tracker {
    events: Subscription,
    view: Arc<Mutex<TranslationView>>,
    figures: Arc<DaemonFigures>,
    log: Option<MappingLog>,
}

impl Tracker {
    /// Subscribes first and lists second, so that no translation falls between the
    /// two (one seen twice is counted once).
    pub fn start(figures: Arc<DaemonFigures>, log: Option<MappingLog>) -> anyhow::Result<Tracker> {
        let events = Subscription::subscribe().context("cannot follow conntrack events")?;
        let mut tracker = Tracker {
            events,
            view: Arc::new(Mutex::new(TranslationView::new())),
            figures,
            log,
        };
        tracker
            .resync()
            .context("cannot list the current translations")?;
        Ok(tracker)
    }

    pub fn view(&self) -> Arc<Mutex<TranslationView>> {
        self.view.clone()
    }

    /// The mapping log, when there is one (the eBPF plane's events go there too).
    pub fn log_mut(&mut self) -> Option<&mut MappingLog> {
        self.log.as_mut()
    }

    pub fn fd(&self) -> RawFd {
        self.events.fd()
    }

    /// Reads every pending event (the fd was readable).
    pub fn on_readable(&mut self) {
        let view = self.view.clone();
        let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
        let log = &mut self.log;
        let drained = self.events.drain(|event: MappingEvent| {
            if view.apply(&event) {
                if let Some(log) = log.as_mut() {
                    log.record(&event);
                }
            }
        });
        drop(view);
        if drained.overrun {
            self.figures.view_resyncs.fetch_add(1, Ordering::Relaxed);
            warn!("conntrack events were lost (a burst of new connections); listing the translations again");
            if let Err(e) = self.resync() {
                warn!(error = %format!("{e:#}"), "cannot list the translations");
            }
        }
    }

    fn resync(&mut self) -> anyhow::Result<()> {
        let mut all = Vec::new();
        Ctnetlink::open()?.translations(|t| all.push(t))?;
        let count = all.len();
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resync(all);
        info!(translations = count, "listed natgw's translations");
        Ok(())
    }
}
