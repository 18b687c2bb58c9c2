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
    let conntrack =
        tool().ok_or("the conntrack tool is not installed (apt-get install conntrack)")?;
    let out = std::process::Command::new(conntrack)
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

/// A flow as `conntrack -L` prints it, the fields that name it.
#[derive(Debug, PartialEq)]
struct Listed {
    proto: String,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    /// The reply direction's destination: the original source unless translated.
    reply_dst: std::net::Ipv4Addr,
    /// `--sport`/`--dport`, or `--icmp-type`/`--icmp-code`/`--icmp-id` (original direction).
    keys: Vec<(String, String)>,
}

/// One line of `conntrack -L -f ipv4`; `None` for what it cannot name.
fn listed(line: &str) -> Option<Listed> {
    let mut words = line.split_whitespace();
    let proto = words.next()?.to_string();
    let (mut src, mut dst, mut reply_dst) = (None, None, None);
    let mut keys = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "src" if src.is_none() => src = value.parse().ok(),
            "dst" if dst.is_none() => dst = value.parse().ok(),
            "dst" if reply_dst.is_none() => reply_dst = value.parse().ok(),
            // The original direction's ports or ICMP fields come before the reply's.
            "sport" | "dport" | "type" | "code" | "id" if reply_dst.is_none() => {
                let flag = match key {
                    "type" | "code" | "id" => format!("--icmp-{key}"),
                    _ => format!("--{key}"),
                };
                keys.push((flag, value.to_string()));
            }
            _ => {}
        }
    }
    Some(Listed {
        proto,
        src: src?,
        dst: dst?,
        reply_dst: reply_dst?,
        keys,
    })
}

/// The `conntrack` tool, if installed (`$NATGW_CONNTRACK` when set). A switch between
/// data planes needs it to hand running flows over.
pub fn tool() -> Option<std::path::PathBuf> {
    crate::tools::find("conntrack", "NATGW_CONNTRACK")
}

/// After a switch from the eBPF plane to the nftables plane: deletes the flows that
/// conntrack tracked from a private source without translating them (the programs
/// translated after netfilter), which the new table's `ct state established` rule would
/// otherwise let out untranslated for as long as they live. Flows to private
/// destinations or to the gateway's own `public` addresses are not translated by either
/// plane and are left alone. Returns how many were deleted.
pub fn forget_untranslated(
    private: &[ipnet::Ipv4Net],
    public: &[std::net::Ipv4Addr],
) -> Result<usize, String> {
    let conntrack =
        tool().ok_or("the conntrack tool is not installed (apt-get install conntrack)")?;
    let mut deleted = 0;
    for prefix in private {
        let out = std::process::Command::new(&conntrack)
            .args(["-L", "-f", "ipv4", "-s", &prefix.to_string()])
            .output()
            .map_err(|e| format!("cannot run conntrack (apt-get install conntrack): {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        for flow in text.lines().filter_map(listed) {
            let untranslated = flow.reply_dst == flow.src;
            let outward =
                !private.iter().any(|p| p.contains(&flow.dst)) && !public.contains(&flow.dst);
            if !(untranslated && outward) {
                continue;
            }
            let mut args = vec![
                "-D".to_string(),
                "-f".into(),
                "ipv4".into(),
                "-p".into(),
                flow.proto.clone(),
                "-s".into(),
                flow.src.to_string(),
                "-d".into(),
                flow.dst.to_string(),
            ];
            for (flag, value) in &flow.keys {
                args.extend([flag.clone(), value.clone()]);
            }
            let status = std::process::Command::new(&conntrack)
                .args(&args)
                .output()
                .map_err(|e| format!("cannot run conntrack: {e}"))?;
            // Gone meanwhile is fine (it expired or was deleted by someone else).
            if status.status.success() {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_flow_names_its_original_direction_and_its_reply_destination() {
        let udp = "udp      17 28 src=10.0.0.2 dst=198.51.100.10 sport=5600 dport=7100 [UNREPLIED] src=198.51.100.10 dst=10.0.0.2 sport=7100 dport=5600 mark=0 use=1";
        let f = listed(udp).unwrap();
        assert_eq!(f.proto, "udp");
        assert_eq!(f.src.to_string(), "10.0.0.2");
        assert_eq!(f.dst.to_string(), "198.51.100.10");
        assert_eq!(f.reply_dst, f.src, "not translated");
        assert_eq!(
            f.keys,
            [
                ("--sport".into(), "5600".into()),
                ("--dport".into(), "7100".into())
            ]
        );
        let snat = "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=198.51.100.10 sport=40000 dport=7000 src=198.51.100.10 dst=203.0.113.1 sport=7000 dport=40000 [ASSURED] mark=0 use=1";
        assert_ne!(listed(snat).unwrap().reply_dst.to_string(), "10.0.0.2");
        let icmp = "icmp     1 29 src=10.0.0.2 dst=198.51.100.10 type=8 code=0 id=77 src=198.51.100.10 dst=10.0.0.2 type=0 code=0 id=77 mark=0 use=1";
        assert_eq!(
            listed(icmp).unwrap().keys,
            [
                ("--icmp-type".into(), "8".into()),
                ("--icmp-code".into(), "0".into()),
                ("--icmp-id".into(), "77".into())
            ]
        );
        assert_eq!(
            listed("conntrack v1.4.7 (conntrack-tools): 0 flow entries"),
            None
        );
    }
}
