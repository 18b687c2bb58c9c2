//! Connection tracking through ctnetlink (nfnetlink subsystem 1), the interface
//! `conntrack -L/-S/-E` uses, which works whether or not the kernel has
//! CONFIG_NF_CONNTRACK_PROCFS:
//! - `usage`: entries in use and the maximum (`IPCTNL_MSG_CT_GET_STATS`);
//! - `stats`: the per-CPU counters summed (`IPCTNL_MSG_CT_GET_STATS_CPU`, `conntrack -S`);
//! - `translations`: a dump of the IPv4 table filtered to source-translated entries;
//! - `Subscription`: NEW and DESTROY events, decoded into natgw's `MappingEvent`s.
//!
//! Entries are decoded with `netlink-packet-netfilter`; the statistics messages, which
//! that crate leaves untyped, with `decode_cpu_stats`/`decode_usage` here.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use natgw_core::mapping::{MappingEvent, Protocol, Translation};
use natgw_core::observed::Conntrack;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};

const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
/// nfnetlink multicast groups (linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Attribute numbers inside CTA_TUPLE_PROTO that the crate leaves untyped.
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
/// Events buffered before the kernel reports an overrun (needs CAP_NET_ADMIN to go
/// past net.core.rmem_max): about 16,000 events at ~1 KiB of socket memory each.
const EVENT_BUFFER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CtnetlinkError {
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot send the ctnetlink request")]
    Send(#[source] std::io::Error),
    #[error("cannot receive the ctnetlink answer")]
    Receive(#[source] std::io::Error),
    #[error("the kernel refused the ctnetlink request (is conntrack loaded?)")]
    Refused(#[source] std::io::Error),
    #[error("malformed ctnetlink message: {0}")]
    Decode(String),
    #[error("cannot subscribe to conntrack events")]
    Subscribe(#[source] std::io::Error),
}

/// The kernel's conntrack counters, summed over CPUs (`conntrack -S`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub found: u64,
    pub invalid: u64,
    pub insert: u64,
    /// New connections that could not be inserted: with NAT, usually no free port.
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    pub error: u64,
    pub search_restart: u64,
    pub clash_resolve: u64,
    pub chain_toolong: u64,
}

impl KernelStats {
    /// The subset the doctor compares between runs.
    pub fn for_doctor(&self) -> natgw_core::doctor::ConntrackStats {
        natgw_core::doctor::ConntrackStats {
            drop: self.drop,
            early_drop: self.early_drop,
            insert_failed: self.insert_failed,
        }
    }

    fn add(&mut self, other: &KernelStats) {
        self.found += other.found;
        self.invalid += other.invalid;
        self.insert += other.insert;
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.error += other.error;
        self.search_restart += other.search_restart;
        self.clash_resolve += other.clash_resolve;
        self.chain_toolong += other.chain_toolong;
    }
}

/// A request socket in the current network namespace.
pub struct Ctnetlink {
    socket: Socket,
    seq: u32,
}

impl Ctnetlink {
    pub fn open() -> Result<Ctnetlink, CtnetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(CtnetlinkError::Socket)?;
        socket.bind_auto().map_err(CtnetlinkError::Socket)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(CtnetlinkError::Socket)?;
        Ok(Ctnetlink { socket, seq: 0 })
    }

    /// Entries in use and the maximum (`conntrack -C`, `nf_conntrack_max`).
    pub fn usage(&mut self) -> Result<Conntrack, CtnetlinkError> {
        let mut usage = None;
        self.exchange(
            IPCTNL_MSG_CT_GET_STATS,
            NetfilterProtoFamily::Unspec,
            false,
            |message| {
                if let Some(attributes) = other_attributes(message, IPCTNL_MSG_CT_GET_STATS) {
                    usage = decode_usage(attributes);
                }
            },
        )?;
        usage.ok_or_else(|| CtnetlinkError::Decode("no conntrack usage in the answer".into()))
    }

    /// The per-CPU statistics, summed.
    pub fn stats(&mut self) -> Result<KernelStats, CtnetlinkError> {
        let mut total = KernelStats::default();
        self.exchange(
            IPCTNL_MSG_CT_GET_STATS_CPU,
            NetfilterProtoFamily::Unspec,
            true,
            |message| {
                if let Some(attributes) = other_attributes(message, IPCTNL_MSG_CT_GET_STATS_CPU) {
                    total.add(&decode_cpu_stats(attributes));
                }
            },
        )?;
        Ok(total)
    }

    /// Every source-translated entry, IPv4 then IPv6 (nat66, nptv6); the cost is the
    /// size of the table, so this is for a start or a resync, never per request.
    pub fn translations(
        &mut self,
        mut each: impl FnMut(Translation),
    ) -> Result<(), CtnetlinkError> {
        for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
            self.exchange(1, family, true, |message| {
                if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) = &message.inner {
                    if let Some(t) = translation(a) {
                        each(t);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Sends one request of `message_type` and hands each answer to `each` until the
    /// dump is done or the request acknowledged.
    fn exchange(
        &mut self,
        message_type: u8,
        family: NetfilterProtoFamily,
        dump: bool,
        mut each: impl FnMut(&NetfilterMessage),
    ) -> Result<(), CtnetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let inner = if message_type == 1 {
            ConntrackMessage::Get(vec![])
        } else {
            ConntrackMessage::Other {
                message_type,
                attributes: vec![],
            }
        };
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                inner,
            )),
        );
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(CtnetlinkError::Send)?;

        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let size = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(CtnetlinkError::Receive)?;
            let mut offset = 0;
            while offset < size {
                let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..size])
                    .map_err(|e| CtnetlinkError::Decode(e.to_string()))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == self.seq {
                    match message.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(()),
                                Some(_) => Err(CtnetlinkError::Refused(e.to_io())),
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => each(&m),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += netlink_align(length);
            }
        }
    }
}

