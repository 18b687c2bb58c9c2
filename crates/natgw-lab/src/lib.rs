//! Throwaway network topologies in network namespaces, for `natgw lab`, the end-to-end
//! tests and the benchmarks. Nothing here touches the root namespace: every interface
//! is created inside a lab namespace, and dropping a `Lab` deletes its namespaces.

pub mod bench;
pub mod ha;
mod marker;
mod netns;
mod services;
mod topology;

pub use marker::Owner;
pub use netns::{in_netns, ip, NetnsError};
pub use services::{tcp_exchange, udp_exchange, Listener};
pub use topology::{
    remove, remove_abandoned, Ipv6Mode, Lab, Removed, Spec, BEHIND_ROUTER_NODE, BEYOND6, HA_HEADS,
    HA_PUBLIC_VIP, HEAD_PUBLIC, HEAD_PUBLIC6, NPTV6_PUBLIC, PRIVATE_GATEWAY, ROUTER, SERVER,
    SERVER6, SERVER6_ALT, SERVER_ALT, UPSTREAM, UPSTREAM6,
};
