//! The translator: one call per packet, in one direction, at one instant.
//!
//! `outbound` sees packets leaving through the public interface (after routing),
//! `inbound` packets arriving on it (before routing). Both take the IPv4 packet's bytes
//! and return a [`Verdict`] with the rewritten bytes. Nothing here reads a clock:
//! expiry happens against the `now` each call is given.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::{Config, ConfigError, Filtering};
use crate::table::{Binding, Direction, Endpoint, Proto, Session, Table, TcpState};
use crate::wire::{self, icmp_type, ip, l4, tcp_flags, Csum, Ipv4};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not the translator's business: the host's own stack gets it untouched (traffic
    /// of the gateway itself, packets for public endpoints without a binding).
    Pass,
    /// Translated; it goes on in its direction.
    Forward(Vec<u8>),
    /// A private host's packet for another private host's public endpoint, translated
    /// both ways (source: the sender's public endpoint); it goes back to the private side.
    Hairpin(Vec<u8>),
    Drop(DropReason),
    /// Dropped; this ICMP error goes back to the private sender.
    Reject(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed IPv4 packet, or its transport header is cut short.
    Malformed,
    /// A protocol or ICMP type the translator does not carry for private hosts.
    Unsupported,
    /// A private host's packet that needs a binding, and none exists or may be made.
    NoMapping,
    /// Refused by address(-and-port)-dependent filtering.
    Filtered,
    /// A later fragment whose first fragment was not seen (out of order or lost).
    FragmentWithoutFirst,
    /// No public port left, and the sender already had its share of ICMP errors
    /// ([`IcmpLimit`]).
    NoPortQuiet,
}

/// How many ICMP 3/13 errors a private host gets when no port is left: a token bucket
/// per sender, as the kernel limits the ICMP errors it sends to one peer
/// (`net.ipv4.icmp_ratelimit` = 1000 ms, a burst of `XRLIM_BURST_FACTOR` = 6): one
/// token per `INTERVAL`, at most `BURST` saved, a new sender starts full.
pub struct IcmpLimit;

impl IcmpLimit {
    pub const INTERVAL: Duration = Duration::from_secs(1);
    pub const BURST: u32 = 6;
}

/// A sender's bucket: saved time (each error costs `IcmpLimit::INTERVAL`) and when it
/// was last filled.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    saved: Duration,
    last: Duration,
}

/// A binding as seen from outside the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingView {
    pub proto: Proto,
    pub internal: Endpoint,
    pub external: Endpoint,
    pub expires: Duration,
    pub sessions: BTreeMap<Endpoint, Session>,
}

/// A datagram's later fragments carry no ports: they are rewritten like its first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FragKey {
    out: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
}

#[derive(Debug, Clone, Copy)]
struct FragEntry {
    /// The address that was rewritten (source going out, destination coming in).
    new_addr: Ipv4Addr,
    hairpin: bool,
    expires: Duration,
}

/// What a packet's first bytes say about it.
enum Kind {
    /// UDP, TCP or an ICMP query: `sport`/`dport` are ports or the ICMP identifier
    /// (the remote side of an ICMP query has port 0).
    Query {
        proto: Proto,
        sport: u16,
        dport: u16,
        flags: u8,
    },
    IcmpError,
    Other,
}

pub struct Nat {
    cfg: Config,
    table: Table,
    frags: BTreeMap<FragKey, FragEntry>,
    /// ICMP 3/13 allowance per private sender.
    rejects: BTreeMap<Ipv4Addr, Bucket>,
}

impl Nat {
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            table: Table::default(),
            frags: BTreeMap::new(),
            rejects: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The public endpoint of a private one, if bound.
    pub fn external(&self, proto: Proto, internal: Endpoint) -> Option<Endpoint> {
        self.table.get(proto, internal).map(|b| b.external)
    }

    pub fn bindings(&self) -> Vec<BindingView> {
        self.table
            .iter()
            .map(|(proto, internal, b)| view(proto, internal, b))
            .collect()
    }

