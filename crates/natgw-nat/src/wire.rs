//! The few IPv4, UDP, TCP and ICMP fields the translator reads and writes, over raw
//! bytes, and the Internet checksum arithmetic it needs.
//!
//! Checksums are updated incrementally with exactly the arithmetic of the Linux kernel's
//! `csum_replace4` / `inet_proto_csum_replace4` (what `bpf_l3_csum_replace` and
//! `bpf_l4_csum_replace` run), so that the eBPF data plane produces the same bytes, and
//! so that a packet that arrived with a wrong checksum leaves with the same error
//! instead of being laundered.

use std::net::Ipv4Addr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Byte offsets inside an IPv4 header.
pub mod ip {
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_LEN: usize = 20;
}

/// Byte offsets inside the transport headers (from the start of the transport header).
pub mod l4 {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const UDP_CHECKSUM: usize = 6;
    pub const UDP_LEN: usize = 8;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECKSUM: usize = 16;
    pub const TCP_MIN_LEN: usize = 20;
    pub const ICMP_CHECKSUM: usize = 2;
    pub const ICMP_ID: usize = 4;
    pub const ICMP_LEN: usize = 8;
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    /// Redirect: like an error, it quotes the packet it is about (RFC 792).
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Destination unreachable code 13: communication administratively prohibited.
    pub const CODE_ADMIN_PROHIBITED: u8 = 13;
    /// Destination unreachable code 4: fragmentation needed and DF set.
    pub const CODE_FRAG_NEEDED: u8 = 4;

    /// Error messages carry the header of the packet that caused them (RFC 792, RFC 5508).
    pub fn is_error(ty: u8) -> bool {
        matches!(ty, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than an IPv4 header")]
    Truncated,
    #[error("not IPv4")]
    NotIpv4,
    #[error("header length or total length out of range")]
    BadLength,
    #[error("the transport header is not all there")]
    TransportTruncated,
}

pub fn get16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

pub fn get32(buf: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

pub fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

pub fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn get_addr(buf: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::from(get32(buf, off))
}

/// The parsed IPv4 header of a packet (the bytes stay where they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub header_len: usize,
    pub total_len: usize,
    pub id: u16,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub frag_offset: u16,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ipv4 {
    /// Whether the header carries options. natgw translates no query that does, either
    /// way: Record Route and Timestamp collect the addresses of the private side (the
    /// sender's own, the gateway's private one on the way in, which an echo reply
    /// carries back), which no rewrite of the fixed header hides.
    pub fn has_options(&self) -> bool {
        self.header_len > ip::MIN_LEN
    }

    /// Checks the version and both lengths against the buffer (bytes past `total_len`,
    /// such as Ethernet padding, are allowed and left alone).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() < ip::MIN_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 4 != 4 {
            return Err(WireError::NotIpv4);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        let total_len = usize::from(get16(buf, ip::TOTAL_LEN));
        if header_len < ip::MIN_LEN || total_len < header_len || total_len > buf.len() {
            return Err(WireError::BadLength);
        }
        let frag = get16(buf, ip::FRAG);
        Ok(Self {
            header_len,
            total_len,
            id: get16(buf, ip::ID),
            more_fragments: frag & 0x2000 != 0,
            frag_offset: frag & 0x1fff,
            proto: buf[ip::PROTO],
            src: get_addr(buf, ip::SRC),
            dst: get_addr(buf, ip::DST),
        })
    }

    /// Part of a fragmented datagram (first, middle or last piece).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// A piece after the first: it carries no transport header.
    pub fn is_later_fragment(&self) -> bool {
        self.frag_offset != 0
    }

    /// The transport bytes this packet carries.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.header_len..self.total_len]
    }
}

/// Linux `csum_add`: 32-bit ones' complement addition with end-around carry.
fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u32::from(carry)
}

