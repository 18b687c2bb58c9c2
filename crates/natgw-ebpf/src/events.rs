//! Binding events for the mapping log: the programs put one record in the ring buffer
//! `natgw_events` when a binding is made and one when it ends (its expiry passed and
//! a lookup, the sweeper or the port search freed it). Never the destination (RFC
//! 6888 REQ-12). They do so only while `natgw_logging` says a reader wants them
//! (`natgw run --log-mappings`); a full ring loses the record, never the packet, and
//! counts it (`events_lost`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, Map, MapData, RingBuf};

use crate::pin::PinnedError;

/// The ring buffer (pinned with the other maps).
pub const EVENTS_MAP: &str = "natgw_events";
/// One u32: nonzero while a reader wants the events.
pub const LOGGING_MAP: &str = "natgw_logging";
/// The ring's size (nat.bpf.c's EVENTS_BYTES): 131,072 records.
pub const EVENTS_BYTES: u32 = 1 << 22;

/// What happened to a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Ended,
}

/// One record of the ring (`struct binding_event` in nat.bpf.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingEvent {
    pub kind: EventKind,
    /// IP protocol number (6, 17, 1).
    pub protocol: u8,
    /// ICMP: the port is the echo identifier.
    pub private: SocketAddrV4,
    pub public: SocketAddrV4,
    /// The programs' clock (CLOCK_MONOTONIC, or the test clock): when it was made, or
    /// when it expired (it stopped translating then; it is freed up to a sweep later).
    pub time: Duration,
}

/// Size of one record.
const RECORD: usize = 24;

impl BindingEvent {
    /// Decodes a record; `None` for anything else (a record of another layout).
    pub fn parse(b: &[u8]) -> Option<BindingEvent> {
        if b.len() != RECORD {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let addr = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let kind = match b[21] {
            1 => EventKind::Created,
            2 => EventKind::Ended,
            _ => return None,
        };
        Some(BindingEvent {
            kind,
            protocol: b[20],
            private: SocketAddrV4::new(addr(8), port(16)),
            public: SocketAddrV4::new(addr(12), port(18)),
            time: Duration::from_nanos(u64_at(0)),
        })
    }
}

/// The pinned ring of a namespace's programs, read by `natgw run --log-mappings`.
pub struct EventReader {
    ring: RingBuf<MapData>,
    id: u32,
}

impl EventReader {
    /// Opens the ring pinned under `dir` and asks the programs for events.
    pub fn open(dir: &Path) -> Result<EventReader, PinnedError> {
        let path = dir.join(EVENTS_MAP);
        let err = |source| PinnedError::Map {
            path: path.display().to_string(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(err)?;
        let id = data.info().map_err(err)?.id();
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(err)?;
        set_logging(dir, true)?;
        Ok(EventReader { ring, id })
    }

    /// The kernel's id of the ring: another id under the same path means the programs
    /// were loaded again.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Hands every waiting record to `f`; how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(BindingEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(e) = BindingEvent::parse(&item) {
                f(e);
            }
            n += 1;
        }
        n
    }
}

impl AsRawFd for EventReader {
    /// Readable (poll) when records wait.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// The kernel's id of the ring pinned under `dir`, if there is one.
pub fn pinned_id(dir: &Path) -> Option<u32> {
    MapData::from_pin(dir.join(EVENTS_MAP))
        .ok()
        .and_then(|m| m.info().ok())
        .map(|i| i.id())
}

/// Whether the programs pinned under `dir` report events (false when none are).
pub fn logging(dir: &Path) -> bool {
    MapData::from_pin(dir.join(LOGGING_MAP))
        .ok()
        .and_then(|data| Array::<MapData, u32>::try_from(Map::Array(data)).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .is_some_and(|v| v != 0)
}

/// Turns the pinned programs' events on (a reader follows them) or off (nobody does:
/// they would only fill the ring and count as lost).
pub fn set_logging(dir: &Path, on: bool) -> Result<(), PinnedError> {
    let path = dir.join(LOGGING_MAP);
    let err = |source| PinnedError::Map {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    let mut a: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(err)?;
    a.set(0, u32::from(on), 0).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_field_for_field() {
        let mut r = Vec::new();
        r.extend_from_slice(&5_000_000_123u64.to_ne_bytes());
        r.extend_from_slice(&[10, 0, 0, 12]);
        r.extend_from_slice(&[203, 0, 113, 1]);
        r.extend_from_slice(&40000u16.to_be_bytes());
        r.extend_from_slice(&61001u16.to_be_bytes());
        r.extend_from_slice(&[17, 2, 0, 0]);
        let e = BindingEvent::parse(&r).unwrap();
        assert_eq!(
            e,
            BindingEvent {
                kind: EventKind::Ended,
                protocol: 17,
                private: "10.0.0.12:40000".parse().unwrap(),
                public: "203.0.113.1:61001".parse().unwrap(),
                time: Duration::from_nanos(5_000_000_123),
            }
        );
        r[21] = 9;
        assert_eq!(BindingEvent::parse(&r), None, "unknown kind");
        assert_eq!(BindingEvent::parse(&r[..20]), None, "short");
    }
}