    /// Both indexes agree and no public endpoint serves two private ones.
    pub fn consistent(&self) -> bool {
        self.table.consistent()
    }

    /// Forgets everything that ended at or before `now`.
    pub fn expire(&mut self, now: Duration) {
        self.table.expire(now);
        self.frags.retain(|_, e| e.expires > now);
    }

    /// A packet leaving through the public interface.
    pub fn outbound(&mut self, pkt: &[u8], now: Duration) -> Verdict {
        self.expire(now);
        let Ok(h) = Ipv4::parse(pkt) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if !self.cfg.is_private(h.src) {
            return self.own_packet(&h, pkt);
        }
        let mut buf = pkt.to_vec();
        if h.is_later_fragment() {
            return self.later_fragment(true, &h, buf, now);
        }
        match classify(&h, &buf, Direction::Out) {
            Err(r) => Verdict::Drop(r),
            Ok(Kind::Query {
                proto,
                sport,
                dport,
                flags,
            }) => {
                let internal = Endpoint::new(h.src, sport);
                let remote = Endpoint::new(h.dst, dport);
                let hairpin = self.cfg.is_pool(h.dst);
                if hairpin && self.table.internal_of(proto, remote).is_none() {
                    // The gateway's own address and no binding there: the host's business.
                    return Verdict::Pass;
                }
                if !hairpin && h.has_options() {
                    return Verdict::Drop(DropReason::Unsupported);
                }
                let external = match self.open(proto, internal, remote, flags, now) {
                    Ok(e) => e,
                    Err(Some(reason)) => return Verdict::Drop(reason),
                    // No public port left: tell the sender (ICMP 3/13) instead of
                    // letting it retry into silence.
                    Err(None) if !self.may_reject(h.src, now) => {
                        return Verdict::Drop(DropReason::NoPortQuiet)
                    }
                    Err(None) => {
                        return Verdict::Reject(admin_prohibited(pkt, &h, self.cfg.icmp_source))
                    }
                };
                rewrite(
                    &mut buf,
                    &h,
                    proto,
                    ip::SRC,
                    external.addr,
                    src_port_offset(proto),
                    external.port,
                );
                if h.more_fragments {
                    self.remember_fragment(true, &h, external.addr, hairpin, now);
                }
                if hairpin {
                    return self.hairpin(buf, now);
                }
                Verdict::Forward(buf)
            }
            Ok(Kind::IcmpError) => self.error_about_inbound(&h, buf, true),
            // Other protocols to the gateway's own address are the host's (they are
            // delivered locally, nothing to translate); elsewhere they are not carried.
            Ok(Kind::Other) if self.cfg.is_pool(h.dst) => Verdict::Pass,
            Ok(Kind::Other) => Verdict::Drop(DropReason::Unsupported),
        }
    }

    /// Whether `src` may get one more ICMP 3/13 now (and takes the token).
    fn may_reject(&mut self, src: Ipv4Addr, now: Duration) -> bool {
        let full = IcmpLimit::INTERVAL * IcmpLimit::BURST;
        let b = self.rejects.entry(src).or_insert(Bucket {
            saved: full,
            last: now,
        });
        let saved = (b.saved + now.saturating_sub(b.last)).min(full);
        b.last = now;
        let allowed = saved >= IcmpLimit::INTERVAL;
        b.saved = if allowed {
            saved - IcmpLimit::INTERVAL
        } else {
            saved
        };
        allowed
    }

    /// A packet arriving on the public interface.
    pub fn inbound(&mut self, pkt: &[u8], now: Duration) -> Verdict {
        self.expire(now);
        let Ok(h) = Ipv4::parse(pkt) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if !self.cfg.is_pool(h.dst) {
            return Verdict::Pass;
        }
        if self.cfg.is_spoofed_from_public(h.src) {
            // Not a remote host: natgw's filter at the interface's ingress hook drops
            // and counts it, after the programs ran. It must not open or move on a
            // session (a spoofed RST, a SYN that keeps a binding alive) first.
            return Verdict::Pass;
        }
        self.inbound_parsed(&h, pkt.to_vec(), now)
    }

