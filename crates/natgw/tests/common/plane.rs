//! One test body on both data planes: `both_planes!` turns `fn name(plane) { ... }` into
//! the tests `name::nftables` and `name::ebpf` (run in parallel by the one `cargo test`),
//! and `Plane` puts the plane into the lab, natgw's command line and its config.

use std::path::{Path, PathBuf};
use std::process::Output;

use natgw_core::dataplane::DataplaneKind;
use natgw_lab::{Lab, Spec};

use super::{host_bpffs, json, lab_or_skip, natgw, natgw_env, scratch, state_path};

/// Runs a test body on each data plane: after
///
/// ```ignore
/// /// What it checks.
/// fn second_up_changes_nothing(plane: Plane) {
///     let Some(lab) = plane.lab(Spec::nodes(1)) else {
///         return;
///     };
///     assert_exit(&plane.natgw(&lab, &["up"]), 0);
/// }
/// both_planes!(second_up_changes_nothing);
/// ```
///
/// the tests are `second_up_changes_nothing::nftables` and `second_up_changes_nothing::ebpf`
/// (the body stays an ordinary function, formatted and linted as such).
#[allow(unused_macros)]
macro_rules! both_planes {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn nftables() {
                super::$name($crate::common::Plane::nftables(concat!(
                    stringify!($name),
                    "::nftables"
                )))
            }

            #[test]
            fn ebpf() {
                super::$name($crate::common::Plane::ebpf(concat!(stringify!($name), "::ebpf")))
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use both_planes;

/// The data plane a test runs on, and the test's name (for skip messages).
#[derive(Debug, Clone, Copy)]
pub struct Plane {
    pub kind: DataplaneKind,
    pub test: &'static str,
}

impl std::fmt::Display for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl Plane {
    pub fn nftables(test: &'static str) -> Plane {
        Plane {
            kind: DataplaneKind::Nftables,
            test,
        }
    }

    pub fn ebpf(test: &'static str) -> Plane {
        Plane {
            kind: DataplaneKind::Ebpf,
            test,
        }
    }

    pub fn is_ebpf(self) -> bool {
        self.kind == DataplaneKind::Ebpf
    }

    /// The test's lab (or `None` with the skip message); for the eBPF plane the bpffs
    /// natgw pins to is mounted where the programs outlive `ip netns exec`.
    pub fn lab(self, spec: Spec) -> Option<Lab> {
        let lab = lab_or_skip(self.test, spec)?;
        if self.is_ebpf() {
            host_bpffs();
        }
        Some(lab)
    }

    /// `args` (a gateway command: up, plan, run, status, doctor) choosing this plane
    /// with `--dataplane`.
    pub fn args<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = args.to_vec();
        full.extend(["--dataplane", self.name()]);
        full
    }

    pub fn name(self) -> &'static str {
        match self.kind {
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::Ebpf => "ebpf",
        }
    }

    /// `natgw ARGS --dataplane PLANE` in the headnode.
    pub fn natgw(self, lab: &Lab, args: &[&str]) -> Output {
        natgw(lab, &self.args(args))
    }

    /// `natgw ARGS --dataplane PLANE` in the namespace of `role`, with extra environment.
    pub fn natgw_env(self, lab: &Lab, role: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        natgw_env(lab, role, &self.args(args), env)
    }

    /// The config line that chooses this plane.
    pub fn config_line(self) -> String {
        format!("dataplane = \"{}\"\n", self.name())
    }

    /// A config file in the lab's scratch directory: this plane's line, then `text`.
    pub fn config(self, lab: &Lab, text: &str) -> PathBuf {
        let path = scratch(lab, "config").join("natgw.toml");
        std::fs::write(&path, format!("{}{text}", self.config_line())).unwrap();
        path
    }

    /// Connections (flows) the data plane translated, from `status --json`: natgw's
    /// `translated_connections` counter (conntrack's first packets) on nftables, the
    /// programs' `bindings_created` on eBPF.
    pub fn translated(self, status: &serde_json::Value) -> u64 {
        match self.kind {
            DataplaneKind::Nftables => nft_status_counter(status, "translated_connections"),
            DataplaneKind::Ebpf => ebpf_counter(status, "bindings_created"),
        }
    }
}

/// Packets of one of natgw's nftables counters as `status --json` shows them.
pub fn nft_status_counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .unwrap_or_else(|| panic!("no counters: {status}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no counter {name}: {status}"))["packets"]
        .as_u64()
        .unwrap()
}

/// One of the eBPF programs' counters as `status --json` shows them.
pub fn ebpf_counter(status: &serde_json::Value, name: &str) -> u64 {
    status["ebpf"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no eBPF counter {name}: {status}"))
}

/// `natgw status --json` in the headnode, without flags (the gateway `up` made).
pub fn status_json(lab: &Lab) -> serde_json::Value {
    json(&natgw(lab, &["status", "--json"]))
}

/// Objects pinned for the headnode's namespace (seen from the host's mount namespace):
/// its directory on the bpffs is named like its state directory. Sorted.
pub fn pinned(lab: &Lab) -> Vec<String> {
    let state = state_path(lab);
    let name = state.parent().unwrap().file_name().unwrap();
    let dir = Path::new("/run/natgw/bpffs").join(name);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A lab and a config file for `dataplane` with `extra` lines: interfaces named.
pub fn plane_lab(test: &str, spec: Spec, dataplane: &str, extra: &str) -> Option<(Lab, PathBuf)> {
    let lab = lab_or_skip(test, spec)?;
    if dataplane == "ebpf" {
        host_bpffs();
    }
    let config = scratch(&lab, "ebpf").join("natgw.toml");
    std::fs::write(
        &config,
        format!("public = \"wan0\"\nprivate = [\"lan0\"]\ndataplane = \"{dataplane}\"\n{extra}"),
    )
    .unwrap();
    Some((lab, config))
}
