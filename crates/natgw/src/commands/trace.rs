//! `natgw trace PUBLIC_IP:PORT`: which private host used a public address and port.
//! With deterministic port blocks (RFC 7422) the configuration itself answers, for any
//! time: the block that holds the port belongs to exactly one host.

use std::net::{IpAddr, SocketAddr};

use anyhow::anyhow;
use natgw_core::pool::PortBlock;
use natgw_core::SnatMode;
use serde::Serialize;

use super::gateway;
use crate::cli::GatewayArgs;
use crate::exit::{self, problem};
use crate::output;

#[derive(Serialize)]
struct Answer {
    public: SocketAddr,
    /// How it was answered.
    source: &'static str,
    block: PortBlock,
}

pub fn run(args: &GatewayArgs, public: SocketAddr, json: bool) -> exit::Result<i32> {
    let prepared = gateway::prepare(args, "trace", true)?;
    let SnatMode::Blocks(blocks) = &prepared.desired.snat else {
        return Err(problem(anyhow!(
            "this gateway translates with {}, not deterministic port blocks: the configuration alone cannot say who used {public} (configure [port_blocks], or keep a mapping log)",
            prepared.desired.snat
        )));
    };
    let IpAddr::V4(address) = public.ip() else {
        return Err(problem(anyhow!("port blocks are IPv4 only")));
    };
    let Some(block) = blocks.owner(address, public.port()) else {
        return Err(problem(anyhow!(
            "{public} is in no port block: the pool is {} and blocks start at port {}",
            natgw_core::join(&blocks.pool),
            blocks.config.first_port
        )));
    };
    if json {
        output::json(&Answer {
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
    Ok(exit::OK)
}
