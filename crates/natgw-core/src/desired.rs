//! The gateway natgw should make: the resolved roles, prefixes and translation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::RouteSpec;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    pub public: Interface,
    pub private: Vec<Interface>,
    /// Sources that get translated and may leave: connected networks of the private
    /// interfaces, configured extra prefixes and networks behind routers. Normalised:
    /// sorted, no prefix inside another.
    pub private_prefixes: Vec<IpNet>,
    pub snat: SnatMode,
    pub routes: Vec<RouteSpec>,
    /// Sysctls that must hold, by dotted name.
    pub sysctls: BTreeMap<String, String>,
    /// Things worth telling the admin that do not stop `up` (no carrier, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    /// Its addresses with prefix length, for display.
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "address")]
pub enum SnatMode {
    /// Translate to this fixed address (`snat ip to ADDR`).
    To(IpAddr),
    /// Translate to whatever address the public interface has (`masquerade`).
    Masquerade,
}

impl std::fmt::Display for SnatMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnatMode::To(addr) => write!(f, "snat to {addr}"),
            SnatMode::Masquerade => write!(f, "masquerade"),
        }
    }
}
