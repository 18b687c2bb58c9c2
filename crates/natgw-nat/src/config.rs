//! What the translator is told: which sources it translates, to which addresses and
//! ports, how it filters, and how long state lives (with the RFC floors enforced).

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::Ipv4Net;

/// Which inbound packets reach a private endpoint that has a binding (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filtering {
    /// Anyone may send to the binding's public endpoint (full cone).
    #[default]
    EndpointIndependent,
    /// Only addresses the private endpoint has sent to.
    AddressDependent,
    /// Only address and port pairs the private endpoint has sent to.
    AddressAndPortDependent,
}

impl Filtering {
    /// The config spelling (`filtering = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointIndependent => "endpoint-independent",
            Self::AddressDependent => "address-dependent",
            Self::AddressAndPortDependent => "address-and-port-dependent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::EndpointIndependent,
            Self::AddressDependent,
            Self::AddressAndPortDependent,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
    }
}

/// How long idle state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// UDP binding, refreshed by outbound packets (RFC 4787 REQ-5: at least 2 min).
    pub udp: Duration,
    /// Established TCP (RFC 5382 REQ-5: at least 2 h 4 min).
    pub tcp_established: Duration,
    /// Partially open or closing TCP, and after a RST (RFC 5382 REQ-5, RFC 7857
    /// section 2.2: at least 4 min).
    pub tcp_transitory: Duration,
    /// ICMP query (RFC 5508 REQ-1: at least 60 s).
    pub icmp: Duration,
    /// How long the ports of a datagram's first fragment are kept for its later ones.
    pub fragment: Duration,
}

impl Timeouts {
    pub const MIN_UDP: Duration = Duration::from_secs(120);
    pub const MIN_TCP_ESTABLISHED: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
    pub const MIN_TCP_TRANSITORY: Duration = Duration::from_secs(240);
    pub const MIN_ICMP: Duration = Duration::from_secs(60);
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: Duration::from_secs(300),
            tcp_established: Self::MIN_TCP_ESTABLISHED,
            tcp_transitory: Self::MIN_TCP_TRANSITORY,
            icmp: Self::MIN_ICMP,
            // The kernel's own reassembly timeout (net.ipv4.ipfrag_time).
            fragment: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sources that are translated on the way out.
    pub private: Vec<Ipv4Net>,
    /// Public addresses; each private host always gets the same one (paired pooling).
    pub pool: Vec<Ipv4Addr>,
    /// Public ports (and ICMP identifiers) handed out.
    pub ports: RangeInclusive<u16>,
    pub filtering: Filtering,
    pub timeouts: Timeouts,
    /// Source of the ICMP errors the translator itself sends to private hosts (the
    /// gateway's private address).
    pub icmp_source: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the address pool is empty: give at least one public address")]
    EmptyPool,
    #[error("no private prefix: give the prefixes whose sources are translated")]
    NoPrivatePrefix,
    #[error("port range {0}-{1} is empty or includes 0: use e.g. 1024-65535")]
    BadPortRange(u16, u16),
    #[error("{what} timeout {got:?} is below the RFC minimum {min:?}")]
    TimeoutTooShort {
        what: &'static str,
        got: Duration,
        min: Duration,
    },
    #[error("pool address {0} lies inside a private prefix: pick a public address")]
    PoolInsidePrivate(Ipv4Addr),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool.is_empty() {
            return Err(ConfigError::EmptyPool);
        }
        if self.private.is_empty() {
            return Err(ConfigError::NoPrivatePrefix);
        }
        let (lo, hi) = (*self.ports.start(), *self.ports.end());
        if lo == 0 || lo > hi {
            return Err(ConfigError::BadPortRange(lo, hi));
        }
        if let Some(a) = self
            .pool
            .iter()
            .find(|a| self.private.iter().any(|n| n.contains(*a)))
        {
            return Err(ConfigError::PoolInsidePrivate(*a));
        }
        let t = &self.timeouts;
        for (what, got, min) in [
            ("udp", t.udp, Timeouts::MIN_UDP),
            (
                "tcp established",
                t.tcp_established,
                Timeouts::MIN_TCP_ESTABLISHED,
            ),
            (
                "tcp transitory",
                t.tcp_transitory,
                Timeouts::MIN_TCP_TRANSITORY,
            ),
            ("icmp", t.icmp, Timeouts::MIN_ICMP),
        ] {
            if got < min {
                return Err(ConfigError::TimeoutTooShort { what, got, min });
            }
        }
        Ok(())
    }

    pub fn is_private(&self, a: Ipv4Addr) -> bool {
        self.private.iter().any(|n| n.contains(&a))
    }

    /// A source no packet from the public side can honestly have: a private prefix,
    /// 0.0.0.0/8, loopback, multicast or reserved (natgw's `public_spoofs4` set).
    pub fn is_spoofed_from_public(&self, a: Ipv4Addr) -> bool {
        let first = a.octets()[0];
        self.is_private(a) || first == 0 || first == 127 || first >= 224
    }

    pub fn is_pool(&self, a: Ipv4Addr) -> bool {
        self.pool.contains(&a)
    }

    /// The public address of a private host: a fixed function of its address, so every
    /// binding of one host shares it (RFC 4787 REQ-2, paired) without any state. The
    /// eBPF program computes the same (a multiplicative hash, then modulo).
    pub fn paired_address(&self, private: Ipv4Addr) -> Ipv4Addr {
        let h = u32::from(private).wrapping_mul(0x9e37_79b1);
        self.pool[(h % self.pool.len() as u32) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Config {
        Config {
            private: vec!["10.0.0.0/8".parse().unwrap()],
            pool: vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)],
            ports: 1024..=65535,
            filtering: Filtering::default(),
            timeouts: Timeouts::default(),
            icmp_source: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    #[test]
    fn defaults_meet_the_rfc_floors() {
        assert!(sample().validate().is_ok());
        let t = Timeouts::default();
        assert_eq!(t.udp, Duration::from_secs(300));
        assert!(t.tcp_established >= Duration::from_secs(7440));
    }

    #[test]
    fn short_timeouts_and_bad_ranges_are_refused() {
        let mut c = sample();
        c.timeouts.udp = Duration::from_secs(119);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TimeoutTooShort { what: "udp", .. })
        ));
        let mut c = sample();
        c.ports = 0..=10;
        assert_eq!(c.validate(), Err(ConfigError::BadPortRange(0, 10)));
        let mut c = sample();
        c.pool.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyPool));
        let mut c = sample();
        c.pool.push(Ipv4Addr::new(10, 9, 9, 9));
        assert_eq!(
            c.validate(),
            Err(ConfigError::PoolInsidePrivate(Ipv4Addr::new(10, 9, 9, 9)))
        );
    }

    #[test]
    fn filtering_round_trips_its_spelling() {
        for f in [
            Filtering::EndpointIndependent,
            Filtering::AddressDependent,
            Filtering::AddressAndPortDependent,
        ] {
            assert_eq!(Filtering::parse(f.as_str()), Some(f));
        }
        assert_eq!(Filtering::parse("full-cone"), None);
    }

    #[test]
    fn paired_address_spreads_hosts_and_is_stable() {
        let c = sample();
        let a = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(c.paired_address(a), c.paired_address(a));
        let used: std::collections::BTreeSet<_> = (1..=50u8)
            .map(|i| c.paired_address(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        assert_eq!(used.len(), 2, "both pool addresses get hosts");
    }
}
