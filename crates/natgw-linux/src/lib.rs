//! Linux adapters: thin modules, one per kernel object, converting kernel messages into
//! natgw-core's types at the boundary. `observe` reads everything once; `apply` makes
//! the changes of a plan, atomically from the caller's point of view.

pub mod apply;
pub mod arp;
pub mod conntrack;
pub mod ctnetlink;
pub mod dataplane;
pub mod ebpf;
pub mod events;
pub mod firewall;
pub mod ha;
pub mod netlink;
pub mod nft;
pub mod nft_json;
pub mod observe;
pub mod privilege;
pub mod state_store;
pub mod sysctl;
pub mod tools;

pub use apply::{apply, teardown, ApplyError, Target, Teardown};
pub use dataplane::Dataplane;
pub use observe::{observe, ObserveError};
