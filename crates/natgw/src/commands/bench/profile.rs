//! Where the gateway's CPU goes: `perf record` of the gateway's CPU while a flood runs,
//! with `cpu-clock` (a software event: it works on VMs without hardware counters) and
//! call chains, so that each sample in packet processing is charged to the stage it was
//! in (nftables rules, conntrack, NAT, routing, the device), not only to its leaf
//! function (a `memcpy` called by an nft expression is the rules' cost).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, Context};
use serde::Serialize;

/// Stages by function-name prefix, matched from the leaf up the call chain.
const STAGES: [(&str, &[&str]); 7] = [
    (
        "nftables rules",
        &["nft_", "__nft_", "nf_tables_", "nft_do_chain"],
    ),
    (
        "conntrack",
        &[
            "nf_conntrack",
            "__nf_conntrack",
            "____nf_conntrack",
            "nf_ct_",
            "__nf_ct_",
            "hash_conntrack",
            "nf_confirm",
            "ipv4_confirm",
            "resolve_normal_ct",
        ],
    ),
    (
        "NAT",
        &[
            "nf_nat",
            "__nf_nat",
            "nf_xfrm_me_harder",
            "l4proto_manip_pkt",
        ],
    ),
    ("netfilter hooks", &["nf_hook_slow", "nf_hook"]),
    // The eBPF plane's programs and the map and helper code they call (a route lookup
    // they ask for is routing's).
    (
        "eBPF programs",
        &[
            "bpf_prog_",
            "bpf_",
            "__bpf_",
            "htab_",
            "__htab_",
            "lookup_nulls_elem",
            "array_map_",
            "tcx_",
        ],
    ),
    (
        "routing and forwarding",
        &[
            "ip_route",
            "fib_",
            "fib4_",
            "ip_forward",
            "ip_rcv",
            "ip_list_rcv",
            "ip_sublist",
            "ip_output",
            "ip_finish_output",
            "__ip_finish_output",
            "neigh_",
            "ip_rcv_finish",
            "dst_",
            "ipv4_",
        ],
    ),
    (
        "device, RPS and skb",
        &[
            "veth_",
            "netif_",
            "__netif_",
            "process_backlog",
            "dev_",
            "__dev_",
            "skb_",
            "__skb_",
            "kfree_skb",
            "consume_skb",
            "kmem_cache",
            "eth_",
            "validate_xmit",
            "sch_direct",
            "net_rx_action",
            "napi_",
            "__napi",
            "rps_",
            "enqueue_to_backlog",
            "__kfree_skb",
            "sk_",
            "pskb_",
        ],
    ),
];

/// A sample belongs to packet processing when its chain passes through one of these.
const PACKET_PROCESSING: [&str; 3] = ["net_rx_action", "process_backlog", "__netif_receive_skb"];

/// What one flood cost the gateway's CPU.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Samples on the gateway's CPU during the flood (perf samples 4,000 times a second).
    pub samples: u64,
    /// Of those, samples in packet processing (softirq receive path).
    pub packet_samples: u64,
    /// Share of packet-processing samples per stage, in percent.
    pub stages: BTreeMap<String, f64>,
    /// The leaf functions with the most packet-processing samples, in percent.
    pub top: Vec<(String, f64)>,
    /// Inside the rules: what `nft_do_chain` spent its samples on (the expression it
    /// called, or itself), in percent of packet-processing samples.
    pub rules_top: Vec<(String, f64)>,
}

/// `perf record` running on one CPU until stopped.
pub struct Recording {
    child: Child,
    path: PathBuf,
}

