//! natgw's systemd unit. The text is one file in the repository,
//! `packaging/natgw.service`: compiled in here for `natgw install`, and shipped as it
//! is by the Debian package, so the two cannot drift apart.

pub const NAME: &str = "natgw.service";
pub const TEXT: &str = include_str!("../../../packaging/natgw.service");
/// Where `natgw install` writes it, below the root (the package ships it in
/// /usr/lib/systemd/system; a unit in /etc takes precedence over that one).
pub const INSTALL_PATH: &str = "etc/systemd/system/natgw.service";
/// The drop-in that lets the unit run the eBPF plane (`packaging/natgw-ebpf.conf`),
/// written by `natgw install` only when the config selects it.
pub const EBPF_DROPIN: &str = include_str!("../../../packaging/natgw-ebpf.conf");
pub const EBPF_DROPIN_PATH: &str = "etc/systemd/system/natgw.service.d/ebpf.conf";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::Cli;

    /// The values of `key` in `[section]`, in order (a directive may repeat).
    pub fn values<'a>(text: &'a str, section: &str, key: &str) -> Vec<&'a str> {
        let mut current = "";
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name;
            } else if let Some((k, v)) = line.split_once('=') {
                if current == section && k.trim() == key {
                    found.push(v.trim());
                }
            }
        }
        found
    }

    #[track_caller]
    fn one(section: &str, key: &str) -> &'static str {
        match values(TEXT, section, key).as_slice() {
            [value] => value,
            other => panic!("[{section}] {key}: expected one value, found {other:?}"),
        }
    }

    #[test]
    fn runs_the_daemon_on_the_default_config_with_readiness_and_watchdog() {
        let words: Vec<&str> = one("Service", "ExecStart").split_whitespace().collect();
        assert_eq!(
            words,
            [
                "/usr/sbin/natgw",
                "run",
                "--config",
                crate::commands::DEFAULT_CONFIG
            ]
        );
        // Once `natgw run` exists, the unit's command line must be one it accepts.
        if Cli::command().find_subcommand("run").is_some() {
            let args = std::iter::once("natgw").chain(words[1..].iter().copied());
            Cli::try_parse_from(args).expect("ExecStart parses with natgw's CLI");
        }
        assert_eq!(one("Service", "Type"), "notify");
        assert_eq!(one("Service", "WatchdogSec"), "30");
        assert_eq!(one("Service", "Restart"), "on-failure");
        assert_eq!(one("Service", "ExecReload"), "/bin/kill -HUP $MAINPID");
        assert_eq!(one("Install", "WantedBy"), "multi-user.target");
    }

    #[test]
    fn starts_after_the_network_and_after_nftables_loads_its_ruleset() {
        // After nftables.service: its `flush ruleset` must not wipe natgw's table.
        assert_eq!(
            one("Unit", "After"),
            "network-online.target nftables.service"
        );
        assert_eq!(one("Unit", "Wants"), "network-online.target");
    }

    #[test]
    fn keeps_its_record_across_restarts_root_only() {
        assert_eq!(one("Service", "RuntimeDirectory"), "natgw");
        assert_eq!(one("Service", "RuntimeDirectoryPreserve"), "yes");
        assert_eq!(one("Service", "RuntimeDirectoryMode"), "0700");
        let writable: Vec<&str> = one("Service", "ReadWritePaths").split(' ').collect();
        assert_eq!(writable, ["/run/natgw", "/proc/sys/net"]);
    }

    #[test]
    fn is_hardened_to_the_capabilities_and_families_a_gateway_needs() {
        let expected = BTreeMap::from([
            ("CapabilityBoundingSet", "CAP_NET_ADMIN CAP_NET_RAW"),
            ("AmbientCapabilities", ""),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            (
                "RestrictAddressFamilies",
                "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            ),
        ]);
        for (key, value) in expected {
            assert_eq!(one("Service", key), value, "{key}");
        }
    }

    #[test]
    fn the_ebpf_drop_in_adds_what_the_programs_need_and_mounts_the_bpffs_on_the_host() {
        let caps = values(EBPF_DROPIN, "Service", "CapabilityBoundingSet");
        assert_eq!(caps, ["CAP_BPF CAP_PERFMON CAP_SYS_ADMIN"]);
        // What `up` checks for before it loads anything (natgw-linux's privilege check).
        for (_, cap) in natgw_linux::privilege::EBPF {
            assert!(caps[0].contains(cap), "{cap}");
        }
        assert_eq!(values(EBPF_DROPIN, "Service", "SystemCallFilter"), ["bpf"]);
        let [pre] = values(EBPF_DROPIN, "Service", "ExecStartPre")[..] else {
            panic!("one ExecStartPre");
        };
        assert!(
            pre.starts_with("+/bin/sh -c "),
            "outside the sandbox: {pre}"
        );
        assert!(
            pre.contains(natgw_linux::state_store::BPFFS),
            "where natgw looks: {pre}"
        );
        // Only [Service], and nothing that would widen the unit beyond the programs.
        for line in EBPF_DROPIN
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let key = line.split('=').next().unwrap();
            assert!(
                [
                    "[Service]",
                    "CapabilityBoundingSet",
                    "SystemCallFilter",
                    "ExecStartPre"
                ]
                .contains(&key),
                "{line}"
            );
        }
    }

    #[test]
    fn no_directive_is_given_twice() {
        let mut seen = BTreeMap::new();
        let mut section = "";
        for line in TEXT.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                *seen.entry((section, key)).or_insert(0) += 1;
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{twice:?}");
    }
}
