//! Checks of the eBPF data plane: the kernel has what the programs need, they are
//! attached to the public interface, their links and maps are pinned, and the
//! bindings are not running out. Pure: the binary gathers `EbpfObserved`.

use serde::Serialize;

use super::{Finding, Fix, Repair};

/// What the binary found about the eBPF plane of this namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EbpfObserved {
    /// `uname -r`, and the (major, minor) parsed from it.
    pub kernel: String,
    pub version: Option<(u32, u32)>,
    /// `/sys/kernel/btf/vmlinux` exists (the kernel has BTF).
    pub btf: bool,
    /// Capabilities the programs need that natgw runs without (`CAP_BPF`, ...).
    pub missing_capabilities: Vec<String>,
    /// A bpffs is mounted where natgw pins (`/run/natgw/bpffs`).
    pub bpffs: bool,
    pub bpffs_path: String,
    pub public: String,
    /// natgw's programs attached (TCX) to the public interface, egress then ingress.
    pub attached: Vec<String>,
    /// Whether `natgw up` brought the gateway up (else the programs are not expected).
    pub up: bool,
    /// Objects pinned in this namespace's directory, and the ones natgw pins.
    pub pinned: Vec<String>,
    pub expected: Vec<String>,
    /// Public endpoints in use for the busiest protocol, and the most one protocol can
    /// have (ports × pool addresses).
    pub busiest: u64,
    pub capacity: u64,
}

/// TCX (Linux 6.6) carries the programs; `bpf_timer` (5.15) frees idle state.
const TCX: (u32, u32) = (6, 6);
const WARN_PERCENT: u64 = 80;

fn to_nftables() -> Fix {
    Fix::say(
        "or go back to the kernel's NAT: set dataplane = \"nftables\" in /etc/natgw/natgw.toml",
    )
    .then_run(&["natgw", "up"])
}

pub fn findings(o: &EbpfObserved) -> Vec<Finding> {
    let mut out = Vec::new();
    let new_enough = o.version.is_some_and(|v| v >= TCX);
    out.push(match (new_enough, o.btf) {
        (true, true) => Finding::pass(
            "ebpf_kernel",
            format!("kernel {} has TCX, bpf_timer and BTF", o.kernel),
        ),
        (false, _) => Finding::fail(
            "ebpf_kernel",
            format!(
                "kernel {} is older than {}.{}: no TCX to attach the eBPF programs",
                o.kernel, TCX.0, TCX.1
            ),
            Fix::say(format!(
                "boot a kernel of {}.{} or later (Debian 12: linux-image-amd64 from bookworm-backports)",
                TCX.0, TCX.1
            ))
            .then(to_nftables()),
        ),
        (true, false) => Finding::fail(
            "ebpf_kernel",
            format!(
                "kernel {} has no BTF (/sys/kernel/btf/vmlinux): the programs' timers cannot load",
                o.kernel
            ),
            Fix::say("boot a kernel built with CONFIG_DEBUG_INFO_BTF=y").then(to_nftables()),
        ),
    });
    out.push(if o.missing_capabilities.is_empty() {
        Finding::pass(
            "ebpf_privileges",
            "natgw runs with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (to load, attach and pin the programs)",
        )
    } else {
        let missing = o.missing_capabilities.join(", ");
        Finding::fail(
            "ebpf_privileges",
            format!("natgw runs without {missing}: the kernel refuses to load, attach or pin the eBPF programs"),
            Fix::say(format!(
                "run natgw as root with {missing}; natgw.service bounds it to CAP_NET_ADMIN CAP_NET_RAW unless its drop-in for this plane is there: `natgw install` writes /etc/systemd/system/natgw.service.d/ebpf.conf when the config says dataplane = \"ebpf\" (CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN, SystemCallFilter=bpf, the bpffs mounted on the host), then `systemctl daemon-reload`"
            ))
            .then(to_nftables()),
        )
    });
    if !o.up {
        return out;
    }
    let mut attached = if o.attached == ["natgw_egress", "natgw_ingress"] {
        Finding::pass(
            "ebpf_attached",
            format!(
                "natgw_egress and natgw_ingress are attached to {}",
                o.public
            ),
        )
    } else {
        Finding::fail(
            "ebpf_attached",
            format!(
                "natgw's programs on {}: {}; without both nothing is translated",
                o.public,
                if o.attached.is_empty() {
                    "none".to_string()
                } else {
                    o.attached.join(", ")
                }
            ),
            Fix::run(&["natgw", "up"]),
        )
    };
    attached.repair = (attached.status != super::Status::Pass).then_some(Repair::ApplyGateway);
    out.push(attached);
    let missing: Vec<&str> = o
        .expected
        .iter()
        .filter(|e| !o.pinned.contains(e))
        .map(String::as_str)
        .collect();
    out.push(if !o.bpffs {
        Finding::fail(
            "ebpf_pinned",
            format!(
                "no bpffs at {}: the programs die with the command that loaded them",
                o.bpffs_path
            ),
            Fix::shell(format!(
                "mkdir -p {p} && mount -t bpf -o mode=0700 bpf {p}",
                p = o.bpffs_path
            ))
            .then_say("in the host's mount namespace (not inside `ip netns exec`), then")
            .then_run(&["natgw", "up"]),
        )
    } else if missing.is_empty() {
        Finding::pass(
            "ebpf_pinned",
            format!("links and maps pinned ({} objects)", o.pinned.len()),
        )
    } else {
        let mut f = Finding::fail(
            "ebpf_pinned",
            format!("pinned objects missing: {}", missing.join(", ")),
            Fix::run(&["natgw", "up"]),
        );
        f.repair = Some(Repair::ApplyGateway);
        f
    });
    let percent = o.busiest * 100 / o.capacity.max(1);
    let detail = format!(
        "{} of {} public endpoints in use for the busiest protocol ({percent} %)",
        o.busiest, o.capacity
    );
    out.push(if percent >= WARN_PERCENT {
        Finding::warn(
            "ebpf_bindings",
            detail,
            Fix::say("give the eBPF plane more ports or addresses in /etc/natgw/natgw.toml (port_range = \"FIRST-LAST\", more snat_to addresses), then")
                .then_run(&["natgw", "up"]),
        )
    } else {
        Finding::pass("ebpf_bindings", detail)
    });
    out
}

