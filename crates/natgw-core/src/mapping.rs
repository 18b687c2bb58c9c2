//! natgw's translations as conntrack reports them, and a view of the live ones that is
//! kept up to date one event at a time, so that metrics and `status` summarise it
//! without listing the kernel's table again. Pure: the adapter feeds it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::desired::{Desired, SnatMode};

/// Source ports one public address can use towards one (destination, port, protocol)
/// with the kernel's default NAT port range 1024-65535 (measured: the 64,513th UDP
/// flow to one destination is refused as `insert_failed`).
pub const PORTS_PER_DESTINATION: u32 = 64_512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl Protocol {
    /// From the IP protocol number.
    pub fn from_number(number: u8) -> Protocol {
        match number {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            // ICMP and ICMPv6 echo: translated alike, by identifier.
            1 | 58 => Protocol::Icmp,
            _ => Protocol::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Other => "other",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One source translation: `private` talks to `destination` and the outside sees it as
/// `public`. For ICMP the "port" is the echo identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Translation {
    pub protocol: Protocol,
    pub private: SocketAddr,
    pub destination: SocketAddr,
    pub public: SocketAddr,
}

/// A conntrack event about a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingEvent {
    Created(Translation),
    Ended(Translation),
}

/// Live translations with running totals by protocol, private host, destination and
/// (public address, destination): each event costs O(1), a summary costs the number of
/// distinct hosts and destinations, never the number of translations.
#[derive(Debug, Default)]
pub struct TranslationView {
    live: HashSet<Translation>,
    by_protocol: BTreeMap<Protocol, u64>,
    by_host: HashMap<IpAddr, u64>,
    by_destination: HashMap<(Protocol, SocketAddr), u64>,
    /// Translations to one destination from one public address: each holds its own
    /// public port, so this is the number of source ports in use.
    by_public_destination: HashMap<(IpAddr, Protocol, SocketAddr), u64>,
    created: u64,
    ended: u64,
}

/// A count with the key it belongs to, for "top" lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCount {
    pub host: IpAddr,
    pub translations: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationCount {
    pub protocol: Protocol,
    pub destination: SocketAddr,
    pub translations: u64,
}

/// The busiest (destination, port, protocol) of one public address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortUse {
    pub public: IpAddr,
    pub protocol: Protocol,
    pub destination: SocketAddr,
    /// Source ports of `public` in use towards `destination`.
    pub ports_used: u64,
    /// How many it can have at once.
    pub ports_allowed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: u64,
    pub by_protocol: BTreeMap<Protocol, u64>,
    pub top_hosts: Vec<HostCount>,
    pub top_destinations: Vec<DestinationCount>,
    /// One entry per public address in use, busiest first.
    pub port_use: Vec<PortUse>,
    /// Translations seen created and ended since the view started.
    pub created: u64,
    pub ended: u64,
}

impl TranslationView {
    pub fn new() -> TranslationView {
        TranslationView::default()
    }

    /// Applies one event; false when it changed nothing (a duplicate, or the end of a
    /// translation the view never saw).
    pub fn apply(&mut self, event: &MappingEvent) -> bool {
        match event {
            MappingEvent::Created(t) => self.insert(*t),
            MappingEvent::Ended(t) => self.remove(t),
        }
    }

    pub fn insert(&mut self, t: Translation) -> bool {
        if !self.live.insert(t) {
            return false;
        }
        self.created += 1;
        *self.by_protocol.entry(t.protocol).or_default() += 1;
        *self.by_host.entry(t.private.ip()).or_default() += 1;
        *self
            .by_destination
            .entry((t.protocol, t.destination))
            .or_default() += 1;
        *self
            .by_public_destination
            .entry((t.public.ip(), t.protocol, t.destination))
            .or_default() += 1;
        true
    }

    pub fn remove(&mut self, t: &Translation) -> bool {
        if !self.live.remove(t) {
            return false;
        }
        self.ended += 1;
        self.by_protocol.decrement(&t.protocol);
        self.by_host.decrement(&t.private.ip());
        self.by_destination.decrement(&(t.protocol, t.destination));
        self.by_public_destination
            .decrement(&(t.public.ip(), t.protocol, t.destination));
        true
    }