    fn inbound_parsed(&mut self, h: &Ipv4, mut buf: Vec<u8>, now: Duration) -> Verdict {
        if h.is_later_fragment() {
            return self.later_fragment(false, h, buf, now);
        }
        match classify(h, &buf, Direction::In) {
            Err(r) => Verdict::Drop(r),
            Ok(Kind::Query {
                proto,
                sport,
                dport,
                flags,
            }) => {
                let external = Endpoint::new(h.dst, dport);
                let remote = Endpoint::new(h.src, sport);
                let Some(internal) = self.table.internal_of(proto, external) else {
                    return Verdict::Pass;
                };
                if h.has_options() {
                    return Verdict::Drop(DropReason::Unsupported);
                }
                let filtering = self.cfg.filtering;
                let t = self.cfg.timeouts;
                let b = self.table.get_mut(proto, internal).expect("indexes agree");
                if !admits(filtering, b, remote) {
                    return Verdict::Drop(DropReason::Filtered);
                }
                if proto == Proto::Tcp {
                    match b.sessions.get_mut(&remote) {
                        Some(s) => {
                            s.tcp_step(Direction::In, flags, now, &t);
                            let until = s.expires;
                            b.cover(remote.addr, until);
                        }
                        // RFC 6146 section 3.5.2.2: an admitted SYN opens a session.
                        None if is_bare_syn(flags) => {
                            b.sessions.insert(
                                remote,
                                Session {
                                    expires: now + t.tcp_transitory,
                                    tcp: Some(TcpState::SynIn),
                                },
                            );
                            b.cover(remote.addr, now + t.tcp_transitory);
                        }
                        None => {}
                    }
                }
                rewrite(
                    &mut buf,
                    h,
                    proto,
                    ip::DST,
                    internal.addr,
                    dst_port_offset(proto),
                    internal.port,
                );
                if h.more_fragments {
                    self.remember_fragment(false, h, internal.addr, false, now);
                }
                Verdict::Forward(buf)
            }
            Ok(Kind::IcmpError) => self.inbound_error(h, buf),
            Ok(Kind::Other) => Verdict::Pass,
        }
    }

    /// Finds or makes the binding and session for an outbound packet and moves the
    /// session's timer; returns the public endpoint, or why not (`None`: every public
    /// port is taken).
    fn open(
        &mut self,
        proto: Proto,
        internal: Endpoint,
        remote: Endpoint,
        flags: u8,
        now: Duration,
    ) -> Result<Endpoint, Option<DropReason>> {
        let t = self.cfg.timeouts;
        let new_tcp = proto == Proto::Tcp && is_bare_syn(flags);
        if self.table.get(proto, internal).is_none() {
            if proto == Proto::Tcp && !new_tcp {
                return Err(Some(DropReason::NoMapping));
            }
            let addr = self.cfg.paired_address(internal.addr);
            if self
                .table
                .create(proto, internal, addr, &self.cfg.ports)
                .is_none()
            {
                return Err(None);
            }
        }
        let b = self.table.get_mut(proto, internal).expect("just made");
        if proto == Proto::Tcp && !b.sessions.contains_key(&remote) && !new_tcp {
            // Only a SYN opens a TCP session; a stray segment must not open a filter.
            return Err(Some(DropReason::NoMapping));
        }
        let s = b.sessions.entry(remote).or_insert(Session {
            expires: now,
            tcp: (proto == Proto::Tcp).then_some(TcpState::SynOut),
        });
        match proto {
            Proto::Udp => s.expires = now + t.udp,
            Proto::Icmp => s.expires = now + t.icmp,
            Proto::Tcp => s.tcp_step(Direction::Out, flags, now, &t),
        }
        let until = s.expires;
        b.cover(remote.addr, until);
        Ok(b.external)
    }