/// `6.18.44-fc` → (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn healthy() -> EbpfObserved {
        let expected: Vec<String> = ["link_egress", "link_ingress", "natgw_counters"]
            .map(String::from)
            .to_vec();
        EbpfObserved {
            kernel: "6.18.44".into(),
            version: kernel_version("6.18.44-fc-v782"),
            btf: true,
            missing_capabilities: Vec::new(),
            bpffs: true,
            bpffs_path: "/run/natgw/bpffs".into(),
            public: "wan0".into(),
            attached: vec!["natgw_egress".into(), "natgw_ingress".into()],
            up: true,
            pinned: expected.clone(),
            expected,
            busiest: 10,
            capacity: 4536,
        }
    }

    fn status(o: &EbpfObserved, id: &str) -> Status {
        findings(o).into_iter().find(|f| f.id == id).unwrap().status
    }

    #[test]
    fn a_healthy_plane_passes() {
        let f = findings(&healthy());
        assert!(f.iter().all(|f| f.status == Status::Pass), "{f:?}");
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
    }

    #[test]
    fn each_fault_is_found_with_a_fix() {
        let mut o = healthy();
        o.version = Some((6, 1));
        assert_eq!(status(&o, "ebpf_kernel"), Status::Fail);
        let mut o = healthy();
        o.attached = vec!["natgw_egress".into()];
        let f = findings(&o);
        let a = f.iter().find(|f| f.id == "ebpf_attached").unwrap();
        assert_eq!(
            (a.status, a.fix.as_deref()),
            (Status::Fail, Some("natgw up"))
        );
        assert_eq!(a.repair, Some(Repair::ApplyGateway));
        let mut o = healthy();
        o.pinned.pop();
        assert_eq!(status(&o, "ebpf_pinned"), Status::Fail);
        o.bpffs = false;
        let f = findings(&o);
        let p = f.iter().find(|f| f.id == "ebpf_pinned").unwrap();
        assert!(
            p.fix
                .as_deref()
                .unwrap()
                .starts_with("mkdir -p /run/natgw/bpffs && mount -t bpf"),
            "{p:?}"
        );
        let mut o = healthy();
        o.busiest = 3629; // 80 % of 4536
        assert_eq!(status(&o, "ebpf_bindings"), Status::Warn);
        o.busiest = 3628;
        assert_eq!(status(&o, "ebpf_bindings"), Status::Pass);
        // Not up: only the kernel and natgw's privileges are checked.
        let mut o = healthy();
        o.up = false;
        o.attached.clear();
        assert_eq!(findings(&o).len(), 2);
        let mut o = healthy();
        o.missing_capabilities = vec!["CAP_SYS_ADMIN".into()];
        let f = findings(&o);
        let p = f.iter().find(|f| f.id == "ebpf_privileges").unwrap();
        assert_eq!(p.status, Status::Fail);
        assert!(
            p.detail.starts_with("natgw runs without CAP_SYS_ADMIN"),
            "{p:?}"
        );
        assert!(
            p.fix.as_deref().unwrap().contains("CapabilityBoundingSet="),
            "{p:?}"
        );
    }
}