    /// Replaces the live set with a full listing (after missed events): what appeared
    /// counts as created and what disappeared as ended.
    pub fn resync(&mut self, all: impl IntoIterator<Item = Translation>) {
        let old = std::mem::take(&mut self.live);
        let (created, ended) = (self.created, self.ended);
        *self = TranslationView::default();
        for t in all {
            self.insert(t);
        }
        let appeared = self.live.difference(&old).count() as u64;
        let gone = old.difference(&self.live).count() as u64;
        self.created = created + appeared;
        self.ended = ended + gone;
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Live translations whose public side is `public` (and `protocol`, when given).
    pub fn find_public(
        &self,
        public: SocketAddr,
        protocol: Option<Protocol>,
    ) -> impl Iterator<Item = &Translation> {
        self.live
            .iter()
            .filter(move |t| t.public == public && protocol.is_none_or(|p| p == t.protocol))
    }

    /// Totals, the `top` busiest hosts and destinations, and per public address its
    /// busiest destination against `ports_allowed`.
    pub fn summary(&self, top: usize, ports_allowed: u32) -> Summary {
        let top_hosts = top_n(&self.by_host, top)
            .into_iter()
            .map(|(host, translations)| HostCount { host, translations })
            .collect();
        let top_destinations = top_n(&self.by_destination, top)
            .into_iter()
            .map(|((protocol, destination), translations)| DestinationCount {
                protocol,
                destination,
                translations,
            })
            .collect();
        let mut busiest: HashMap<IpAddr, PortUse> = HashMap::new();
        for (&(public, protocol, destination), &used) in &self.by_public_destination {
            let candidate = PortUse {
                public,
                protocol,
                destination,
                ports_used: used,
                ports_allowed,
            };
            busiest
                .entry(public)
                .and_modify(|best| {
                    if (used, destination, protocol)
                        > (best.ports_used, best.destination, best.protocol)
                    {
                        *best = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
        let mut port_use: Vec<PortUse> = busiest.into_values().collect();
        port_use.sort_by(|a, b| {
            b.ports_used
                .cmp(&a.ports_used)
                .then(a.public.cmp(&b.public))
        });
        Summary {
            total: self.live.len() as u64,
            by_protocol: self.by_protocol.clone(),
            top_hosts,
            top_destinations,
            port_use,
            created: self.created,
            ended: self.ended,
        }
    }
}

/// The two map types the view counts in: a count that drops to zero is removed, so
/// the maps hold only what is live.
trait CountMap<K> {
    fn decrement(&mut self, key: &K);
}

impl<K: Eq + std::hash::Hash> CountMap<K> for HashMap<K, u64> {
    fn decrement(&mut self, key: &K) {
        if let Some(n) = self.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.remove(key);
            }
        }
    }
}

impl<K: Ord> CountMap<K> for BTreeMap<K, u64> {
    fn decrement(&mut self, key: &K) {
        if let Some(n) = self.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.remove(key);
            }
        }
    }
}

/// The `n` largest counts, largest first, ties in key order (stable output).
fn top_n<K: Copy + Ord>(counts: &HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut all: Vec<(K, u64)> = counts.iter().map(|(k, v)| (*k, *v)).collect();
    let order = |a: &(K, u64), b: &(K, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if all.len() > n && n > 0 {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_by(order);
    all.truncate(n);
    all
}

/// Source ports each public address allows per (destination, port, protocol): the
/// rendered rules translate without a port range, so the kernel's default applies.
pub fn ports_allowed(_desired: &Desired) -> u32 {
    PORTS_PER_DESTINATION
}

/// The public addresses translations can use, when fixed (masquerade follows the
/// interface, so its address is whatever the interface has).
pub fn public_addresses(desired: &Desired) -> Vec<IpAddr> {
    match &desired.snat {
        SnatMode::Masquerade => desired.public.addresses.iter().map(|a| a.addr()).collect(),
        fixed => fixed.addresses(),
    }
}

/// One line of the mapping log: a translation created or ended, without its
/// destination (RFC 6888 REQ-12: the log must not record where users went).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub event: RecordKind,
    pub protocol: Protocol,
    pub private: SocketAddr,
    pub public: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Created,
    Ended,
}

impl MappingRecord {
    pub fn of(event: &MappingEvent, time_ms: u64) -> MappingRecord {
        let (event, t) = match event {
            MappingEvent::Created(t) => (RecordKind::Created, t),
            MappingEvent::Ended(t) => (RecordKind::Ended, t),
        };
        MappingRecord {
            time_ms,
            event,
            protocol: t.protocol,
            private: t.private,
            public: t.public,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(private: &str, destination: &str, public: &str) -> Translation {
        Translation {
            protocol: Protocol::Udp,
            private: private.parse().unwrap(),
            destination: destination.parse().unwrap(),
            public: public.parse().unwrap(),
        }
    }

    #[test]
    fn counts_follow_created_and_ended_events() {
        let mut view = TranslationView::new();
        let a = udp("10.0.0.11:5000", "198.51.100.10:53", "203.0.113.1:5000");
        let b = udp("10.0.0.11:5001", "198.51.100.10:53", "203.0.113.1:5001");
        let c = udp("10.0.0.12:5000", "198.51.100.10:123", "203.0.113.1:1024");
        for t in [a, b, c] {
            assert!(view.apply(&MappingEvent::Created(t)));
        }
        assert!(!view.apply(&MappingEvent::Created(a)), "duplicate");
        let s = view.summary(10, PORTS_PER_DESTINATION);
        assert_eq!(s.total, 3);
        assert_eq!(s.by_protocol[&Protocol::Udp], 3);
        assert_eq!(
            s.top_hosts[0],
            HostCount {
                host: "10.0.0.11".parse().unwrap(),
                translations: 2
            }
        );
        assert_eq!(
            s.top_destinations[0].destination,
            "198.51.100.10:53".parse().unwrap()
        );
        assert_eq!(s.port_use.len(), 1);
        assert_eq!(s.port_use[0].ports_used, 2);
        assert_eq!(
            s.port_use[0].destination,
            "198.51.100.10:53".parse().unwrap()
        );

        assert!(view.apply(&MappingEvent::Ended(a)));
        assert!(!view.apply(&MappingEvent::Ended(a)), "already gone");
        let s = view.summary(10, PORTS_PER_DESTINATION);
        assert_eq!(s.total, 2);
        assert_eq!((s.created, s.ended), (3, 1));
        // 53 and 123 now tie at one port each: the higher destination wins the tie.
        assert_eq!(s.port_use[0].ports_used, 1);
        view.remove(&b);
        view.remove(&c);
        let s = view.summary(10, PORTS_PER_DESTINATION);
        assert!(s.by_protocol.is_empty() && s.top_hosts.is_empty() && s.port_use.is_empty());
    }

    #[test]
    fn top_lists_are_cut_and_ordered() {
        let mut view = TranslationView::new();
        for host in 1..=5u16 {
            for port in 0..host {
                view.insert(udp(
                    &format!("10.0.0.{host}:{}", 1000 + port),
                    "198.51.100.10:53",
                    &format!("203.0.113.1:{}", 1000 + host * 10 + port),
                ));
            }
        }
        let s = view.summary(2, PORTS_PER_DESTINATION);
        let hosts: Vec<(String, u64)> = s
            .top_hosts
            .iter()
            .map(|h| (h.host.to_string(), h.translations))
            .collect();
        assert_eq!(
            hosts,
            [("10.0.0.5".to_string(), 5), ("10.0.0.4".to_string(), 4)]
        );
    }

    #[test]
    fn resync_replaces_the_live_set_and_keeps_totals() {
        let mut view = TranslationView::new();
        let a = udp("10.0.0.11:5000", "198.51.100.10:53", "203.0.113.1:5000");
        let b = udp("10.0.0.12:5000", "198.51.100.10:53", "203.0.113.1:5001");
        view.insert(a);
        view.resync([b]);
        assert_eq!(view.len(), 1);
        assert_eq!(view.find_public(b.public, Some(Protocol::Udp)).count(), 1);
        assert_eq!(view.find_public(a.public, None).count(), 0);
        let s = view.summary(5, 1);
        assert_eq!((s.created, s.ended), (2, 1));
    }

    #[test]
    fn mapping_record_has_no_destination() {
        let t = udp("10.0.0.11:5000", "198.51.100.10:53", "203.0.113.1:6000");
        let line = serde_json::to_string(&MappingRecord::of(&MappingEvent::Ended(t), 42)).unwrap();
        assert_eq!(
            line,
            r#"{"time_ms":42,"event":"ended","protocol":"udp","private":"10.0.0.11:5000","public":"203.0.113.1:6000"}"#
        );
        assert!(!line.contains("198.51.100.10"));
    }
}
