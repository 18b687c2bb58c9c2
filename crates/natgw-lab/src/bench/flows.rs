//! Which flow the generator's packet number `i` belongs to. Synthetic sources come from
//! `SOURCES`, a private network the generator routes for (the gateway reaches it through
//! one neighbour, so tens of thousands of sources cost it no ARP entries).

use std::net::Ipv4Addr;

use super::frames::Flow;

/// The synthetic sources: 10.0.128.0/17.
pub const SOURCES: Ipv4Addr = Ipv4Addr::new(10, 0, 128, 0);
pub const SOURCES_PREFIX_LEN: u8 = 17;
const SOURCE_COUNT: u64 = 1 << (32 - SOURCES_PREFIX_LEN);
const FIRST_PORT: u64 = 1024;
const PORTS: u64 = 65536 - FIRST_PORT;

fn source(k: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SOURCES) + (k % SOURCE_COUNT) as u32)
}

/// Packet `i` opens a flow of its own: a new source address and port each packet, and
/// destination ports spread so no (destination, port) pair runs out of public ports.
pub fn every_packet_new(i: u64) -> Flow {
    Flow {
        source: source(i),
        source_port: (FIRST_PORT + (i / SOURCE_COUNT) % PORTS) as u16,
        destination_port: (FIRST_PORT + i % 64_000) as u16,
    }
}

/// Packet `i` opens a flow of its own, all to one destination port.
pub fn every_packet_new_to(destination_port: u16) -> impl Fn(u64) -> Flow + Sync {
    move |i| Flow {
        destination_port,
        ..every_packet_new(i)
    }
}

/// `n` flows (at most 32,768) to one destination port, packet `i` in flow `i mod n`.
pub fn cycling(n: u64, destination_port: u16) -> impl Fn(u64) -> Flow + Sync {
    assert!((1..=SOURCE_COUNT).contains(&n));
    move |i| Flow {
        source: source(i % n),
        source_port: 40_000,
        destination_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_flows_do_not_repeat_and_stay_in_the_source_network() {
        let mut seen = HashSet::new();
        for i in (0..200_000).chain(5_000_000..5_100_000) {
            let flow = every_packet_new(i);
            assert!(seen.insert((flow.source, flow.source_port)), "packet {i}");
            assert_eq!(u32::from(flow.source) >> 15, u32::from(SOURCES) >> 15);
            assert!(flow.source_port >= 1024 && flow.destination_port >= 1024);
        }
    }

    #[test]
    fn cycling_repeats_n_flows() {
        let flows = cycling(256, 7400);
        assert_eq!(flows(3), flows(259));
        assert_ne!(flows(3), flows(4));
        assert_eq!(flows(255).source, Ipv4Addr::new(10, 0, 128, 255));
    }
}
