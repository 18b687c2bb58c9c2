//! natgw's proof tools: a STUN codec (RFC 5389, with the RFC 5780 behaviour-discovery
//! attributes), a STUN server for two addresses and two ports, a client that classifies
//! a NAT's mapping and filtering behaviour, and plain TCP/UDP/ICMP reachability probes.

pub mod behaviour;
pub mod client;
pub mod reach;
pub mod server;
pub mod wire;
