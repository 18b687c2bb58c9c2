//! natgw's own translator, as a pure reference model: the specification that the eBPF
//! data plane is tested against.
//!
//! - Endpoint-independent mapping for UDP, TCP and ICMP queries (RFC 4787 REQ-1,
//!   RFC 5382 REQ-1, RFC 5508 REQ-2), paired address pooling (REQ-2), port
//!   preservation and then a search of the whole range, never two private endpoints on
//!   one public endpoint (REQ-3).
//! - Filtering: endpoint-independent, address-dependent or address-and-port-dependent.
//! - Timers: UDP at least 2 min refreshed by outbound packets, TCP per RFC 6146 /
//!   RFC 7857 (established 2 h 4 min, transitory 4 min, RST), ICMP queries 60 s.
//! - ICMP errors translated with the embedded packet rewritten (RFC 5508); errors that
//!   belong to no binding are never translated and never refresh anything.
//! - Hairpinning with the sender's public endpoint as source (REQ-9).
//! - Fragments: later ones reuse the first one's translation; see [`Nat`] for order.
//!
//! No I/O and no clock: each call gets the packet's bytes and the time.

pub mod config;
pub mod nat;
pub mod packet;
pub mod table;
pub mod wire;

pub use config::{Config, ConfigError, Filtering, Timeouts};
pub use nat::{BindingView, DropReason, IcmpLimit, Nat, Verdict};
pub use table::{Direction, Endpoint, Proto, Session, TcpState};
