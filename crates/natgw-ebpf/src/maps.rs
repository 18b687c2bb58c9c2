//! The layouts shared with bpf/nat.bpf.c, field for field.

use natgw_nat::{Config, Filtering};

pub const MAX_POOL: usize = 16;
pub const MAX_PRIVATE: usize = 8;

/// `struct config` in nat.bpf.c (addresses in network byte order, ports in host order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfConfig {
    pub pool: [u32; MAX_POOL],
    pub pool_len: u32,
    pub private_addr: [u32; MAX_PRIVATE],
    pub private_mask: [u32; MAX_PRIVATE],
    pub private_len: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub filtering: u32,
    /// natgw's bits of `skb->mark` on admitted inbound packets (`mark & mark_mask`)...
    pub mark: u32,
    /// ...and which bits are natgw's: the programs set only these and keep the others.
    pub mark_mask: u32,
    /// Source of the ICMP errors the programs send to private hosts (network order).
    pub icmp_source: u32,
    /// What `natgw_private` sets (under `mark_mask`) on a private host's packet the
    /// kernel routes out of interface `public_ifindex` (0: nothing).
    pub outbound_mark: u32,
    pub public_ifindex: u32,
    /// The private interfaces (0: an unused slot): the fast path sends inbound packets
    /// only to these.
    pub private_ifindex: [u32; MAX_PRIVATE],
    /// The smallest MTU set on a route through the gateway's interfaces (0: none); the
    /// fast path leaves bigger packets to the kernel.
    pub fast_mtu: u32,
    pub _pad: u32,
    pub udp_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_transitory_ns: u64,
    pub icmp_ns: u64,
    pub fragment_ns: u64,
    /// Nonzero: the programs' clock (tests); zero: the kernel's monotonic clock.
    pub now_ns: u64,
    /// How often the sweeper frees expired state (it is expired at once anyway: every
    /// lookup checks).
    pub sweep_ns: u64,
    /// The fast path: how long a flow stays on it without traffic (0: off).
    pub fast_ns: u64,
}

impl BpfConfig {
    /// Whether the translation state of programs running `self` means the same under
    /// `other`: the same pool (in order: ports are indexed by pool position), private
    /// prefixes and port range. Timeouts, filtering, the mark and the ICMP source may
    /// differ: new programs can take over the maps of old ones (bindings kept).
    pub fn same_layout(&self, other: &BpfConfig) -> bool {
        (self.pool, self.pool_len, self.port_lo, self.port_hi)
            == (other.pool, other.pool_len, other.port_lo, other.port_hi)
            && (self.private_addr, self.private_mask, self.private_len)
                == (other.private_addr, other.private_mask, other.private_len)
    }
}

/// The sweeper's default period.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

// SAFETY: plain integers, `repr(C)`, no padding (the u64s start at offset 208).
unsafe impl aya::Pod for BpfConfig {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{0} pool addresses; the eBPF data plane takes at most {MAX_POOL}")]
    PoolTooLarge(usize),
    #[error("{0} private prefixes; the eBPF data plane takes at most {MAX_PRIVATE}")]
    TooManyPrefixes(usize),
    #[error("{0} private interfaces; the eBPF fast path takes at most {MAX_PRIVATE}")]
    TooManyInterfaces(usize),
}

fn be(a: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

impl BpfConfig {
    /// With `natgw_private` marking a private host's packets routed out of interface
    /// `public_ifindex` with `mark` (under `mark_mask`).
    pub fn with_outbound(self, public_ifindex: u32, mark: u32) -> Self {
        Self {
            outbound_mark: mark & self.mark_mask,
            public_ifindex,
            ..self
        }
    }

    /// With the fast path (see nat.bpf.c): flows the forward path has carried once skip
    /// it until they are `idle` without traffic; inbound packets go to the interfaces
    /// `private_ifindex` only. Needs [`BpfConfig::with_outbound`] (the fast path learns
    /// flows from the outbound mark).
    /// `route_mtu`: the smallest MTU a route through the gateway's interfaces sets.
    pub fn with_fast_path(
        self,
        private_ifindex: &[u32],
        idle: std::time::Duration,
        route_mtu: Option<u32>,
    ) -> Result<Self, LayoutError> {
        if private_ifindex.len() > MAX_PRIVATE {
            return Err(LayoutError::TooManyInterfaces(private_ifindex.len()));
        }
        let mut slots = [0; MAX_PRIVATE];
        slots[..private_ifindex.len()].copy_from_slice(private_ifindex);
        Ok(Self {
            private_ifindex: slots,
            fast_mtu: route_mtu.unwrap_or(0),
            fast_ns: (idle.as_nanos() as u64).max(1),
            ..self
        })
    }

    /// `mark` and `mark_mask`: see the fields.
    pub fn new(c: &Config, mark: u32, mark_mask: u32) -> Result<Self, LayoutError> {
        if c.pool.len() > MAX_POOL {
            return Err(LayoutError::PoolTooLarge(c.pool.len()));
        }
        if c.private.len() > MAX_PRIVATE {
            return Err(LayoutError::TooManyPrefixes(c.private.len()));
        }
        let mut pool = [0; MAX_POOL];
        for (slot, a) in pool.iter_mut().zip(&c.pool) {
            *slot = be(*a);
        }
        let (mut private_addr, mut private_mask) = ([0; MAX_PRIVATE], [0; MAX_PRIVATE]);
        for (i, n) in c.private.iter().enumerate() {
            private_addr[i] = be(n.network());
            private_mask[i] = be(n.netmask());
        }
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        Ok(Self {
            pool,
            pool_len: c.pool.len() as u32,
            private_addr,
            private_mask,
            private_len: c.private.len() as u32,
            port_lo: *c.ports.start(),
            port_hi: *c.ports.end(),
            filtering: match c.filtering {
                Filtering::EndpointIndependent => 0,
                Filtering::AddressDependent => 1,
                Filtering::AddressAndPortDependent => 2,
            },
            mark,
            mark_mask,
            icmp_source: be(c.icmp_source),
            outbound_mark: 0,
            public_ifindex: 0,
            private_ifindex: [0; MAX_PRIVATE],
            fast_mtu: 0,
            _pad: 0,
            udp_ns: ns(c.timeouts.udp),
            tcp_established_ns: ns(c.timeouts.tcp_established),
            tcp_transitory_ns: ns(c.timeouts.tcp_transitory),
            icmp_ns: ns(c.timeouts.icmp),
            fragment_ns: ns(c.timeouts.fragment),
            now_ns: 0,
            sweep_ns: ns(SWEEP_INTERVAL),
            fast_ns: 0,
        })
    }
}

/// The per-CPU counters, in the order of `enum counter` in nat.bpf.c.
pub const COUNTERS: [&str; 18] = [
    "out_translated",
    "in_translated",
    "passed",
    "drop_malformed",
    "drop_unsupported",
    "drop_no_mapping",
    "drop_filtered",
    "drop_no_port",
    "bindings_created",
    "bindings_expired",
    "sessions_created",
    "pulled",
    "hairpinned",
    "drop_no_route",
    "events_lost",
    "icmp_suppressed",
    "fast_out",
    "fast_in",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_has_no_hidden_padding() {
        // 16*4 + 4 + 8*4 + 8*4 + 4 + 2 + 2 + 4 + 4 + 4 + 4 + 4 + 4 + 8*4 + 4 + 4 + 8*8
        // in nat.bpf.c.
        assert_eq!(std::mem::size_of::<BpfConfig>(), 272);
    }
}