    /// The second half of a hairpin: the packet, now from the sender's public
    /// endpoint, enters as if it had arrived on the public interface (REQ-9).
    fn hairpin(&mut self, buf: Vec<u8>, now: Duration) -> Verdict {
        let h = Ipv4::parse(&buf).expect("translated packet parses");
        match self.inbound_parsed(&h, buf, now) {
            Verdict::Forward(b) => Verdict::Hairpin(b),
            Verdict::Pass => Verdict::Drop(DropReason::NoMapping),
            other => other,
        }
    }

    fn remember_fragment(
        &mut self,
        out: bool,
        h: &Ipv4,
        new_addr: Ipv4Addr,
        hairpin: bool,
        now: Duration,
    ) {
        self.frags.insert(
            frag_key(out, h),
            FragEntry {
                new_addr,
                hairpin,
                expires: now + self.cfg.timeouts.fragment,
            },
        );
    }

    /// Later fragments take the first fragment's translation. One that comes before
    /// its first fragment finds nothing: dropped going out (it would leak a private
    /// address), left to the host coming in or when it is for the gateway's own address
    /// (a datagram for the host, not a hairpin). Nothing is buffered.
    fn later_fragment(&mut self, out: bool, h: &Ipv4, mut buf: Vec<u8>, now: Duration) -> Verdict {
        let Some(e) = self.frags.get(&frag_key(out, h)).copied() else {
            return if out && !self.cfg.is_pool(h.dst) {
                Verdict::Drop(DropReason::FragmentWithoutFirst)
            } else {
                Verdict::Pass
            };
        };
        let off = if out { ip::SRC } else { ip::DST };
        set_addr(&mut buf, off, e.new_addr, None);
        if e.hairpin {
            return self.hairpin(buf, now);
        }
        Verdict::Forward(buf)
    }

    /// RFC 5508: an error about a packet a private host sent. It is translated only
    /// when the embedded packet belongs to a binding (and passes filtering); it never
    /// refreshes one. Errors about nothing of ours go to the host untouched.
    fn inbound_error(&mut self, h: &Ipv4, mut buf: Vec<u8>) -> Verdict {
        let Some(e) = Embedded::parse(h, &buf) else {
            return Verdict::Pass;
        };
        if e.src != h.dst {
            return Verdict::Pass;
        }
        let Some((proto, port_off)) = e.flow(&buf, icmp_type::ECHO_REQUEST) else {
            return Verdict::Pass;
        };
        let external = Endpoint::new(e.src, wire::get16(&buf, e.l4 + port_off));
        let Some(internal) = self.table.internal_of(proto, external) else {
            return Verdict::Pass;
        };
        let remote = Endpoint::new(e.dst, e.peer_port(&buf, proto, false));
        let b = self.table.get(proto, internal).expect("indexes agree");
        if !admits(self.cfg.filtering, b, remote) {
            return Verdict::Drop(DropReason::Filtered);
        }
        let before = buf.clone();
        e.rewrite(&mut buf, proto, ip::SRC, port_off, internal);
        set_addr(&mut buf, ip::DST, internal.addr, None);
        fix_icmp_checksum(h, &before, &mut buf);
        Verdict::Forward(buf)
    }

    /// An error a private host sends about a packet it received: the embedded
    /// destination and the outer source become the binding's public endpoint.
    /// What the gateway itself sends out of the public interface: its own traffic,
    /// left alone, except an ICMP error it makes about a packet it received translated
    /// (time exceeded, fragmentation needed, a node unreachable). That error quotes the
    /// private endpoint, which must not leave: the quote gets the binding's public
    /// endpoint back, as the remote sent it (so the remote's stack finds its socket:
    /// path MTU discovery for inbound flows), or the error is dropped.
    fn own_packet(&mut self, h: &Ipv4, pkt: &[u8]) -> Verdict {
        let payload = h.payload(pkt);
        let quotes = h.proto == wire::PROTO_ICMP
            && !h.is_later_fragment()
            && payload.len() >= l4::ICMP_LEN
            && (icmp_type::is_error(payload[0]) || payload[0] == icmp_type::REDIRECT);
        let quote = &payload[payload.len().min(l4::ICMP_LEN)..];
        if !quotes
            || quote.len() < ip::MIN_LEN
            || !self.cfg.is_private(wire::get_addr(quote, ip::DST))
        {
            return Verdict::Pass;
        }
        if payload[0] == icmp_type::REDIRECT {
            // About an inbound packet the kernel routed back out of the public
            // interface (a private route gone): advice to the sender, never worth a
            // private address on the wire.
            return Verdict::Drop(DropReason::Unsupported);
        }
        if h.more_fragments {
            return Verdict::Drop(DropReason::Unsupported);
        }
        self.error_about_inbound(h, pkt.to_vec(), false)
    }

