//! `natgw bench --quick`: every figure measured for every setup (the eBPF translator's
//! column too), and nothing left behind (namespaces, the conntrack maximum).

mod common;

use std::process::Command;

use common::*;

const RATES: [&str; 7] = [
    "new_flows",
    "established_pps_64",
    "established_pps_1400",
    "tcp_connects",
    "one_destination_flows",
    "bulk_1",
    "bulk_n",
];
const COUNTS: [&str; 2] = ["tcp_connects_failed", "one_destination_failed"];
const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

#[test]
fn quick_bench_measures_every_figure_and_leaves_nothing_behind() {
    if !root_or_skip("quick_bench_measures_every_figure_and_leaves_nothing_behind") {
        return;
    }
    let max_before = std::fs::read_to_string(CONNTRACK_MAX).unwrap();
    let out = Command::new(binary())
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("run natgw bench");
    assert_exit(&out, 0);
    let report = json(&out);
    assert!(
        stderr(&out).contains("round 1/1"),
        "no progress: {}",
        text(&out)
    );

    let figures = report["figures"].as_array().unwrap();
    let figure = |id: &str| {
        figures
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no figure {id}: {report}"))
    };
    for id in RATES.iter().chain(&COUNTS) {
        let f = figure(id);
        for setup in ["plain", "recipe", "natgw"] {
            let median = f["results"][setup]["median"]
                .as_f64()
                .unwrap_or_else(|| panic!("{id}: no {setup} result: {f}"));
            if RATES.contains(id) {
                assert!(median > 0.0, "{id} {setup}: {median}");
            } else {
                assert!(median >= 0.0, "{id} {setup}: {median}");
            }
        }
        if RATES.contains(id) {
            assert!(f["natgw_over_recipe"].as_f64().unwrap() > 0.0, "{f}");
            assert!(f["natgw_over_plain"].as_f64().unwrap() > 0.0, "{f}");
        }
    }
    // The fourth column: natgw's eBPF translator, in every figure but one destination's.
    for id in RATES.iter().filter(|id| !id.starts_with("one_destination")) {
        let f = figure(id);
        let median = f["results"]["ebpf"]["median"].as_f64();
        assert!(median.is_some_and(|m| m > 0.0), "{id}: ebpf {f}");
        assert!(f["ebpf_over_plain"].as_f64().unwrap() > 0.0, "{f}");
    }
    assert!(report["setups"]["ebpf"].is_string(), "{report}");
    // With a CPU of its own, what the gateway's CPU spent per packet, for every setup
    // (it compares setups the generator cannot saturate).
    if report["cpus"]["gateway"].is_number() {
        for id in [
            "new_flows_cpu",
            "established_pps_64_cpu",
            "established_pps_1400_cpu",
        ] {
            let f = figure(id);
            assert_eq!(f["better"], "cheaper", "{f}");
            for setup in ["plain", "recipe", "natgw", "ebpf"] {
                let ns = f["results"][setup]["median"].as_f64();
                assert!(ns.is_some_and(|ns| ns > 0.0), "{id} {setup}: {f}");
            }
            assert!(f["ebpf_over_natgw"].as_f64().unwrap() > 0.0, "{f}");
        }
    }
    for id in ["one_destination_flows", "one_destination_failed"] {
        assert!(figure(id)["results"]["natgw-pool2"]["median"].is_number());
    }
    // One address runs out of ports for one destination; routing alone does not.
    let carried = |setup: &str| {
        figure("one_destination_flows")["results"][setup]["median"]
            .as_f64()
            .unwrap()
    };
    assert!(carried("recipe") < carried("plain"), "{report}");

    let prefix = report["namespace_prefix"].as_str().unwrap();
    assert!(prefix.starts_with("ngwb"), "{prefix}");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|ns| ns.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(
        std::fs::read_to_string(CONNTRACK_MAX).unwrap(),
        max_before,
        "conntrack maximum not restored"
    );
}