/// Linux `csum_fold`: folds a 32-bit partial sum into the 16-bit checksum field value.
fn csum_fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Linux `csum_replace4` (also `csum_replace2`, with the values zero-extended): the new
/// checksum after a covered 32-bit (or 16-bit) field changes from `from` to `to`.
pub fn csum_replace(check: u16, from: u32, to: u32) -> u16 {
    let unfolded = u32::from(!check);
    csum_fold(csum_add(csum_add(unfolded, !from), to))
}

/// Which kind of checksum field an update goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// IPv4 header or ICMP checksum: a plain replace.
    Plain,
    /// TCP checksum.
    Tcp,
    /// UDP checksum: 0 means "none" and stays 0; a result of 0 is sent as 0xffff
    /// (`BPF_F_MARK_MANGLED_0`).
    Udp,
}

/// Updates the checksum at `csum_off` for a covered field changing `from` → `to`.
pub fn update_csum(buf: &mut [u8], csum_off: usize, kind: Csum, from: u32, to: u32) {
    let old = get16(buf, csum_off);
    if kind == Csum::Udp && old == 0 {
        return;
    }
    let mut new = csum_replace(old, from, to);
    if kind == Csum::Udp && new == 0 {
        new = 0xffff;
    }
    put16(buf, csum_off, new);
}

/// Ones' complement sum of `data` as big-endian 16-bit words (odd tail padded).
pub fn ones_sum(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = csum_add(sum, u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = csum_add(sum, u32::from(*last) << 8);
    }
    sum
}

/// The checksum field value for `data` (with its checksum field zeroed) plus `extra`.
pub fn checksum(data: &[u8], extra: u32) -> u16 {
    csum_fold(csum_add(ones_sum(data), extra))
}

/// The IPv4 pseudo-header sum for TCP/UDP.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut s = ones_sum(&src.octets());
    s = csum_add(s, ones_sum(&dst.octets()));
    s = csum_add(s, u32::from(proto));
    csum_add(s, len as u32)
}

/// Whether `data` (including its checksum field) sums to zero, i.e. its checksum is right.
pub fn verifies(data: &[u8], extra: u32) -> bool {
    checksum(data, extra) == 0
}

/// Whether the IPv4 header checksum and (for an unfragmented TCP/UDP/ICMP packet) the
/// transport checksum are right. For tests and the differential harness.
pub fn checksums_ok(buf: &[u8]) -> bool {
    let Ok(h) = Ipv4::parse(buf) else {
        return false;
    };
    if !verifies(&buf[..h.header_len], 0) {
        return false;
    }
    if h.is_fragment() {
        return true;
    }
    let payload = h.payload(buf);
    match h.proto {
        PROTO_ICMP => verifies(payload, 0),
        PROTO_TCP => verifies(
            payload,
            pseudo_header_sum(h.src, h.dst, PROTO_TCP, payload.len()),
        ),
        PROTO_UDP => {
            payload.len() >= l4::UDP_LEN
                && (get16(payload, l4::UDP_CHECKSUM) == 0
                    || verifies(
                        payload,
                        pseudo_header_sum(h.src, h.dst, PROTO_UDP, payload.len()),
                    ))
        }
        _ => true,
    }
}