/// NEW and DESTROY events of the current namespace, for a poll loop.
pub struct Subscription {
    socket: Socket,
    buf: Vec<u8>,
}

/// What one `Subscription::drain` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub events: usize,
    /// The kernel dropped events (socket buffer full): the caller's view is stale and
    /// must be rebuilt from a dump.
    pub overrun: bool,
}

impl Subscription {
    pub fn subscribe() -> Result<Subscription, CtnetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(CtnetlinkError::Subscribe)?;
        socket.bind_auto().map_err(CtnetlinkError::Subscribe)?;
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            socket
                .add_membership(group)
                .map_err(CtnetlinkError::Subscribe)?;
        }
        socket
            .set_non_blocking(true)
            .map_err(CtnetlinkError::Subscribe)?;
        force_receive_buffer(socket.as_raw_fd(), EVENT_BUFFER);
        Ok(Subscription {
            socket,
            buf: vec![0u8; 256 * 1024],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Reads every pending event and hands natgw's translations to `each`.
    pub fn drain(&mut self, mut each: impl FnMut(MappingEvent)) -> Drained {
        let mut drained = Drained::default();
        loop {
            let size = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(size) => size,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return drained,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    drained.overrun = true;
                    continue;
                }
                Err(_) => {
                    drained.overrun = true;
                    return drained;
                }
            };
            let mut offset = 0;
            while offset < size {
                let Ok(message) =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[offset..size])
                else {
                    break;
                };
                let length = message.header.length as usize;
                if let NetlinkPayload::InnerMessage(m) = message.payload {
                    if let Some(event) = event(&m) {
                        drained.events += 1;
                        each(event);
                    }
                }
                if length == 0 {
                    break;
                }
                offset += netlink_align(length);
            }
        }
    }
}

fn netlink_align(length: usize) -> usize {
    (length + 3) & !3
}

/// SO_RCVBUFFORCE (root may exceed rmem_max), else SO_RCVBUF; best effort: a smaller
/// buffer only means earlier overruns, which the caller recovers from.
fn force_receive_buffer(fd: RawFd, bytes: usize) {
    let value = bytes as libc::c_int;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a pointer to a c_int of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// A conntrack event about one of natgw's translations.
pub fn event(message: &NetfilterMessage) -> Option<MappingEvent> {
    match &message.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) => {
            translation(a).map(MappingEvent::Created)
        }
        NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(a)) => {
            translation(a).map(MappingEvent::Ended)
        }
        _ => None,
    }
}

/// The endpoints of one direction of an entry.
#[derive(Debug, Default)]
struct Endpoints {
    source: Option<IpAddr>,
    destination: Option<IpAddr>,
    protocol: Option<u8>,
    source_port: Option<u16>,
    destination_port: Option<u16>,
    icmp_id: Option<u16>,
}

