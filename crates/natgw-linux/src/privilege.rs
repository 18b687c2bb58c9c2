//! Whether this process may change the network: CAP_NET_ADMIN in its effective set;
//! and, for the eBPF data plane, what it needs besides.

const CAP_NET_ADMIN: u32 = 12;

/// What loading, attaching and pinning the eBPF programs takes beyond CAP_NET_ADMIN:
/// CAP_BPF (maps, programs), CAP_PERFMON (the programs' pointer arithmetic and
/// helpers), CAP_SYS_ADMIN (reading programs and maps back by id, to pin and list them).
pub const EBPF: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (21, "CAP_SYS_ADMIN")];

/// The effective capability set, from /proc/self/status.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

pub fn has_net_admin() -> bool {
    effective().is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The capabilities of `wanted` missing from the effective set `caps`.
pub fn missing(caps: u64, wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    wanted
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

/// What this process lacks for the eBPF data plane.
pub fn missing_for_ebpf() -> Vec<&'static str> {
    missing(effective().unwrap_or(0), &EBPF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability() {
        // A bounding set of CAP_NET_ADMIN and CAP_NET_RAW (natgw.service's): 0x3000.
        assert_eq!(
            missing(0x3000, &EBPF),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]
        );
        let all = (1u64 << 41) - 1;
        assert!(missing(all, &EBPF).is_empty());
        assert_eq!(missing(all & !(1 << 21), &EBPF), ["CAP_SYS_ADMIN"]);
    }
}
