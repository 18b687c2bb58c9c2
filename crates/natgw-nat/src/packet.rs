//! Builds well-formed IPv4 packets with correct checksums: for tests, the property
//! tests' corpus and the differential harness.

use std::net::Ipv4Addr;

use crate::table::Endpoint;
use crate::wire::{self, icmp_type, ip, l4};

/// 10.0.0.`i`:`port`, a private host of the tests' networks.
pub fn private_host(i: u8, port: u16) -> Endpoint {
    Endpoint::new(Ipv4Addr::new(10, 0, 0, i), port)
}

/// 198.51.100.`i`:`port` (TEST-NET-2), a remote host of the tests' networks.
pub fn remote_host(i: u8, port: u16) -> Endpoint {
    Endpoint::new(Ipv4Addr::new(198, 51, 100, i), port)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = ip::MIN_LEN + payload.len();
    let mut p = vec![0u8; ip::MIN_LEN];
    p[0] = 0x45;
    wire::put16(&mut p, ip::TOTAL_LEN, total as u16);
    wire::put16(&mut p, ip::ID, 0x1c46);
    wire::put16(&mut p, ip::FRAG, 0x4000); // DF
    p[ip::TTL] = 63;
    p[ip::PROTO] = proto;
    wire::put32(&mut p, ip::SRC, u32::from(src));
    wire::put32(&mut p, ip::DST, u32::from(dst));
    p.extend_from_slice(payload);
    wire::fill_checksums(&mut p).expect("well-formed by construction");
    p
}

pub fn udp(src: Endpoint, dst: Endpoint, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; l4::UDP_LEN];
    wire::put16(&mut u, l4::SRC_PORT, src.port);
    wire::put16(&mut u, l4::DST_PORT, dst.port);
    wire::put16(&mut u, 4, (l4::UDP_LEN + data.len()) as u16);
    u.extend_from_slice(data);
    ipv4(src.addr, dst.addr, wire::PROTO_UDP, &u)
}

pub fn tcp(src: Endpoint, dst: Endpoint, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; l4::TCP_MIN_LEN];
    wire::put16(&mut t, l4::SRC_PORT, src.port);
    wire::put16(&mut t, l4::DST_PORT, dst.port);
    wire::put32(&mut t, 4, 0x0101_0101); // sequence
    wire::put32(&mut t, 8, 0x0202_0202); // acknowledgement
    t[12] = 5 << 4;
    t[l4::TCP_FLAGS] = flags;
    wire::put16(&mut t, 14, 64240); // window
    t.extend_from_slice(data);
    ipv4(src.addr, dst.addr, wire::PROTO_TCP, &t)
}

/// An echo request (type 8) or reply (type 0).
pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
    wire::put16(&mut m, l4::ICMP_ID, id);
    wire::put16(&mut m, 6, seq);
    ipv4(src, dst, wire::PROTO_ICMP, &m)
}

/// `pkt` with a Record Route option (one empty slot, as `ping -R` starts it) in its IP
/// header.
pub fn with_record_route(pkt: &[u8]) -> Vec<u8> {
    let hl = usize::from(pkt[0] & 0x0f) * 4;
    let option = [7u8, 7, 4, 0, 0, 0, 0, 0]; // type, length, pointer, a slot; end of list
    let mut p = pkt[..hl].to_vec();
    p.extend_from_slice(&option);
    p.extend_from_slice(&pkt[hl..]);
    p[0] = 0x40 | ((hl + option.len()) / 4) as u8;
    let total = wire::get16(&p, ip::TOTAL_LEN) + option.len() as u16;
    wire::put16(&mut p, ip::TOTAL_LEN, total);
    wire::fill_checksums(&mut p).expect("well-formed by construction");
    p
}

/// An ICMP error (or redirect) from `from` to `to` about `about`, quoting its header and up to
/// `quote` bytes after it (RFC 792 asks for 8; RFC 1812 routers send more).
pub fn icmp_error(
    from: Ipv4Addr,
    to: Ipv4Addr,
    ty: u8,
    code: u8,
    about: &[u8],
    quote: usize,
) -> Vec<u8> {
    debug_assert!(icmp_type::is_error(ty) || ty == icmp_type::REDIRECT);
    let hl = usize::from(about[0] & 0x0f) * 4;
    let end = about.len().min(hl + quote);
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    if ty == icmp_type::DEST_UNREACH && code == icmp_type::CODE_FRAG_NEEDED {
        wire::put16(&mut m, 6, 1400); // next-hop MTU
    }
    m.extend_from_slice(&about[..end]);
    ipv4(from, to, wire::PROTO_ICMP, &m)
}

/// Splits a packet in two fragments at `at` bytes of its payload (a multiple of 8).
pub fn fragment(pkt: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(at % 8, 0, "fragment offsets are in 8-byte units");
    let h = wire::Ipv4::parse(pkt).expect("a packet");
    let payload = h.payload(pkt);
    assert!(at < payload.len());
    let mk = |data: &[u8], offset: usize, more: bool| {
        let mut p = pkt[..h.header_len].to_vec();
        p.extend_from_slice(data);
        let len = p.len() as u16;
        wire::put16(&mut p, ip::TOTAL_LEN, len);
        let flags = if more { 0x2000 } else { 0 };
        wire::put16(&mut p, ip::FRAG, flags | (offset / 8) as u16);
        wire::put16(&mut p, ip::CHECKSUM, 0);
        let c = wire::checksum(&p[..h.header_len], 0);
        wire::put16(&mut p, ip::CHECKSUM, c);
        p
    };
    (mk(&payload[..at], 0, true), mk(&payload[at..], at, false))
}

/// Glues two fragments made by [`fragment`] back together (for checksum checks).
pub fn reassemble(first: &[u8], second: &[u8]) -> Vec<u8> {
    let h = wire::Ipv4::parse(first).expect("a packet");
    let h2 = wire::Ipv4::parse(second).expect("a packet");
    let mut p = first[..h.total_len].to_vec();
    p.extend_from_slice(h2.payload(second));
    let len = p.len() as u16;
    wire::put16(&mut p, ip::TOTAL_LEN, len);
    wire::put16(&mut p, ip::FRAG, 0);
    wire::put16(&mut p, ip::CHECKSUM, 0);
    let c = wire::checksum(&p[..h.header_len], 0);
    wire::put16(&mut p, ip::CHECKSUM, c);
    p
}
