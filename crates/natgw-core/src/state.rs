//! What natgw records between commands, per network namespace, so that `down` can
//! restore exactly what `up` changed, and every later command knows which gateway
//! `up` made.
//!
//! The record doubles as the journal: `apply` writes each original value and each
//! route it is about to add *before* changing the system, and marks the apply as in
//! progress until it is verified. After a crash at any point, `down` still restores
//! every original and `up` sees the unfinished apply and completes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{RouteSpec, Settings};
use crate::desired::Desired;

/// Version of the record's layout; a record of another version is not trusted.
pub const STATE_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordedState {
    pub version: u32,
    /// The gateway as the last verified `up` resolved it.
    pub gateway: Option<Desired>,
    /// What that `up` was asked for (config and flags merged): read commands without
    /// flags check this gateway, not whatever the defaults would give now.
    pub settings: Option<Settings>,
    /// Sysctl values as they were before natgw first changed them.
    pub sysctls: BTreeMap<String, String>,
    /// Routes natgw added (or was about to add when it stopped).
    pub routes: Vec<RouteSpec>,
    /// natgw's table as installed: its digest and the fingerprint the kernel's
    /// listing had right after; a different fingerprint later means someone changed
    /// it (drift).
    pub table: Option<InstalledTable>,
    /// Set while an apply runs: a record that still has it was left by a crash.
    pub applying: Option<Applying>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstalledTable {
    /// Digest of the desired rules it was rendered from.
    pub digest: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Applying {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Default for RecordedState {
    fn default() -> Self {
        RecordedState {
            version: STATE_VERSION,
            gateway: None,
            settings: None,
            sysctls: BTreeMap::new(),
            routes: Vec::new(),
            table: None,
            applying: None,
        }
    }
}

/// The sysctls natgw may ever write: a tampered record must not make `down` write
/// anything else (the hostname, or a path outside /proc/sys).
pub fn is_managed_sysctl(name: &str) -> bool {
    use crate::detect::{CONNTRACK_MAX, IP_FORWARD, TCP_BE_LIBERAL, TCP_LOOSE};
    if [IP_FORWARD, CONNTRACK_MAX, TCP_LOOSE, TCP_BE_LIBERAL].contains(&name) {
        return true;
    }
    let per_interface = |prefix: &str, key: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(key))
            .is_some_and(|iface| crate::ifname::IfName::new(iface).is_ok())
    };
    per_interface("net.ipv4.conf.", ".forwarding")
        || per_interface("net.ipv6.conf.", ".forwarding")
        || per_interface("net.ipv6.conf.", ".accept_ra")
}

/// Values natgw writes to its sysctls are small integers, nothing else.
pub fn is_sysctl_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= 3 && value.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forwarding_sysctls_are_managed() {
        assert!(is_managed_sysctl("net.ipv4.ip_forward"));
        assert!(is_managed_sysctl("net.ipv4.conf.eth0.100.forwarding"));
        assert!(is_managed_sysctl("net.ipv6.conf.all.forwarding"));
        assert!(is_managed_sysctl("net.ipv6.conf.wan0.accept_ra"));
        for name in [
            "net.ipv6.conf.wan0.disable_ipv6",
            "net.ipv6.conf.../../x.accept_ra",
            "kernel.hostname",
            "net.ipv4.conf.../../../etc.forwarding",
            "net.ipv4.conf.eth0.rp_filter",
            "net.ipv4.conf.e*.forwarding",
            "../../etc/passwd",
        ] {
            assert!(!is_managed_sysctl(name), "{name}");
        }
        assert!(is_sysctl_value("0") && is_sysctl_value("1"));
        assert!(!is_sysctl_value("evil") && !is_sysctl_value("") && !is_sysctl_value("1\n2"));
    }

    #[test]
    fn unknown_fields_and_versions_are_not_trusted() {
        let mut json = serde_json::to_value(RecordedState::default()).unwrap();
        json["extra"] = 1.into();
        assert!(serde_json::from_value::<RecordedState>(json).is_err());
    }
}