    /// An ICMP error about an inbound packet a private host received: from that host
    /// (`from_host`: the outer source becomes its public address too) or from the
    /// gateway itself.
    fn error_about_inbound(&mut self, h: &Ipv4, mut buf: Vec<u8>, from_host: bool) -> Verdict {
        if self.cfg.is_pool(h.dst) {
            // Errors about hairpinned packets are not translated.
            return Verdict::Drop(DropReason::Unsupported);
        }
        let Some(e) = Embedded::parse(h, &buf) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let Some((proto, port_off)) = e.flow(&buf, icmp_type::ECHO_REPLY) else {
            return Verdict::Drop(DropReason::Unsupported);
        };
        let internal = Endpoint::new(e.dst, wire::get16(&buf, e.l4 + port_off));
        let Some(b) = self.table.get(proto, internal) else {
            return Verdict::Drop(DropReason::NoMapping);
        };
        let external = b.external;
        let before = buf.clone();
        e.rewrite(&mut buf, proto, ip::DST, port_off, external);
        if from_host {
            set_addr(&mut buf, ip::SRC, external.addr, None);
        }
        fix_icmp_checksum(h, &before, &mut buf);
        Verdict::Forward(buf)
    }
}

fn view(proto: Proto, internal: Endpoint, b: &Binding) -> BindingView {
    BindingView {
        proto,
        internal,
        external: b.external,
        expires: b.expires,
        sessions: b.sessions.clone(),
    }
}

fn frag_key(out: bool, h: &Ipv4) -> FragKey {
    FragKey {
        out,
        src: h.src,
        dst: h.dst,
        proto: h.proto,
        id: h.id,
    }
}

fn is_bare_syn(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN
}

/// Whether the filtering mode lets `remote` reach this binding.
fn admits(filtering: Filtering, b: &Binding, remote: Endpoint) -> bool {
    match filtering {
        Filtering::EndpointIndependent => true,
        Filtering::AddressDependent => b.addresses.contains_key(&remote.addr),
        Filtering::AddressAndPortDependent => b.sessions.contains_key(&remote),
    }
}

fn classify(h: &Ipv4, buf: &[u8], dir: Direction) -> Result<Kind, DropReason> {
    let p = h.payload(buf);
    let need = |n: usize| {
        if p.len() < n {
            Err(DropReason::Malformed)
        } else {
            Ok(())
        }
    };
    match h.proto {
        wire::PROTO_UDP => {
            need(l4::UDP_LEN)?;
            Ok(Kind::Query {
                proto: Proto::Udp,
                sport: wire::get16(p, l4::SRC_PORT),
                dport: wire::get16(p, l4::DST_PORT),
                flags: 0,
            })
        }
        wire::PROTO_TCP => {
            need(l4::TCP_MIN_LEN)?;
            Ok(Kind::Query {
                proto: Proto::Tcp,
                sport: wire::get16(p, l4::SRC_PORT),
                dport: wire::get16(p, l4::DST_PORT),
                flags: p[l4::TCP_FLAGS],
            })
        }
        wire::PROTO_ICMP => {
            need(l4::ICMP_LEN)?;
            let id = wire::get16(p, l4::ICMP_ID);
            match (p[0], dir) {
                (icmp_type::ECHO_REQUEST, Direction::Out) => Ok(Kind::Query {
                    proto: Proto::Icmp,
                    sport: id,
                    dport: 0,
                    flags: 0,
                }),
                (icmp_type::ECHO_REPLY, Direction::In) => Ok(Kind::Query {
                    proto: Proto::Icmp,
                    sport: 0,
                    dport: id,
                    flags: 0,
                }),
                (t, _) if icmp_type::is_error(t) => {
                    if h.is_fragment() {
                        Ok(Kind::Other)
                    } else {
                        Ok(Kind::IcmpError)
                    }
                }
                _ => Ok(Kind::Other),
            }
        }
        _ => Ok(Kind::Other),
    }
}

