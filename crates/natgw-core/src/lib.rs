//! Pure model of natgw: no syscalls, no processes, no clock.
//!
//! `config` reads what the admin asked for, `observed` is the system as read by the
//! adapters, `detect` turns both into the `Desired` gateway, `render` turns that into the
//! nftables ruleset and `plan` diffs desired against observed into a list of changes.

pub mod config;
pub mod config_template;
pub mod dataplane;
pub mod desired;
pub mod detect;
pub mod doctor;
pub mod ha;
pub mod ifname;
pub mod ipv6;
pub mod mapping;
pub mod node;
pub mod observed;
pub mod persist;
pub mod plan;
pub mod pool;
pub mod prefixes;
pub mod remember;
pub mod render;
pub mod state;
pub mod trace;
pub mod validate;

pub use config::{Config, ConfigError, RouteSpec, Settings};
pub use desired::{Desired, Interface, Ipv6Gateway, Ipv6Translation, SnatMode, UplinkDefault};
pub use detect::{desired, DetectError};
pub use ifname::IfName;
pub use observed::{Address, Link, Observed, Route};
pub use plan::{plan, Change, Plan};
pub use state::RecordedState;

/// `a, b, c` for messages.
pub fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod fixtures;

/// Route protocol id that marks the routes the gateway installed
/// (`ip route show proto 88`). Each owner has its own mark, so neither deletes the
/// other's routes.
pub const ROUTE_PROTOCOL: u8 = 88;
/// Route protocol id of the default route `natgw node up` installs on a private node.
pub const NODE_ROUTE_PROTOCOL: u8 = 89;
/// The one nftables table natgw owns: `inet natgw`.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "natgw";