impl Endpoints {
    fn of(tuples: &[Tuple]) -> Endpoints {
        let mut e = Endpoints::default();
        for tuple in tuples {
            match tuple {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(a) => e.source = Some(*a),
                            IPTuple::DestinationAddress(a) => e.destination = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(protos) => {
                    for proto in protos {
                        match proto {
                            ProtoTuple::Protocol(p) => e.protocol = Some(u8::from(*p)),
                            ProtoTuple::SourcePort(p) => e.source_port = Some(*p),
                            ProtoTuple::DestinationPort(p) => e.destination_port = Some(*p),
                            ProtoTuple::Other(nla)
                                if matches!(
                                    nla.kind(),
                                    CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID
                                ) =>
                            {
                                e.icmp_id = be_u16(nla)
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        e
    }

    /// (source port, destination port); ICMP has its identifier in both.
    fn ports(&self) -> (u16, u16) {
        match self.icmp_id {
            Some(id) => (id, id),
            None => (
                self.source_port.unwrap_or(0),
                self.destination_port.unwrap_or(0),
            ),
        }
    }
}

/// The translation an entry describes, when it is source-translated: the reply goes to
/// another address than the original source.
pub fn translation(attributes: &[ConntrackAttribute]) -> Option<Translation> {
    let mut original = None;
    let mut reply = None;
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(Endpoints::of(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(Endpoints::of(t)),
            _ => {}
        }
    }
    let (original, reply) = (original?, reply?);
    let (private, destination, public) =
        (original.source?, original.destination?, reply.destination?);
    if private == public {
        return None;
    }
    let (private_port, destination_port) = original.ports();
    let (_, public_port) = reply.ports();
    Some(Translation {
        protocol: Protocol::from_number(original.protocol?),
        private: SocketAddr::new(private, private_port),
        destination: SocketAddr::new(destination, destination_port),
        public: SocketAddr::new(public, public_port),
    })
}

fn other_attributes(message: &NetfilterMessage, message_type: u8) -> Option<&[DefaultNla]> {
    match &message.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::Other {
            message_type: t,
            attributes,
        }) if *t == message_type => Some(attributes),
        _ => None,
    }
}

/// The value of a 32-bit big-endian attribute.
fn be_u32(nla: &DefaultNla) -> Option<u32> {
    let mut value = [0u8; 4];
    (nla.value_len() == 4).then(|| {
        nla.emit_value(&mut value);
        u32::from_be_bytes(value)
    })
}

fn be_u16(nla: &DefaultNla) -> Option<u16> {
    let mut value = [0u8; 2];
    (nla.value_len() == 2).then(|| {
        nla.emit_value(&mut value);
        u16::from_be_bytes(value)
    })
}

/// One CPU's `IPCTNL_MSG_CT_GET_STATS_CPU` answer (enum ctattr_stats_cpu).
pub fn decode_cpu_stats(attributes: &[DefaultNla]) -> KernelStats {
    let mut s = KernelStats::default();
    for nla in attributes {
        let Some(value) = be_u32(nla).map(u64::from) else {
            continue;
        };
        let slot = match nla.kind() {
            2 => &mut s.found,
            4 => &mut s.invalid,
            8 => &mut s.insert,
            9 => &mut s.insert_failed,
            10 => &mut s.drop,
            11 => &mut s.early_drop,
            12 => &mut s.error,
            13 => &mut s.search_restart,
            14 => &mut s.clash_resolve,
            15 => &mut s.chain_toolong,
            _ => continue,
        };
        *slot = value;
    }
    s
}

/// The `IPCTNL_MSG_CT_GET_STATS` answer (enum ctattr_stats_global).
pub fn decode_usage(attributes: &[DefaultNla]) -> Option<Conntrack> {
    let find = |kind: u16| {
        attributes
            .iter()
            .find(|a| a.kind() == kind)
            .and_then(be_u32)
            .map(u64::from)
    };
    Some(Conntrack {
        count: find(1)?,
        max: find(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkDeserializable;

    /// A NEW event for `udp 10.0.0.11:40000 -> 198.51.100.10:7000` translated to
    /// `203.0.113.1:1025`, as the kernel sends it (nfgenmsg, then CTA_TUPLE_ORIG,
    /// CTA_TUPLE_REPLY, CTA_ID), written out byte by byte.
    const NEW_UDP: &[u8] = &[
        // nfgenmsg: AF_INET, version 0, res_id 0
        2, 0, 0, 0, // CTA_TUPLE_ORIG (nested), 52 bytes
        52, 0, 0x01, 0x80, //   CTA_TUPLE_IP (nested), 20 bytes
        20, 0, 0x01, 0x80, //     CTA_IP_V4_SRC 10.0.0.11
        8, 0, 1, 0, 10, 0, 0, 11, //     CTA_IP_V4_DST 198.51.100.10
        8, 0, 2, 0, 198, 51, 100, 10, //   CTA_TUPLE_PROTO (nested), 28 bytes
        28, 0, 0x02, 0x80, //     CTA_PROTO_NUM 17
        5, 0, 1, 0, 17, 0, 0, 0, //     CTA_PROTO_SRC_PORT 40000
        6, 0, 2, 0, 0x9c, 0x40, 0, 0, //     CTA_PROTO_DST_PORT 7000
        6, 0, 3, 0, 0x1b, 0x58, 0, 0, // CTA_TUPLE_REPLY (nested), 52 bytes
        52, 0, 0x02, 0x80, 20, 0, 0x01, 0x80, //     CTA_IP_V4_SRC 198.51.100.10
        8, 0, 1, 0, 198, 51, 100, 10, //     CTA_IP_V4_DST 203.0.113.1
        8, 0, 2, 0, 203, 0, 113, 1, 28, 0, 0x02, 0x80, 5, 0, 1, 0, 17, 0, 0, 0,
        //     CTA_PROTO_SRC_PORT 7000
        6, 0, 2, 0, 0x1b, 0x58, 0, 0, //     CTA_PROTO_DST_PORT 1025
        6, 0, 3, 0, 0x04, 0x01, 0, 0, // CTA_ID
        8, 0, 12, 0, 0, 0, 0, 42,
    ];

    fn parse(message_type: u8, payload: &[u8]) -> NetfilterMessage {
        let mut header = NetlinkHeader::default();
        header.message_type = (1 << 8) | message_type as u16;
        NetfilterMessage::deserialize(&header, payload).unwrap()
    }

    #[test]
    fn new_event_is_a_created_translation() {
        let message = parse(0, NEW_UDP);
        assert_eq!(
            event(&message),
            Some(MappingEvent::Created(Translation {
                protocol: Protocol::Udp,
                private: "10.0.0.11:40000".parse().unwrap(),
                destination: "198.51.100.10:7000".parse().unwrap(),
                public: "203.0.113.1:1025".parse().unwrap(),
            }))
        );
        let ended = parse(2, NEW_UDP);
        assert!(matches!(event(&ended), Some(MappingEvent::Ended(_))));
    }

    #[test]
    fn untranslated_entry_is_not_natgws() {
        // The reply goes back to the original source: routed, not translated.
        let mut payload = NEW_UDP.to_vec();
        let reply_dst = 4 + 52 + 4 + 4 + 8 + 4;
        payload[reply_dst..reply_dst + 4].copy_from_slice(&[10, 0, 0, 11]);
        assert_eq!(event(&parse(0, &payload)), None);
    }

    #[test]
    fn cpu_stats_are_decoded_by_attribute_number() {
        let payload: &[u8] = &[
            2, 0, 0, 1, // AF_INET, version 0, res_id = cpu 1
            8, 0, 2, 0, 0, 0, 0, 7, // found 7
            8, 0, 9, 0, 0, 0, 0x01, 0x00, // insert_failed 256
            8, 0, 10, 0, 0, 0, 0, 3, // drop 3
            8, 0, 11, 0, 0, 0, 0, 2, // early_drop 2
            8, 0, 99, 0, 0, 0, 0, 9, // unknown: ignored
        ];
        let message = parse(IPCTNL_MSG_CT_GET_STATS_CPU, payload);
        let stats =
            decode_cpu_stats(other_attributes(&message, IPCTNL_MSG_CT_GET_STATS_CPU).unwrap());
        assert_eq!(
            stats,
            KernelStats {
                found: 7,
                insert_failed: 256,
                drop: 3,
                early_drop: 2,
                ..KernelStats::default()
            }
        );
    }

    #[test]
    fn usage_needs_both_entries_and_max() {
        let payload: &[u8] = &[0, 0, 0, 0, 8, 0, 1, 0, 0, 0, 0, 12, 8, 0, 2, 0, 0, 4, 0, 0];
        let message = parse(IPCTNL_MSG_CT_GET_STATS, payload);
        let attributes = other_attributes(&message, IPCTNL_MSG_CT_GET_STATS).unwrap();
        assert_eq!(
            decode_usage(attributes),
            Some(Conntrack {
                count: 12,
                max: 262_144
            })
        );
        assert_eq!(decode_usage(&attributes[..1]), None);
    }

    /// The real kernel, in a fresh network namespace of this test's own thread (the
    /// host's namespace is never touched): the requests are understood and answered.
    #[test]
    fn kernel_answers_in_a_fresh_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root for a network namespace");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut ct = Ctnetlink::open().unwrap();
            let usage = ct.usage().unwrap();
            assert_eq!(usage.count, 0, "a new namespace tracks nothing");
            assert!(usage.max > 0);
            let _ = ct.stats().unwrap();
            let mut n = 0;
            ct.translations(|_| n += 1).unwrap();
            assert_eq!(n, 0);
            let mut events = Subscription::subscribe().unwrap();
            assert_eq!(events.drain(|_| {}), Drained::default());
        })
        .join()
        .unwrap();
    }
}
