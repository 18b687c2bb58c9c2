//! The whole firewall as the doctor needs it: every nftables table (iptables-nft rules
//! included) and iptables-legacy, which nft does not show. Read-only.

use std::process::Command;

use natgw_core::doctor::firewall::{parse_iptables_save, parse_nft, Chain};

/// Chains of all nftables tables and of iptables-legacy (when that tool exists).
pub fn chains() -> Result<Vec<Chain>, crate::nft::NftError> {
    let mut chains = parse_nft(&crate::nft::list_ruleset()?);
    if let Ok(out) = Command::new("iptables-legacy-save").output() {
        if out.status.success() {
            chains.extend(parse_iptables_save(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    Ok(chains)
}

/// Kernel conntrack statistics of this namespace.
pub fn conntrack_stats() -> Option<natgw_core::doctor::ConntrackStats> {
    natgw_core::doctor::conntrack_stats(
        &std::fs::read_to_string("/proc/net/stat/nf_conntrack").ok()?,
    )
}

/// Nameservers of /etc/resolv.conf (empty when missing).
pub fn nameservers() -> Vec<std::net::IpAddr> {
    natgw_core::doctor::nameservers(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    )
}
