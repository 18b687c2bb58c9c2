//! natgw's own data plane: the translator specified by `natgw-nat`, as eBPF programs
//! written in C (bpf/nat.bpf.c), compiled by build.rs with clang and loaded with aya:
//! `natgw_egress` (public interface, after routing), `natgw_ingress` (public interface,
//! before routing) and `natgw_private` (ingress of each private interface: hairpins).
//!
//! What the programs do, each checked against the model by the differential tests:
//! UDP, TCP and ICMP echo with endpoint-independent mapping, the three filtering modes,
//! paired pooling, port preservation then a bounded search of the whole range
//! (`bpf_loop`), TCP states and all timers (exactly, on every lookup; one sweeper
//! `bpf_timer` frees expired state every second), per-CPU counters, ICMP error
//! translation both ways
//! (RFC 5508, the embedded packet rewritten), fragments (later ones take the first
//! one's translation, kept in an LRU map), headers outside the linear buffer pulled in
//! (`bpf_skb_pull_data`), hairpinning (RFC 4787 REQ-9) and ICMP 3/13 when no port is
//! left.
//!
//! Wiring (see [`Plane`]):
//! - [`Plane::load`] / [`Plane::load_masked`]: load with the config; admitted inbound
//!   packets get `skb->mark = mark` (whole), or only the bits of `mask` set to `mark`'s
//!   and the others kept (for a filter that matches `meta mark & mask == mark`).
//! - [`Plane::attach`]`(public)`: both programs of the public interface.
//! - [`pin::attach_pinned`] attaches and pins everything for a namespace;
//!   [`Plane::load_reusing`] and [`pin::replace_pinned`] put new programs (same build,
//!   another configuration of the same state layout) in the place of running ones on
//!   their pinned maps, so the bindings live on.
//! - [`Plane::attach_private`]`(ifname)`: hairpinning, once per private interface. A
//!   private host's packet for a pool address whose port has a binding is translated
//!   both ways and redirected (`bpf_fib_lookup`, then `bpf_redirect` or
//!   `bpf_redirect_neigh`) to the bound host with the sender's public endpoint as
//!   source; it skips netfilter (the kernel would call a pool address as source a
//!   martian) but carries natgw's mark. Everything else for the gateway's addresses
//!   (its own ports, other protocols, pings) goes to the host untouched.
//! - No public port left for a new binding: the packet is turned into the model's ICMP
//!   destination unreachable, code 13 (from `icmp_source`, quoting the header and 8
//!   bytes), and redirected to the sender the same way (counted in `drop_no_port`;
//!   `drop_no_route` counts turned-around packets with no route back). Each sender
//!   gets at most the kernel's share of ICMP errors to one peer (a token bucket: six
//!   at once, then one a second; `natgw_nat::IcmpLimit`); beyond it the packet is
//!   dropped quietly and counted in `icmp_suppressed`.
//!
//! What a new flow costs (program time, BPF_PROG_TEST_RUN; examples/cost.rs): the
//! programs keep only the state that can change a verdict (sessions for TCP and
//! port-dependent filtering, address entries for address-dependent filtering), so a new
//! UDP binding with endpoint-independent filtering is one hash insert, one
//! compare-and-swap and no timer. Public ports live in an array (`natgw_ports`, owners
//! taken with compare-and-swap) rather than a hash map, and the port search skips a
//! live port with one read; a range whose every port is live refuses at once
//! (`natgw_ranges`) instead of walking it.
//!
//! Binding events ([`events`]): one record per binding made and ended, in a ring
//! buffer pinned with the maps, for the mapping log (`natgw run --log-mappings`);
//! only while a reader has turned them on, and a full ring loses the record (counted
//! in `events_lost`), never the packet.
//!
//! [`Plane::state_sizes`] counts the entries of the translation maps ("maps filling"),
//! [`Plane::set_sweep_interval`] changes the sweeper's period (tests).
//!
//! Known limit: the ICMP 3/13 is written over the offending packet. If that packet
//! was CHECKSUM_PARTIAL (sent by a local stack over veth/virtio with checksum offload)
//! and leaves through a private device WITHOUT checksum offload, the kernel would
//! complete a checksum at the old transport offset; veth and virtio deliver it as is.

pub mod events;
pub mod maps;
pub mod pin;
pub mod plane;

pub use events::{BindingEvent, EventKind};
pub use maps::{BpfConfig, LayoutError, COUNTERS, SWEEP_INTERVAL};
pub use plane::{Plane, PlaneError, RunResult, Side, StateSizes};

/// The kernel's clock the programs read (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), for
/// comparing expiries and turning event times into wall-clock times.
pub fn monotonic_now() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The compiled programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat.bpf.o"));