/// Fills in correct IPv4 header and transport checksums (test and packet-building helper).
pub fn fill_checksums(buf: &mut [u8]) -> Result<(), WireError> {
    let h = Ipv4::parse(buf)?;
    put16(buf, ip::CHECKSUM, 0);
    let c = checksum(&buf[..h.header_len], 0);
    put16(buf, ip::CHECKSUM, c);
    if h.is_fragment() {
        return Ok(());
    }
    let start = h.header_len;
    let len = h.total_len - start;
    let (off, pseudo) = match h.proto {
        PROTO_ICMP if len >= l4::ICMP_LEN => (l4::ICMP_CHECKSUM, 0),
        PROTO_TCP if len >= l4::TCP_MIN_LEN => (
            l4::TCP_CHECKSUM,
            pseudo_header_sum(h.src, h.dst, PROTO_TCP, len),
        ),
        PROTO_UDP if len >= l4::UDP_LEN => (
            l4::UDP_CHECKSUM,
            pseudo_header_sum(h.src, h.dst, PROTO_UDP, len),
        ),
        PROTO_ICMP | PROTO_TCP | PROTO_UDP => return Err(WireError::TransportTruncated),
        _ => return Ok(()),
    };
    put16(buf, start + off, 0);
    let mut c = checksum(&buf[start..h.total_len], pseudo);
    if h.proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(buf, start + off, c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A UDP datagram 10.0.0.2:5000 -> 198.51.100.1:53 with payload "hi", checksums
    // computed by hand from RFC 1071's definition.
    fn udp_packet() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 30, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 198, 51, 100, 1, 0x13,
            0x88, 0, 53, 0, 10, 0, 0, b'h', b'i',
        ];
        fill_checksums(&mut p).unwrap();
        p
    }

    #[test]
    fn header_checksum_matches_a_known_value() {
        // The classic example header from Wikipedia's IPv4 article: checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h, 0), 0xb861);
        put16(&mut h, ip::CHECKSUM, 0xb861);
        assert!(verifies(&h, 0));
    }

    #[test]
    fn parse_reads_fields_and_refuses_bad_lengths() {
        let p = udp_packet();
        let h = Ipv4::parse(&p).unwrap();
        assert_eq!(h.header_len, 20);
        assert_eq!(h.total_len, 30);
        assert_eq!(h.proto, PROTO_UDP);
        assert_eq!(h.src, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(h.dst, Ipv4Addr::new(198, 51, 100, 1));
        assert!(!h.is_fragment());
        assert_eq!(Ipv4::parse(&p[..19]), Err(WireError::Truncated));
        assert_eq!(Ipv4::parse(&p[..29]), Err(WireError::BadLength));
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(Ipv4::parse(&v6), Err(WireError::NotIpv4));
        let mut short_ihl = p.clone();
        short_ihl[0] = 0x44;
        assert_eq!(Ipv4::parse(&short_ihl), Err(WireError::BadLength));
        // Trailing padding is allowed.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(Ipv4::parse(&padded).unwrap().total_len, 30);
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut p = udp_packet();
        assert!(checksums_ok(&p));
        let old_src = get32(&p, ip::SRC);
        let new_src = u32::from(Ipv4Addr::new(203, 0, 113, 7));
        put32(&mut p, ip::SRC, new_src);
        update_csum(&mut p, ip::CHECKSUM, Csum::Plain, old_src, new_src);
        update_csum(&mut p, 20 + l4::UDP_CHECKSUM, Csum::Udp, old_src, new_src);
        put16(&mut p, 20, 40000);
        update_csum(&mut p, 20 + l4::UDP_CHECKSUM, Csum::Udp, 5000, 40000);
        assert!(checksums_ok(&p));
        let mut recomputed = p.clone();
        fill_checksums(&mut recomputed).unwrap();
        assert_eq!(p, recomputed);
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut p = udp_packet();
        put16(&mut p, 20 + l4::UDP_CHECKSUM, 0);
        update_csum(&mut p, 20 + l4::UDP_CHECKSUM, Csum::Udp, 1, 2);
        assert_eq!(get16(&p, 20 + l4::UDP_CHECKSUM), 0);
        assert!(checksums_ok(&p));
    }

    #[test]
    fn a_wrong_checksum_stays_wrong() {
        let mut p = udp_packet();
        let c = get16(&p, 20 + l4::UDP_CHECKSUM);
        put16(&mut p, 20 + l4::UDP_CHECKSUM, c.wrapping_add(1));
        update_csum(&mut p, 20 + l4::UDP_CHECKSUM, Csum::Udp, 5000, 6000);
        put16(&mut p, 20, 6000);
        assert!(!checksums_ok(&p));
    }

    #[test]
    fn odd_length_sums_pad_the_last_byte() {
        assert_eq!(ones_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
