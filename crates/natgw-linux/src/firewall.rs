//! The whole firewall as the doctor needs it: every nftables table (iptables-nft rules
//! included) read as JSON, and iptables-legacy, which nft does not show. Read-only.

use std::process::Command;

use natgw_core::doctor::firewall::Chain;
use natgw_core::doctor::{from_nft, iptables};

use crate::nft_json::{self, NftJsonError};

/// Chains of all nftables tables and of iptables-legacy (when that tool exists).
pub fn chains() -> Result<Vec<Chain>, NftJsonError> {
    let mut chains = from_nft::chains(&nft_json::list_ruleset()?);
    // iptables-nft's xt matches and targets are opaque in JSON (no SNAT address, no
    // conntrack state): iptables-nft-save prints the same rules in full.
    if chains.iter().flat_map(|c| &c.rules).any(|r| r.opaque) {
        if let Some(text) = save_output("iptables-nft-save") {
            iptables::resolve_opaque(&mut chains, &text);
        }
    }
    if let Some(text) = save_output("iptables-legacy-save") {
        chains.extend(iptables::parse_iptables_save(&text, true));
    }
    Ok(chains)
}

/// Output of an iptables-save tool, or `None` when it is missing or fails (then its
/// rules stay as nft showed them, or unknown for legacy).
fn save_output(tool: &str) -> Option<String> {
    let out = Command::new(tool).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kernel conntrack statistics of this namespace: ctnetlink, else /proc (which many
/// distribution kernels leave out).
pub fn conntrack_stats() -> Option<natgw_core::doctor::ConntrackStats> {
    if let Ok(stats) = crate::ctnetlink::Ctnetlink::open().and_then(|mut ct| ct.stats()) {
        return Some(stats.for_doctor());
    }
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
