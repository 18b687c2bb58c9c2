//! Bindings (private endpoint ↔ public endpoint) and their sessions (one per remote
//! endpoint), port allocation and expiry. Ordered maps keep every run deterministic.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::config::Timeouts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Udp,
    Tcp,
    /// ICMP queries; the "port" is the identifier.
    Icmp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Udp, Proto::Tcp, Proto::Icmp];
}

/// An address and a port (or ICMP identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(addr: Ipv4Addr, port: u16) -> Self {
        Self { addr, port }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// TCP session state, after RFC 6146 section 3.5.2 (and RFC 7857 section 2.2 for RST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen from the private side only.
    SynOut,
    /// SYN seen from the public side only (endpoint-independent filtering).
    SynIn,
    Established,
    /// FIN seen from the private side.
    FinOut,
    /// FIN seen from the public side.
    FinIn,
    /// FIN seen both ways.
    Closing,
    /// After a RST: kept for the transitory time, revived by any non-RST packet.
    Reset,
}

/// Per-remote state of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub expires: Duration,
    /// `None` for UDP and ICMP.
    pub tcp: Option<TcpState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

impl Session {
    /// Moves a TCP session on by one segment's flags and sets its expiry.
    pub fn tcp_step(&mut self, dir: Direction, flags: u8, now: Duration, t: &Timeouts) {
        use crate::wire::tcp_flags::{FIN, RST, SYN};
        use TcpState::*;
        let Some(state) = self.tcp else { return };
        let next = if flags & RST != 0 {
            Reset
        } else {
            let syn = flags & SYN != 0;
            let fin = flags & FIN != 0;
            match (state, dir) {
                (SynOut, Direction::In) | (SynIn, Direction::Out) if syn => Established,
                (SynOut | SynIn, _) => state,
                (Reset, _) => Established,
                (Established, Direction::Out) if fin => FinOut,
                (Established, Direction::In) if fin => FinIn,
                (FinOut, Direction::In) if fin => Closing,
                (FinIn, Direction::Out) if fin => Closing,
                (s, _) => s,
            }
        };
        self.tcp = Some(next);
        self.expires = now
            + match next {
                Established | FinOut | FinIn => t.tcp_established,
                SynOut | SynIn | Closing | Reset => t.tcp_transitory,
            };
    }
}

/// A binding lives until the latest expiry any of its sessions was ever given, so a
/// session whose timer shrinks (a RST, a close) does not shorten it; the same holds for
/// each remote address the address-dependent filter admits. Both timers are one number
/// that only grows, which the eBPF data plane updates in O(1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub external: Endpoint,
    pub expires: Duration,
    /// Keyed by the remote endpoint (port 0 for ICMP).
    pub sessions: BTreeMap<Endpoint, Session>,
    /// Remote addresses and until when address-dependent filtering admits them.
    pub addresses: BTreeMap<Ipv4Addr, Duration>,
}

impl Binding {
    /// Extends the binding, and the admission of the session's remote address, to
    /// cover a session's (new) expiry.
    pub fn cover(&mut self, remote: Ipv4Addr, until: Duration) {
        self.expires = self.expires.max(until);
        let a = self.addresses.entry(remote).or_default();
        *a = (*a).max(until);
    }
}

/// Where the port search of a private endpoint starts (nat.bpf.c computes the same).
pub fn probe_start(internal: Endpoint) -> u32 {
    (u32::from(internal.addr).wrapping_mul(0x9e37_79b1) ^ u32::from(internal.port))
        .wrapping_mul(0x85eb_ca6b)
}

/// All bindings, indexed both ways.
#[derive(Debug, Clone, Default)]
pub struct Table {
    bindings: BTreeMap<(Proto, Endpoint), Binding>,
    by_external: BTreeMap<(Proto, Endpoint), Endpoint>,
}

impl Table {
    pub fn get(&self, proto: Proto, internal: Endpoint) -> Option<&Binding> {
        self.bindings.get(&(proto, internal))
    }

    pub fn get_mut(&mut self, proto: Proto, internal: Endpoint) -> Option<&mut Binding> {
        self.bindings.get_mut(&(proto, internal))
    }

