//! Connection tracking table usage: from ctnetlink, or from the sysctls under /proc
//! when netlink cannot answer (per network namespace for the count either way).

use natgw_core::observed::Conntrack;

/// Entries in use and the maximum; `None` when conntrack is not loaded.
pub fn usage() -> Option<Conntrack> {
    crate::ctnetlink::Ctnetlink::open()
        .and_then(|mut ct| ct.usage())
        .ok()
        .or_else(usage_from_proc)
}

fn usage_from_proc() -> Option<Conntrack> {
    let read = |name: &str| crate::sysctl::read(name).ok()?.parse().ok();
    Some(Conntrack {
        count: read("net.netfilter.nf_conntrack_count")?,
        max: read("net.netfilter.nf_conntrack_max")?,
    })
}

/// Deletes the connections translated to `address` (`conntrack -D --reply-dst ADDR`),
/// so that after the public address changed no flow keeps the old source. Returns the
/// tool's report; none deleted is success.
pub fn flush_translated_to(address: std::net::IpAddr) -> Result<String, String> {
    let family = if address.is_ipv4() { "ipv4" } else { "ipv6" };
    let out = std::process::Command::new("conntrack")
        .args(["-D", "-f", family, "--reply-dst", &address.to_string()])
        .output()
        .map_err(|e| format!("cannot run conntrack (apt-get install conntrack): {e}"))?;
    let report = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() || report.contains("0 flow entries have been deleted") {
        Ok(report)
    } else {
        Err(format!(
            "conntrack -D --reply-dst {address} failed: {report}"
        ))
    }
}
