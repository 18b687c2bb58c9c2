//! The eBPF plane's half of the mapping log: its programs report each binding made and
//! ended in a pinned ring buffer (`natgw_ebpf::events`), which `natgw run` reads from
//! its poll loop and writes through the same `MappingLog` as the nftables plane's
//! conntrack events, in the same format. The ring is reopened when the programs are
//! loaded again (another map under the same pin).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{SystemTime, UNIX_EPOCH};

use natgw_core::mapping::{MappingRecord, Protocol, RecordKind};
use natgw_ebpf::events::{self, BindingEvent, EventKind, EventReader};
use tracing::{info, warn};

use crate::mapping_log::MappingLog;

#[derive(Default)]
pub struct BindingLog {
    reader: Option<EventReader>,
    /// The ring last looked at (also without a log: then its events are turned off).
    seen: Option<u32>,
}

impl BindingLog {
    /// Follows the ring of the programs pinned in this namespace, if it changed: with a
    /// log, reads it (and turns the events on); without, turns them off so that they
    /// do not pile up as lost. What the old ring still holds is written first.
    pub fn refresh(&mut self, mut log: Option<&mut MappingLog>) {
        let Ok(dir) = natgw_linux::state_store::bpf_dir() else {
            return;
        };
        let id = events::pinned_id(&dir);
        if id == self.seen {
            return;
        }
        if let Some(log) = log.as_deref_mut() {
            self.drain(log);
        }
        self.reader = None;
        self.seen = id;
        if id.is_none() {
            return;
        }
        if log.is_none() {
            if let Err(e) = events::set_logging(&dir, false) {
                warn!(error = %natgw_linux::apply::error_chain(&e), "cannot turn the eBPF binding events off");
            }
            return;
        }
        match EventReader::open(&dir) {
            Ok(reader) => {
                info!("writing the eBPF plane's bindings to the mapping log");
                self.reader = Some(reader);
            }
            Err(e) => {
                warn!(error = %natgw_linux::apply::error_chain(&e), "cannot follow the eBPF plane's bindings; they are not in the mapping log")
            }
        }
    }

    /// Readable when events wait.
    pub fn fd(&self) -> Option<RawFd> {
        self.reader.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Writes every waiting event.
    pub fn drain(&mut self, log: &mut MappingLog) {
        let Some(reader) = self.reader.as_mut() else {
            return;
        };
        let clock = Clock::now();
        reader.drain(|e| log.write_record(&record(&e, &clock)));
    }
}

/// Wall-clock milliseconds for the programs' monotonic nanoseconds.
struct Clock {
    wall_ms: u64,
    monotonic_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let monotonic_ns = natgw_ebpf::monotonic_now().as_nanos() as u64;
        Clock {
            wall_ms,
            monotonic_ns,
        }
    }

    fn wall_ms(&self, monotonic_ns: u64) -> u64 {
        let ago_ms = self.monotonic_ns.saturating_sub(monotonic_ns) / 1_000_000;
        self.wall_ms.saturating_sub(ago_ms)
    }
}

fn record(e: &BindingEvent, clock: &Clock) -> MappingRecord {
    MappingRecord {
        time_ms: clock.wall_ms(e.time.as_nanos() as u64),
        event: match e.kind {
            EventKind::Created => RecordKind::Created,
            EventKind::Ended => RecordKind::Ended,
        },
        protocol: Protocol::from_number(e.protocol),
        private: SocketAddr::V4(e.private),
        public: SocketAddr::V4(e.public),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_event_becomes_the_nftables_planes_line_at_its_own_time() {
        let clock = Clock {
            wall_ms: 1_767_225_600_123,
            monotonic_ns: 50_000_000_000,
        };
        let e = BindingEvent {
            kind: EventKind::Ended,
            protocol: 17,
            private: "10.0.0.12:40000".parse().unwrap(),
            public: "203.0.113.1:61001".parse().unwrap(),
            // Two seconds before the clock was read.
            time: Duration::from_secs(48),
        };
        let line = serde_json::to_string(&record(&e, &clock)).unwrap();
        assert_eq!(
            line,
            r#"{"time_ms":1767225598123,"event":"ended","protocol":"udp","private":"10.0.0.12:40000","public":"203.0.113.1:61001"}"#
        );
    }
}