fn src_port_offset(proto: Proto) -> usize {
    match proto {
        Proto::Icmp => l4::ICMP_ID,
        _ => l4::SRC_PORT,
    }
}

fn dst_port_offset(proto: Proto) -> usize {
    match proto {
        Proto::Icmp => l4::ICMP_ID,
        _ => l4::DST_PORT,
    }
}

/// Where a transport's checksum is and whether the IPv4 addresses are in it.
fn l4_checksum(proto: Proto) -> (usize, Csum, bool) {
    match proto {
        Proto::Udp => (l4::UDP_CHECKSUM, Csum::Udp, true),
        Proto::Tcp => (l4::TCP_CHECKSUM, Csum::Tcp, true),
        Proto::Icmp => (l4::ICMP_CHECKSUM, Csum::Plain, false),
    }
}

/// Writes an IPv4 address at `off` (of the header at 0) with its header checksum, and
/// the transport checksum at `l4_csum` when the address is in its pseudo-header.
fn set_addr(buf: &mut [u8], off: usize, new: Ipv4Addr, l4_csum: Option<(usize, Csum)>) {
    set_addr_at(buf, 0, off, new, l4_csum);
}

fn set_addr_at(
    buf: &mut [u8],
    ip_start: usize,
    off: usize,
    new: Ipv4Addr,
    l4_csum: Option<(usize, Csum)>,
) {
    let old = wire::get32(buf, ip_start + off);
    let new = u32::from(new);
    if let Some((c, kind)) = l4_csum {
        wire::update_csum(buf, c, kind, old, new);
    }
    wire::update_csum(buf, ip_start + ip::CHECKSUM, Csum::Plain, old, new);
    wire::put32(buf, ip_start + off, new);
}

/// Rewrites one address and one port (or identifier) of a whole packet or first
/// fragment, in the order the eBPF program does: the address with both checksums,
/// then the port with the transport checksum.
fn rewrite(
    buf: &mut [u8],
    h: &Ipv4,
    proto: Proto,
    addr_off: usize,
    addr: Ipv4Addr,
    port_off: usize,
    port: u16,
) {
    let (c, kind, pseudo) = l4_checksum(proto);
    let csum = h.header_len + c;
    set_addr(buf, addr_off, addr, pseudo.then_some((csum, kind)));
    let p = h.header_len + port_off;
    let old = wire::get16(buf, p);
    wire::update_csum(buf, csum, kind, u32::from(old), u32::from(port));
    wire::put16(buf, p, port);
}

/// Brings the outer ICMP checksum up to date with the rewritten embedded packet: one
/// replace per changed 16-bit word, in order (the ICMP message starts on an even
/// offset, and so do all the fields that change).
fn fix_icmp_checksum(h: &Ipv4, before: &[u8], after: &mut [u8]) {
    let start = h.header_len;
    let csum = start + l4::ICMP_CHECKSUM;
    let mut off = start + l4::ICMP_LEN;
    while off + 1 < h.total_len {
        let (old, new) = (wire::get16(before, off), wire::get16(after, off));
        if old != new {
            wire::update_csum(after, csum, Csum::Plain, u32::from(old), u32::from(new));
        }
        off += 2;
    }
}

