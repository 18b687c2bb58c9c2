//! One UDP/IPv4 Ethernet frame, built once and varied in place (source address and
//! ports), so that the generator spends its time sending, not building packets.

use std::net::Ipv4Addr;
use std::ops::Range;

pub const ETHERNET_HEADER: usize = 14;
pub const IPV4_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
/// The smallest IP packet a 64-byte Ethernet frame (with its 4-byte FCS) carries.
pub const MIN_IP_PACKET: usize = 64 - 4 - ETHERNET_HEADER;

const IP: usize = ETHERNET_HEADER;
const UDP: usize = ETHERNET_HEADER + IPV4_HEADER;
const ETHER_TYPE: Range<usize> = 12..14;
const IP_TOTAL_LENGTH: Range<usize> = IP + 2..IP + 4;
const IP_CHECKSUM: Range<usize> = IP + 10..IP + 12;
const IP_SOURCE: Range<usize> = IP + 12..IP + 16;
const IP_DESTINATION: Range<usize> = IP + 16..IP + 20;
const UDP_SOURCE_PORT: Range<usize> = UDP..UDP + 2;
const UDP_DESTINATION_PORT: Range<usize> = UDP + 2..UDP + 4;
const UDP_LENGTH: Range<usize> = UDP + 4..UDP + 6;

/// What varies from packet to packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub source: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

/// A UDP datagram in an Ethernet frame, ready for a packet socket.
#[derive(Debug, Clone)]
pub struct UdpFrame {
    bytes: Vec<u8>,
}

impl UdpFrame {
    /// A frame from `source_mac` to `destination_mac` carrying an IP packet of
    /// `ip_length` bytes (at least the 28 bytes of headers) to `destination`.
    pub fn new(
        source_mac: [u8; 6],
        destination_mac: [u8; 6],
        destination: Ipv4Addr,
        ip_length: usize,
    ) -> UdpFrame {
        assert!(
            (IPV4_HEADER + UDP_HEADER..=usize::from(u16::MAX)).contains(&ip_length),
            "IP packet length {ip_length} out of range"
        );
        let mut bytes = vec![0u8; ETHERNET_HEADER + ip_length];
        bytes[0..6].copy_from_slice(&destination_mac);
        bytes[6..12].copy_from_slice(&source_mac);
        bytes[ETHER_TYPE].copy_from_slice(&0x0800u16.to_be_bytes());
        bytes[IP] = 0x45; // version 4, 5-word header
        bytes[IP_TOTAL_LENGTH].copy_from_slice(&(ip_length as u16).to_be_bytes());
        bytes[IP + 6] = 0x40; // don't fragment
        bytes[IP + 8] = 64; // TTL
        bytes[IP + 9] = 17; // UDP
        bytes[IP_DESTINATION].copy_from_slice(&destination.octets());
        let udp_length = (ip_length - IPV4_HEADER) as u16;
        bytes[UDP_LENGTH].copy_from_slice(&udp_length.to_be_bytes());
        // The UDP checksum stays 0, "none" for IPv4 (RFC 768): NAT keeps it 0, and the
        // generator does not have to recompute it for every packet.
        let mut frame = UdpFrame { bytes };
        frame.set_flow(Flow {
            source: Ipv4Addr::UNSPECIFIED,
            source_port: 0,
            destination_port: 0,
        });
        frame
    }

    /// Rewrites the source address and the ports, and the IPv4 header checksum with them.
    pub fn set_flow(&mut self, flow: Flow) {
        self.bytes[IP_SOURCE].copy_from_slice(&flow.source.octets());
        self.bytes[UDP_SOURCE_PORT].copy_from_slice(&flow.source_port.to_be_bytes());
        self.bytes[UDP_DESTINATION_PORT].copy_from_slice(&flow.destination_port.to_be_bytes());
        self.bytes[IP_CHECKSUM].copy_from_slice(&[0, 0]);
        // Summing the 20-byte header again costs about what an incremental update does.
        let checksum = internet_checksum(&self.bytes[IP..UDP]);
        self.bytes[IP_CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// RFC 1071 checksum of `data` (even length).
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn a_minimal_frame_is_a_valid_udp_datagram() {
        let mut frame = UdpFrame::new(GEN, GW, Ipv4Addr::new(198, 51, 100, 20), MIN_IP_PACKET);
        frame.set_flow(Flow {
            source: Ipv4Addr::new(10, 0, 128, 7),
            source_port: 1024,
            destination_port: 7300,
        });
        let b = frame.bytes();
        assert_eq!(b.len(), 60, "64 bytes on the wire with the FCS");
        assert_eq!(&b[0..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&b[12..14], &[0x08, 0x00]);
        // The IPv4 header as a byte array, checksum computed by hand.
        assert_eq!(
            &b[14..34],
            &[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0x86, 0x70, 10, 0, 128, 7, 198, 51, 100, 20]
        );
        assert_eq!(&b[34..42], &[0x04, 0x00, 0x1c, 0x84, 0, 26, 0, 0]);
    }

    #[test]
    fn the_header_checksum_stays_valid_as_the_flow_changes() {
        let mut frame = UdpFrame::new(GEN, GW, Ipv4Addr::new(198, 51, 100, 10), 1400);
        assert_eq!(frame.bytes().len(), 1414);
        for i in 0..10_000u32 {
            frame.set_flow(Flow {
                source: Ipv4Addr::from(0x0a00_8000 + i),
                source_port: (i * 7) as u16,
                destination_port: (i * 13) as u16,
            });
            // A header with a correct checksum sums to 0xffff (checksum of it is 0).
            assert_eq!(internet_checksum(&frame.bytes()[14..34]), 0, "flow {i}");
        }
    }
}
