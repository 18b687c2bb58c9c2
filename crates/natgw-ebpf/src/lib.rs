//! natgw's own data plane: the translator specified by `natgw-nat`, as two eBPF
//! programs on the public interface (`natgw_egress` after routing, `natgw_ingress`
//! before it), written in C (bpf/nat.bpf.c), compiled by build.rs with clang and loaded
//! with aya.
//!
//! What the programs do, each checked against the model by the differential tests:
//! UDP, TCP and ICMP echo with endpoint-independent mapping, the three filtering modes,
//! paired pooling, port preservation then a bounded search of the whole range
//! (`bpf_loop`), TCP states and all timers (lazily on lookup, and a `bpf_timer` per
//! entry that frees idle state), per-CPU counters, ICMP error translation both ways
//! (RFC 5508, the embedded packet rewritten), fragments (later ones take the first
//! one's translation, kept in an LRU map), and headers outside the linear buffer
//! pulled in (`bpf_skb_pull_data`).
//!
//! Not yet (the model has them, these programs do not): hairpinning (a private host's packet to a
//! public address of the gateway is routed locally and never reaches these programs),
//! and the ICMP 3/13 the model sends when no port is left (the program drops and
//! counts `drop_no_port`).

pub mod maps;
pub mod pin;
pub mod plane;

pub use maps::{BpfConfig, LayoutError, COUNTERS};
pub use plane::{Plane, PlaneError, RunResult, Side};

/// The compiled programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat.bpf.o"));