impl Recording {
    pub fn start(cpu: usize, path: &Path) -> anyhow::Result<Recording> {
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-g", "-C"])
            .arg(cpu.to_string())
            .arg("-o")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run perf (apt-get install linux-perf)")?;
        // perf opens its events before it writes anything; give it that moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Recording {
            child,
            path: path.to_path_buf(),
        })
    }

    /// Stops the recording (SIGINT, as Ctrl-C: perf writes its file and exits) and
    /// summarises it.
    pub fn finish(mut self) -> anyhow::Result<Profile> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
            .context("cannot stop perf")?;
        let status = self.child.wait().context("perf record")?;
        if !self.path.exists() {
            let mut why = String::new();
            if let Some(mut stderr) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut why);
            }
            return Err(anyhow!(
                "perf record ({status}) wrote nothing: {}",
                why.trim()
            ));
        }
        let script = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&self.path)
            .output()
            .context("cannot run perf script")?;
        let _ = std::fs::remove_file(&self.path);
        if !script.status.success() {
            return Err(anyhow!(
                "perf script failed: {}",
                String::from_utf8_lossy(&script.stderr).trim()
            ));
        }
        Ok(summarise(&String::from_utf8_lossy(&script.stdout)))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `perf script -F ip,sym` output: one block per sample, one frame per line (address,
/// function), leaf first, blocks separated by blank lines.
pub fn summarise(script: &str) -> Profile {
    let mut samples = 0;
    let mut packet_samples = 0;
    let mut stages: BTreeMap<String, u64> = BTreeMap::new();
    let mut leaves: BTreeMap<String, u64> = BTreeMap::new();
    let mut in_rules: BTreeMap<String, u64> = BTreeMap::new();
    for block in script.split("\n\n") {
        let frames: Vec<&str> = block
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|sym| sym.split('+').next().unwrap_or(sym))
            .collect();
        if frames.is_empty() {
            continue;
        }
        samples += 1;
        if !frames
            .iter()
            .any(|f| PACKET_PROCESSING.iter().any(|p| f.starts_with(p)))
        {
            continue;
        }
        packet_samples += 1;
        *leaves.entry(frames[0].to_string()).or_default() += 1;
        let stage = frames
            .iter()
            .find_map(|f| {
                STAGES
                    .iter()
                    .find(|(_, prefixes)| prefixes.iter().any(|p| f.starts_with(p)))
                    .map(|(stage, _)| *stage)
            })
            .unwrap_or("other");
        *stages.entry(stage.to_string()).or_default() += 1;
        if let Some(at) = frames.iter().position(|f| f.starts_with("nft_do_chain")) {
            let callee = if at == 0 {
                "nft_do_chain itself"
            } else {
                frames[at - 1]
            };
            *in_rules.entry(callee.to_string()).or_default() += 1;
        }
    }
    let percent = |n: u64| (n as f64 * 1000.0 / packet_samples.max(1) as f64).round() / 10.0;
    let busiest = |counts: BTreeMap<String, u64>| {
        let mut top: Vec<(String, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.into_iter()
            .take(10)
            .map(|(sym, n)| (sym, percent(n)))
            .collect()
    };
    Profile {
        samples,
        packet_samples,
        stages: stages.into_iter().map(|(s, n)| (s, percent(n))).collect(),
        top: busiest(leaves),
        rules_top: busiest(in_rules),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_charged_to_the_first_known_stage_up_the_chain() {
        let script = "\
\tffffffff8226e639 memcpy_orig
\tffffffff815a30df nft_meta_get_eval
\tffffffff815a30df nft_do_chain
\tffffffff815a30df nf_hook_slow
\tffffffff815a30df ip_forward
\tffffffff815a30df process_backlog
\tffffffff815a30df net_rx_action

\tffffffff8226e639 __nf_conntrack_find_get
\tffffffff815a30df nf_conntrack_in
\tffffffff815a30df nf_hook_slow
\tffffffff815a30df net_rx_action

\tffffffff8226e639 veth_xmit
\tffffffff815a30df process_backlog

\t5b9d4dd <rustc_infer::infer::InferCtxt>::subtype_predicate
";
        let p = summarise(script);
        assert_eq!((p.samples, p.packet_samples), (4, 3));
        assert_eq!(p.stages["nftables rules"], 33.3);
        assert_eq!(p.stages["conntrack"], 33.3);
        assert_eq!(p.stages["device, RPS and skb"], 33.3);
        assert_eq!(p.top.len(), 3);
        assert_eq!(p.rules_top, [("nft_meta_get_eval".to_string(), 33.3)]);
    }

    #[test]
    fn the_ebpf_programs_own_their_map_work_but_not_the_routes_they_look_up() {
        let script = "\
\tffffffff8226e639 lookup_nulls_elem_raw
\tffffffff815a30df htab_map_update_elem
\tffffffff815a30df bpf_prog_2aaab4681393259e_try_port
\tffffffff815a30df bpf_prog_601bc37ee26fc989_natgw_egress
\tffffffff815a30df tcx_egress
\tffffffff815a30df __dev_queue_xmit
\tffffffff815a30df process_backlog

\tffffffff8226e639 fib_table_lookup
\tffffffff815a30df bpf_ipv4_fib_lookup
\tffffffff815a30df bpf_prog_601bc37ee26fc989_natgw_private
\tffffffff815a30df __netif_receive_skb_core
\tffffffff815a30df process_backlog
";
        let p = summarise(script);
        assert_eq!(p.stages["eBPF programs"], 50.0);
        assert_eq!(p.stages["routing and forwarding"], 50.0);
    }
}