/// The packet an ICMP error quotes: its IPv4 header and at least 8 bytes after it.
struct Embedded {
    /// Offset of the embedded IPv4 header in the whole packet.
    ip: usize,
    /// Offset of the embedded transport header.
    l4: usize,
    /// How many bytes of the error's payload follow `l4`.
    l4_len: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

impl Embedded {
    fn parse(h: &Ipv4, buf: &[u8]) -> Option<Self> {
        let start = h.header_len + l4::ICMP_LEN;
        let q = &buf[start..h.total_len];
        if q.len() < ip::MIN_LEN || q[0] >> 4 != 4 {
            return None;
        }
        let hl = usize::from(q[0] & 0x0f) * 4;
        if hl < ip::MIN_LEN || q.len() < hl + 8 || wire::get16(q, ip::FRAG) & 0x1fff != 0 {
            return None;
        }
        Some(Self {
            ip: start,
            l4: start + hl,
            l4_len: q.len() - hl,
            proto: q[ip::PROTO],
            src: wire::get_addr(q, ip::SRC),
            dst: wire::get_addr(q, ip::DST),
        })
    }

    /// The binding's protocol and the offset (from `l4`) of the port or identifier on
    /// our side: the source when we sent it (inbound errors, query type `echo` =
    /// request), the destination when we received it (outbound errors, echo reply).
    fn flow(&self, buf: &[u8], echo: u8) -> Option<(Proto, usize)> {
        let ours_is_src = echo == icmp_type::ECHO_REQUEST;
        let port = if ours_is_src {
            l4::SRC_PORT
        } else {
            l4::DST_PORT
        };
        match self.proto {
            wire::PROTO_UDP => Some((Proto::Udp, port)),
            wire::PROTO_TCP => Some((Proto::Tcp, port)),
            wire::PROTO_ICMP if buf[self.l4] == echo => Some((Proto::Icmp, l4::ICMP_ID)),
            _ => None,
        }
    }

    /// The remote side's port in the embedded packet (0 for ICMP).
    fn peer_port(&self, buf: &[u8], proto: Proto, ours_is_dst: bool) -> u16 {
        match proto {
            Proto::Icmp => 0,
            _ if ours_is_dst => wire::get16(buf, self.l4 + l4::SRC_PORT),
            _ => wire::get16(buf, self.l4 + l4::DST_PORT),
        }
    }

    /// Rewrites our side of the embedded packet (address at `addr_off` of its header,
    /// port at `port_off` of its transport header) with its own checksums, as far as
    /// the quoted bytes reach.
    fn rewrite(
        &self,
        buf: &mut [u8],
        proto: Proto,
        addr_off: usize,
        port_off: usize,
        to: Endpoint,
    ) {
        let (c, kind, pseudo) = l4_checksum(proto);
        let l4_csum = (self.l4_len >= c + 2).then_some((self.l4 + c, kind));
        set_addr_at(buf, self.ip, addr_off, to.addr, l4_csum.filter(|_| pseudo));
        let p = self.l4 + port_off;
        let old = wire::get16(buf, p);
        if let Some((c, kind)) = l4_csum {
            wire::update_csum(buf, c, kind, u32::from(old), u32::from(to.port));
        }
        wire::put16(buf, p, to.port);
    }
}

/// ICMP destination unreachable, code 13 (administratively prohibited), from the
/// gateway to the sender of `pkt`, quoting its header and first 8 bytes: what a private
/// host gets when no public port is left.
pub fn admin_prohibited(pkt: &[u8], h: &Ipv4, from: Ipv4Addr) -> Vec<u8> {
    let quote = &pkt[..h.total_len.min(h.header_len + 8)];
    let total = ip::MIN_LEN + l4::ICMP_LEN + quote.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    wire::put16(&mut out, ip::TOTAL_LEN, total as u16);
    out[ip::TTL] = 64;
    out[ip::PROTO] = wire::PROTO_ICMP;
    wire::put32(&mut out, ip::SRC, u32::from(from));
    wire::put32(&mut out, ip::DST, u32::from(h.src));
    out[ip::MIN_LEN] = icmp_type::DEST_UNREACH;
    out[ip::MIN_LEN + 1] = icmp_type::CODE_ADMIN_PROHIBITED;
    out[ip::MIN_LEN + l4::ICMP_LEN..].copy_from_slice(quote);
    wire::fill_checksums(&mut out).expect("well-formed by construction");
    out
}
