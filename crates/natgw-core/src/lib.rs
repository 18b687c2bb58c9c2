//! Pure model of natgw: no syscalls, no processes, no clock.
//!
//! `config` reads what the admin asked for, `observed` is the system as read by the
//! adapters, `detect` turns both into the `Desired` gateway, `render` turns that into the
//! nftables ruleset and `plan` diffs desired against observed into a list of changes.

pub mod config;
pub mod desired;
pub mod detect;
pub mod doctor;
pub mod node;
pub mod observed;
pub mod persist;
pub mod plan;
pub mod prefixes;
pub mod render;
pub mod state;

pub use config::{Config, ConfigError, RouteSpec, Settings};
pub use desired::{Desired, Interface, SnatMode};
pub use detect::{desired, DetectError};
pub use observed::{Address, Link, Observed, Route};
pub use plan::{plan, Change, Plan};
pub use state::RecordedState;

/// `a, b, c` for messages.
pub(crate) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod fixtures;

/// Route protocol id that marks routes natgw installed (`ip route show proto 88`).
pub const ROUTE_PROTOCOL: u8 = 88;
/// The one nftables table natgw owns.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "natgw";
