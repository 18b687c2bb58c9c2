//! `natgw trace PUBLIC_IP:PORT [--at TIME] [--proto udp|tcp]`: which private host used
//! that public address and port — from the mapping log (`natgw run --log-mappings`)
//! and, for what is open now, from the live conntrack table. With deterministic port
//! blocks (RFC 7422) the configuration itself answers, for any time: the block that
//! holds the port belongs to exactly one host.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use natgw_core::mapping::{MappingRecord, Protocol};
use natgw_core::pool::PortBlock;
use natgw_core::trace::{self, Holder};
use natgw_core::SnatMode;
use natgw_linux::ctnetlink::Ctnetlink;
use serde::Serialize;

use super::gateway;
use crate::cli::TraceArgs;
use crate::exit;
use crate::mapping_log;
use crate::output;

#[derive(Serialize)]
struct Answer {
    public: SocketAddr,
    protocol: Option<Protocol>,
    at_ms: Option<u64>,
    holders: Vec<Holder>,
    /// Lines of the log that could not be read (damaged or foreign).
    skipped_lines: usize,
}

pub fn run(args: &TraceArgs) -> exit::Result<i32> {
    if let Some(code) = from_port_blocks(args)? {
        return Ok(code);
    }
    let at_ms = args
        .at
        .as_deref()
        .map(trace::parse_time)
        .transpose()
        .map_err(|e| exit::usage(anyhow::anyhow!(e)))?;
    let protocol = args.proto.map(|p| match p {
        crate::cli::TraceProtocol::Tcp => Protocol::Tcp,
        crate::cli::TraceProtocol::Udp => Protocol::Udp,
    });
    let (records, skipped_lines) = read_log(&args.log).map_err(exit::problem)?;
    let mut holders = trace::holders(records, args.address, protocol);
    // Live translations: the log may be off, or the flow still open.
    if let Ok(mut ct) = Ctnetlink::open() {
        let _ = ct.translations(|t| {
            if t.public == args.address && protocol.is_none_or(|p| p == t.protocol) {
                mark_live(&mut holders, t.protocol, t.private, t.public);
            }
        });
    }
    // The eBPF plane's live bindings (conntrack does not see them).
    if let SocketAddr::V4(public) = args.address {
        for p in [Protocol::Udp, Protocol::Tcp] {
            if protocol.is_some_and(|want| want != p) {
                continue;
            }
            let number = if p == Protocol::Udp { 17 } else { 6 };
            if let Some(private) = natgw_linux::ebpf::live_holder(number, public) {
                mark_live(&mut holders, p, SocketAddr::V4(private), args.address);
            }
        }
    }
    if let Some(at) = at_ms {
        holders.retain(|h| h.covers(at));
    }
    let answer = Answer {
        public: args.address,
        protocol,
        at_ms,
        holders,
        skipped_lines,
    };
    if args.json {
        output::json(&answer);
    } else {
        print_human(&answer, &args.log);
    }
    Ok(if answer.holders.is_empty() {
        exit::PROBLEM
    } else {
        exit::OK
    })
}

/// `private` holds `public` now: its open holder from the log is live, or a new one
/// (created before the log began, or while it was off).
fn mark_live(
    holders: &mut Vec<Holder>,
    protocol: Protocol,
    private: SocketAddr,
    public: SocketAddr,
) {
    match holders
        .iter_mut()
        .find(|h| h.until_ms.is_none() && h.private == private && h.protocol == protocol)
    {
        Some(h) => h.live = true,
        None => holders.push(Holder {
            protocol,
            private,
            public,
            from_ms: None,
            until_ms: None,
            live: true,
        }),
    }
}

/// Every record of the log and its rotated files, oldest first; a missing log is empty.
fn read_log(path: &Path) -> anyhow::Result<(Vec<MappingRecord>, usize)> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for file in mapping_log::files(path) {
        let f = std::fs::File::open(&file)
            .with_context(|| format!("cannot read the mapping log {}", file.display()))?;
        for line in BufReader::new(f).lines() {
            let line = line.with_context(|| format!("cannot read {}", file.display()))?;
            match serde_json::from_str::<MappingRecord>(&line) {
                Ok(r) => records.push(r),
                Err(_) => skipped += 1,
            }
        }
    }
    Ok((records, skipped))
}

fn print_human(answer: &Answer, log: &Path) {
    let when = |ms: Option<u64>, open: &str| ms.map_or(open.to_string(), trace::format_time);
    if answer.holders.is_empty() {
        let at = answer
            .at_ms
            .map_or(String::new(), |t| format!(" at {}", trace::format_time(t)));
        println!(
            "no record covers {}{at}: nothing in {} (and its rotated files) nor in the live conntrack table",
            answer.public,
            log.display()
        );
        return;
    }
    for h in &answer.holders {
        println!(
            "{} {} held by {} from {} until {}{}",
            h.protocol,
            h.public,
            h.private,
            when(h.from_ms, "before the log began"),
            when(h.until_ms, "now"),
            if h.live { " (live)" } else { "" }
        );
    }
    if answer.skipped_lines > 0 {
        println!(
            "note: {} unreadable line(s) in the log skipped",
            answer.skipped_lines
        );
    }
}

#[derive(Serialize)]
struct BlockAnswer {
    public: SocketAddr,
    /// How it was answered.
    source: &'static str,
    block: PortBlock,
}

/// The answer of the port-block configuration, when the gateway has one. Without
/// flags the recorded gateway is asked; when there is none (not up, no root), the log
/// answers instead.
fn from_port_blocks(args: &TraceArgs) -> exit::Result<Option<i32>> {
    let prepared = match gateway::prepare(&args.gateway, "trace", true) {
        Ok(prepared) => prepared,
        Err(_) if args.gateway.is_empty() => return Ok(None),
        Err(failure) => return Err(failure),
    };
    let SnatMode::Blocks(blocks) = &prepared.desired.snat else {
        return Ok(None);
    };
    let public = args.address;
    let IpAddr::V4(address) = public.ip() else {
        return Err(exit::problem(anyhow::anyhow!("port blocks are IPv4 only")));
    };
    let Some(block) = blocks.owner(address, public.port()) else {
        return Err(exit::problem(anyhow::anyhow!(
            "{public} is in no port block: the pool is {} and blocks start at port {}",
            natgw_core::join(&blocks.pool),
            blocks.config.first_port
        )));
    };
    if args.json {
        output::json(&BlockAnswer {
            public,
            source: "port blocks (configuration)",
            block,
        });
    } else {
        println!(
            "{public} belongs to {} (block {}:{}-{}, from the port-block configuration; valid at any time)",
            block.private, block.public, block.first, block.last
        );
    }
    Ok(Some(exit::OK))
}
