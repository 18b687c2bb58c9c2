//! `natgw doctor`: every reason a headnode fails to give outbound connectivity, as pure
//! functions of the observed system (plus a few probe results the adapters gather).
//! Each check has a stable id, a status, what it found and the fix.

pub mod checks;
pub mod ebpf;
pub mod firewall;
pub mod fix;
pub mod from_nft;
pub mod ha;
pub mod iptables;
pub mod ipv6;
pub mod tc_programs;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::observed::Observed;
use firewall::Chain;
pub use fix::Fix;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// The check could not run; the detail says why.
    Skip,
    Warn,
    Fail,
}

/// What `doctor --fix` may do about a finding by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// `ip link set IFACE up`
    LinkUp(String),
    /// What `natgw up` does: forwarding, routes, natgw's table.
    ApplyGateway,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub status: Status,
    pub detail: String,
    /// What an admin should do, as lines to paste into a shell: commands, and prose as
    /// `#` comments (see [`Fix`]).
    pub fix: Option<String>,
    #[serde(skip)]
    pub repair: Option<Repair>,
}

impl Finding {
    pub fn pass(id: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            id,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
            repair: None,
        }
    }

    pub fn warn(id: &'static str, detail: impl Into<String>, fix: Fix) -> Finding {
        Finding {
            id,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.to_string()),
            repair: None,
        }
    }

    pub fn fail(id: &'static str, detail: impl Into<String>, fix: Fix) -> Finding {
        Finding {
            id,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.to_string()),
            repair: None,
        }
    }

    pub fn skip(id: &'static str, reason: impl Into<String>) -> Finding {
        Finding {
            id,
            status: Status::Skip,
            detail: reason.into(),
            fix: None,
            repair: None,
        }
    }

    pub fn repaired_by(mut self, repair: Repair) -> Finding {
        self.repair = Some(repair);
        self
    }
}

/// Kernel conntrack statistics (sums over CPUs of /proc/net/stat/nf_conntrack).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStats {
    pub drop: u64,
    pub early_drop: u64,
    pub insert_failed: u64,
}

impl ConntrackStats {
    /// What happened since `earlier`; `None` when a counter went backwards (the
    /// namespace or the machine started anew).
    pub fn since(&self, earlier: &ConntrackStats) -> Option<ConntrackStats> {
        Some(ConntrackStats {
            drop: self.drop.checked_sub(earlier.drop)?,
            early_drop: self.early_drop.checked_sub(earlier.early_drop)?,
            insert_failed: self.insert_failed.checked_sub(earlier.insert_failed)?,
        })
    }

    pub fn lost(&self) -> u64 {
        self.drop + self.early_drop + self.insert_failed
    }
}

/// The kernel's conntrack counters as the previous doctor run saw them, so the next
/// run reports what is new instead of totals since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRecord {
    pub stats: ConntrackStats,
    /// Seconds since the Unix epoch.
    pub taken_at: u64,
}

/// Everything the checks look at.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub observed: &'a Observed,
    /// Chains of every nftables table (iptables-nft included) and of iptables-legacy,
    /// or why they could not be read.
    pub firewall: Result<Vec<Chain>, String>,
    /// Whether the kernel accepted natgw's NAT ruleset in a check-only transaction;
    /// `None` when it could not be tried (no nft tool, roles unknown).
    pub nat_check: Option<Result<(), String>>,
    /// Nameservers from /etc/resolv.conf.
    pub nameservers: Vec<IpAddr>,
    pub conntrack_stats: Option<ConntrackStats>,
    /// The counters the previous doctor run recorded in this namespace.
    pub last_run: Option<CounterRecord>,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// natgw's live translations, when they could be listed.
    pub translations: Option<crate::mapping::Summary>,
}

/// Runs every check; the order is the order of the classic recipe.
pub fn diagnose(inputs: &Inputs) -> Vec<Finding> {
    checks::all(inputs)
}

/// Parses the `nameserver` lines of resolv.conf.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.split_whitespace()
                .next()?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Parses /proc/net/stat/nf_conntrack: a header row of names, then one hex row per CPU.
pub fn conntrack_stats(text: &str) -> Option<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (drop, early, failed) = (
        column("drop")?,
        column("early_drop")?,
        column("insert_failed")?,
    );
    let mut stats = ConntrackStats::default();
    for row in lines {
        let values: Vec<u64> = row
            .split_whitespace()
            .map(|v| u64::from_str_radix(v, 16).unwrap_or(0))
            .collect();
        let at = |i: usize| values.get(i).copied().unwrap_or(0);
        stats.drop += at(drop);
        stats.early_drop += at(early);
        stats.insert_failed += at(failed);
    }
    Some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch lab\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn conntrack_stats_sum_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error\n\
                    00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000010 00000002 00000000 00000000\n\
                    00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000001 00000000\n";
        assert_eq!(
            conntrack_stats(text),
            Some(ConntrackStats {
                drop: 2,
                early_drop: 1,
                insert_failed: 17
            })
        );
    }
}