    /// The private endpoint behind a public one.
    pub fn internal_of(&self, proto: Proto, external: Endpoint) -> Option<Endpoint> {
        self.by_external.get(&(proto, external)).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Proto, Endpoint, &Binding)> {
        self.bindings.iter().map(|((p, i), b)| (*p, *i, b))
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Creates a binding on `addr`: the private port if it is in range and free (port
    /// preservation), else the first free one of a walk through the whole range that
    /// starts at a hash of the private endpoint (so that hosts asking for the same
    /// port do not all queue behind it: a probe is short until the range is nearly
    /// full). `None` when every port of the range is taken: one public endpoint never
    /// serves two private ones (RFC 4787 REQ-3, no port overloading).
    pub fn create(
        &mut self,
        proto: Proto,
        internal: Endpoint,
        addr: Ipv4Addr,
        ports: &RangeInclusive<u16>,
    ) -> Option<&mut Binding> {
        debug_assert!(!self.bindings.contains_key(&(proto, internal)));
        let port = self.free_port(proto, internal, addr, ports)?;
        let external = Endpoint::new(addr, port);
        self.by_external.insert((proto, external), internal);
        Some(self.bindings.entry((proto, internal)).or_insert(Binding {
            external,
            expires: Duration::ZERO,
            sessions: BTreeMap::new(),
            addresses: BTreeMap::new(),
        }))
    }

    fn free_port(
        &self,
        proto: Proto,
        internal: Endpoint,
        addr: Ipv4Addr,
        ports: &RangeInclusive<u16>,
    ) -> Option<u16> {
        let free = |p: &u16| {
            !self
                .by_external
                .contains_key(&(proto, Endpoint::new(addr, *p)))
        };
        if ports.contains(&internal.port) && free(&internal.port) {
            return Some(internal.port);
        }
        let (lo, hi) = (u32::from(*ports.start()), u32::from(*ports.end()));
        let size = hi - lo + 1;
        let start = probe_start(internal) % size;
        (0..size)
            .map(|i| (lo + (start + i) % size) as u16)
            .find(free)
    }

    /// Drops sessions and bindings that ended at or before `now`.
    pub fn expire(&mut self, now: Duration) {
        let by_external = &mut self.by_external;
        self.bindings.retain(|(proto, _), b| {
            b.sessions.retain(|_, s| s.expires > now);
            b.addresses.retain(|_, until| *until > now);
            let keep = b.expires > now;
            if !keep {
                by_external.remove(&(*proto, b.external));
            }
            keep
        });
    }

    /// The two indexes agree and no public endpoint is used twice (for tests).
    pub fn consistent(&self) -> bool {
        self.bindings.len() == self.by_external.len()
            && self.bindings.iter().all(|((p, i), b)| {
                self.by_external.get(&(*p, b.external)) == Some(i)
                    && b.sessions.values().all(|s| s.expires <= b.expires)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp_flags::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, 0, last), port)
    }

    impl Binding {
        fn cover_with(&mut self, remote: Endpoint, s: Session) {
            self.cover(remote.addr, s.expires);
            self.sessions.insert(remote, s);
        }
    }

    const PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    fn session() -> Session {
        Session {
            expires: Duration::from_secs(10),
            tcp: None,
        }
    }

    #[test]
    fn ports_are_preserved_then_searched_then_exhausted() {
        let mut t = Table::default();
        let ports = 5000..=5002;
        let b = t.create(Proto::Udp, ep(2, 5001), PUB, &ports).unwrap();
        assert_eq!(b.external.port, 5001, "preserved");
        b.cover_with(ep(9, 1), session());
        let mut used = std::collections::BTreeSet::from([5001]);
        for host in [3, 4] {
            let b = t.create(Proto::Udp, ep(host, 5001), PUB, &ports).unwrap();
            assert!(
                used.insert(b.external.port),
                "a free port, never a taken one"
            );
            b.cover_with(ep(9, 1), session());
        }
        assert_eq!(used.len(), 3);
        assert!(t.create(Proto::Udp, ep(5, 5001), PUB, &ports).is_none());
        // Another protocol has its own ports.
        t.create(Proto::Tcp, ep(5, 5001), PUB, &ports)
            .unwrap()
            .cover_with(ep(9, 1), session());
        assert!(t.consistent());
    }

    #[test]
    fn the_search_starts_where_the_endpoint_hashes() {
        let mut t = Table::default();
        let ports = 1024..=65535;
        t.create(Proto::Udp, ep(2, 7), PUB, &ports)
            .unwrap()
            .cover_with(ep(9, 1), session());
        let want = 1024 + (probe_start(ep(2, 7)) % 64512) as u16;
        assert_eq!(t.get(Proto::Udp, ep(2, 7)).unwrap().external.port, want);
    }

    #[test]
    fn out_of_range_ports_map_into_the_range() {
        let mut t = Table::default();
        let b = t
            .create(Proto::Udp, ep(2, 80), PUB, &(1024..=2047))
            .unwrap();
        assert!((1024..=2047).contains(&b.external.port));
    }

    #[test]
    fn expiry_frees_the_public_port() {
        let mut t = Table::default();
        let ports = 7000..=7000;
        t.create(Proto::Udp, ep(2, 7000), PUB, &ports)
            .unwrap()
            .cover_with(ep(9, 1), session());
        assert!(t.consistent());
        t.expire(Duration::from_secs(9));
        assert_eq!(t.len(), 1);
        t.expire(Duration::from_secs(10));
        assert!(t.is_empty());
        assert!(t.consistent());
        assert!(t.create(Proto::Udp, ep(3, 1), PUB, &ports).is_some());
    }

    #[test]
    fn expiry_of_one_protocol_leaves_the_same_port_of_another_alone() {
        // Found by the property tests: UDP and ICMP bindings on one public endpoint.
        let mut t = Table::default();
        let ports = 1000..=1003;
        t.create(Proto::Udp, ep(2, 1000), PUB, &ports)
            .unwrap()
            .cover_with(ep(9, 1), session());
        let short = Session {
            expires: Duration::from_secs(5),
            tcp: None,
        };
        t.create(Proto::Icmp, ep(2, 1000), PUB, &ports)
            .unwrap()
            .cover_with(ep(9, 0), short);
        t.expire(Duration::from_secs(6));
        assert!(t.consistent());
        assert_eq!(
            t.internal_of(Proto::Udp, Endpoint::new(PUB, 1000)),
            Some(ep(2, 1000))
        );
    }

    #[test]
    fn tcp_states_follow_rfc_6146() {
        let t = Timeouts::default();
        let now = Duration::from_secs(100);
        let mut s = Session {
            expires: now,
            tcp: Some(TcpState::SynOut),
        };
        s.tcp_step(Direction::Out, SYN, now, &t);
        assert_eq!(s.tcp, Some(TcpState::SynOut));
        assert_eq!(s.expires, now + t.tcp_transitory);
        s.tcp_step(Direction::In, SYN | ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Established));
        assert_eq!(s.expires, now + t.tcp_established);
        s.tcp_step(Direction::In, RST, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Reset));
        assert_eq!(s.expires, now + t.tcp_transitory);
        s.tcp_step(Direction::Out, ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Established), "revived by a non-RST");
        s.tcp_step(Direction::Out, FIN | ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::FinOut));
        assert_eq!(s.expires, now + t.tcp_established);
        s.tcp_step(Direction::In, FIN | ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Closing));
        assert_eq!(s.expires, now + t.tcp_transitory);
        s.tcp_step(Direction::Out, ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Closing));
    }

    #[test]
    fn an_inbound_syn_waits_for_the_private_side() {
        let t = Timeouts::default();
        let now = Duration::ZERO;
        let mut s = Session {
            expires: now,
            tcp: Some(TcpState::SynIn),
        };
        s.tcp_step(Direction::In, ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::SynIn));
        s.tcp_step(Direction::Out, SYN | ACK, now, &t);
        assert_eq!(s.tcp, Some(TcpState::Established));
    }
}
