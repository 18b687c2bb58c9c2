//! `natgw bench`: plain routing, the classic recipe and natgw side by side, each in its
//! own namespaces, rounds alternated (plain, recipe, natgw, plain, ...) so that a noisy
//! moment hits every setup alike; medians and ratios in a table or JSON. Everything it
//! creates is removed and the conntrack maximum restored, also on error and Ctrl-C.

mod host;
mod measure;
mod profile;
mod report;
mod setups;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use natgw_lab::bench::frames::MIN_IP_PACKET;
use serde::Serialize;

use crate::cli::{BenchArgs, BenchFigure};
use crate::exit::{self, problem, usage};
use host::{ConntrackMax, Cpus};
use measure::Params;
use report::{Better, Collected, FigureSpec};
use setups::{Rig, Setup};

/// Enough for a new-flow window at plain routing's rate plus the held connections.
const CONNTRACK_MAX: u64 = 1 << 20;
const LARGE_PACKET: usize = 1400;

const NEW_FLOWS: FigureSpec = figure("new_flows", "new UDP flows", "per s", Better::Higher);
const PPS_SMALL: FigureSpec = figure(
    "established_pps_64",
    "packets, established flows, 64-byte frames",
    "per s",
    Better::Higher,
);
const PPS_LARGE: FigureSpec = figure(
    "established_pps_1400",
    "packets, established flows, 1400-byte packets",
    "per s",
    Better::Higher,
);
const NEW_FLOWS_CPU: FigureSpec = figure(
    "new_flows_cpu",
    "gateway CPU per new UDP flow",
    "ns",
    Better::Cheaper,
);
const PPS_SMALL_CPU: FigureSpec = figure(
    "established_pps_64_cpu",
    "gateway CPU per packet, established, 64-byte frames",
    "ns",
    Better::Cheaper,
);
const PPS_LARGE_CPU: FigureSpec = figure(
    "established_pps_1400_cpu",
    "gateway CPU per packet, established, 1400-byte packets",
    "ns",
    Better::Cheaper,
);
const CONNECTS: FigureSpec = figure(
    "tcp_connects",
    "TCP connections, many held open",
    "per s",
    Better::Higher,
);
const CONNECTS_FAILED: FigureSpec = figure(
    "tcp_connects_failed",
    "failed TCP connects in that run",
    "count",
    Better::Lower,
);
const ONE_DESTINATION: FigureSpec = figure(
    "one_destination_flows",
    "UDP flows to one destination carried",
    "count",
    Better::Higher,
);
const ONE_DESTINATION_FAILED: FigureSpec = figure(
    "one_destination_failed",
    "UDP flows to one destination failed",
    "count",
    Better::Lower,
);
const BULK_ONE: FigureSpec = figure("bulk_1", "bulk TCP, one stream", "Gbit/s", Better::Higher);
const BULK_MANY: FigureSpec = figure(
    "bulk_n",
    "bulk TCP, several streams",
    "Gbit/s",
    Better::Higher,
);

const fn figure(
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    better: Better,
) -> FigureSpec {
    FigureSpec {
        id,
        title,
        unit,
        better,
    }
}

/// A rate and, where the gateway has a CPU of its own, what each packet cost it there:
/// the cost compares setups also where the generator cannot saturate the gateway.
fn with_cost(rate: FigureSpec, cost: FigureSpec, r: &measure::Rate) -> Vec<(FigureSpec, f64)> {
    let mut figures = vec![(rate, r.per_second)];
    figures.extend(r.gateway_ns_per_packet.map(|ns| (cost, ns)));
    figures
}

/// One measurement of one setup: the figures it yields.
type Measurement<'a> = dyn FnMut(&Rig) -> anyhow::Result<Vec<(FigureSpec, f64)>> + 'a;

const COMPARED: [Setup; 4] = [Setup::Plain, Setup::Recipe, Setup::Natgw, Setup::Ebpf];
const WITH_POOL: [Setup; 4] = [Setup::Plain, Setup::Recipe, Setup::Natgw, Setup::NatgwPool2];
/// Every setup built.
const ALL: [Setup; 5] = [
    Setup::Plain,
    Setup::Recipe,
    Setup::Natgw,
    Setup::NatgwPool2,
    Setup::Ebpf,
];

#[derive(Serialize)]
struct Output {
    date: String,
    quick: bool,
    rounds: usize,
    duration_seconds: f64,
    machine: Machine,
    cpus: Cpus,
    params: Params,
    setups: BTreeMap<&'static str, String>,
    figures: Vec<report::Figure>,
    /// With --profile: per flood, per setup, where the gateway's CPU went.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    profiles: BTreeMap<&'static str, BTreeMap<&'static str, profile::Profile>>,
    notes: Vec<String>,
    /// Every namespace of the run starts with this (all removed at the end).
    namespace_prefix: String,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    load_average_before: String,
}

pub fn run(args: &BenchArgs) -> exit::Result<i32> {
    super::gateway::require_privilege()?;
    let mut params = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(rounds) = args.rounds {
        if rounds == 0 {
            return Err(usage(anyhow::anyhow!("--rounds must be at least 1")));
        }
        params.rounds = rounds;
    }
    let prefix = format!("ngwb{}-", std::process::id());
    let scratch = std::env::temp_dir().join(format!("natgw-bench-{}", std::process::id()));
    {
        let prefix = prefix.clone();
        let scratch = scratch.clone();
        ctrlc::set_handler(move || {
            natgw_lab::bench::topology::remove_all(&prefix);
            let _ = std::fs::remove_dir_all(&scratch);
            if let Some(warning) = host::restore_raised() {
                eprintln!("natgw bench: {warning}");
            }
            eprintln!("\nnatgw bench: interrupted; namespaces removed, conntrack maximum restored");
            std::process::exit(130);
        })
        .context("cannot install the Ctrl-C handler")
        .map_err(problem)?;
    }
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))
        .map_err(problem)?;
    let result = bench(&params, args, &prefix, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let leftover = natgw_lab::bench::topology::remove_all(&prefix);
    let output = result.map_err(problem)?;
    if !leftover.is_empty() {
        return Err(problem(anyhow::anyhow!(
            "namespaces left behind (now removed): {}",
            leftover.join(", ")
        )));
    }
    if args.json {
        crate::output::json(&output);
    } else {
        print!("{}", report::table(&output.figures));
        print!("{}", report::profiles(&output.profiles));
        for note in &output.notes {
            println!("note: {note}");
        }
    }
    Ok(exit::OK)
}

fn bench(
    params: &Params,
    args: &BenchArgs,
    prefix: &str,
    scratch: &std::path::Path,
) -> anyhow::Result<Output> {
    let started = Instant::now();
    let mut notes = Vec::new();
    let load_average_before = read_trimmed("/proc/loadavg");
    let _conntrack = match ConntrackMax::raise_to(CONNTRACK_MAX) {
        Ok(guard) => guard,
        Err(e) => {
            notes.push(format!(
                "conntrack maximum not raised ({e:#}); new-flow windows may fill the table"
            ));
            None
        }
    };
    // The eBPF setup's `natgw up` runs under `ip netns exec`, in a mount namespace of
    // its own: its pins must live on a bpffs of this (the host's) namespace, or they
    // would go, with the programs, when `up` exits. Unmounted again when the bench
    // mounted it.
    let _bpffs = host::Bpffs::mount().context("cannot mount a bpffs for the eBPF setup")?;
    let mut params = params.clone();
    let files = host::raise_open_files(2 * params.held_connections as u64 + 4096);
    let affordable = (files.saturating_sub(4096) / 2) as usize;
    if affordable < params.held_connections {
        notes.push(format!(
            "open-file limit {files}: {affordable} connections held open instead of {}",
            params.held_connections
        ));
        params.held_connections = affordable;
    }
    let cpus = Cpus::plan();
    match cpus.gateway {
        Some(cpu) => notes.push(format!(
            "generator and endpoints on CPU {}, the gateway's receive processing on CPU {cpu} (RPS)",
            cpus.generator
        )),
        None => notes.push("one CPU: generator and gateway share it; rates are the pair's".into()),
    }

    let mut rigs = Vec::new();
    for setup in ALL {
        progress(format!(
            "building the {} network: {}",
            setup.name(),
            setup.describe()
        ));
        rigs.push(Rig::build(setup, prefix, &cpus, scratch)?);
    }
    let rig = |setup: Setup| {
        rigs.iter()
            .find(|r| r.setup == setup)
            .expect("every setup is built")
    };

    let mut collected = Collected::default();
    let mut offered = Vec::new();
    let rounds = params.rounds;
    let mut each =
        |spec: &FigureSpec, setups: &[Setup], run: &mut Measurement| -> anyhow::Result<()> {
            for round in 1..=rounds {
                for &setup in setups {
                    progress(format!(
                        "{}: {}, round {round}/{rounds}",
                        spec.title,
                        setup.name()
                    ));
                    let values = run(rig(setup))
                        .with_context(|| format!("{} with {}", spec.title, setup.name()))?;
                    for (figure, value) in values {
                        progress(format!("  {} {}", report::number(value), figure.unit));
                        collected.add(figure, setup, value);
                    }
                }
            }
            Ok(())
        };

    let wanted = |figure: BenchFigure| args.only.is_empty() || args.only.contains(&figure);
    if wanted(BenchFigure::NewFlows) {
        each(&NEW_FLOWS, &COMPARED, &mut |r| {
            let rate = measure::new_flows(r, &cpus, &params)?;
            offered.push((NEW_FLOWS, r.setup, rate.offered_per_second, rate.per_second));
            Ok(with_cost(NEW_FLOWS, NEW_FLOWS_CPU, &rate))
        })?;
    }
    for (spec, cost, size, figure) in [
        (PPS_SMALL, PPS_SMALL_CPU, MIN_IP_PACKET, BenchFigure::Pps64),
        (PPS_LARGE, PPS_LARGE_CPU, LARGE_PACKET, BenchFigure::Pps1400),
    ] {
        if !wanted(figure) {
            continue;
        }
        each(&spec, &COMPARED, &mut |r| {
            let rate = measure::established(r, &cpus, &params, size)?;
            offered.push((spec, r.setup, rate.offered_per_second, rate.per_second));
            Ok(with_cost(spec, cost, &rate))
        })?;
    }
    if wanted(BenchFigure::Connects) {
        each(&CONNECTS, &COMPARED, &mut |r| {
            let c = measure::connects(r, &params)?;
            Ok(vec![
                (CONNECTS, c.per_second),
                (CONNECTS_FAILED, c.failed as f64),
            ])
        })?;
    }
    if wanted(BenchFigure::OneDestination) {
        each(&ONE_DESTINATION, &WITH_POOL, &mut |r| {
            let carried = measure::one_destination(r, &params)?;
            let failed = params.one_destination_flows - carried;
            Ok(vec![
                (ONE_DESTINATION, carried as f64),
                (ONE_DESTINATION_FAILED, failed as f64),
            ])
        })?;
    }
    if wanted(BenchFigure::Bulk) {
        each(&BULK_ONE, &COMPARED, &mut |r| {
            Ok(vec![(BULK_ONE, measure::bulk(r, &params, 1)?)])
        })?;
        each(&BULK_MANY, &COMPARED, &mut |r| {
            Ok(vec![(
                BULK_MANY,
                measure::bulk(r, &params, params.bulk_streams)?,
            )])
        })?;
    }

    // The generator must outrun the gateway, or the figure measures the generator.
    let mut limited = 0;
    for (spec, setup, offered, got) in &offered {
        if *offered < 1.05 * got {
            collected.generator_limited(*spec, *setup);
            limited += 1;
        }
    }
    if limited > 0 {
        notes.push(format!(
            "≥: in {limited} window(s) the generator offered less than 5 % more than arrived, so the gateway was not saturated there and the figure is a lower bound"
        ));
    }
    notes.push(format!(
        "{} connections held open during the TCP connect run; {} streams for 'several'; {} flows offered to one destination",
        params.held_connections, params.bulk_streams, params.one_destination_flows
    ));

    let mut profiles = BTreeMap::new();
    if args.profile {
        match cpus.gateway {
            None => notes.push("--profile needs two CPUs (the gateway's own); skipped".into()),
            Some(cpu) => {
                for (spec, flood) in [(NEW_FLOWS, None), (PPS_SMALL, Some(MIN_IP_PACKET))] {
                    let mut by_setup = BTreeMap::new();
                    for setup in COMPARED {
                        progress(format!("profiling {}: {}", spec.title, setup.name()));
                        let path = scratch.join(format!("perf-{}-{}.data", spec.id, setup.name()));
                        let recording = match profile::Recording::start(cpu, &path) {
                            Ok(recording) => recording,
                            Err(e) => {
                                notes.push(format!("--profile: {e:#}"));
                                break;
                            }
                        };
                        match flood {
                            None => measure::new_flows(rig(setup), &cpus, &params)?,
                            Some(size) => measure::established(rig(setup), &cpus, &params, size)?,
                        };
                        match recording.finish() {
                            Ok(profile) => by_setup.insert(setup.name(), profile),
                            Err(e) => {
                                notes.push(format!("--profile: {e:#}"));
                                break;
                            }
                        };
                    }
                    profiles.insert(spec.id, by_setup);
                }
            }
        }
    }

    let refused: u64 = rigs.iter().map(Rig::ebpf_refused).sum();
    if refused > 0 {
        notes.push(format!(
            "ebpf: {refused} new flows refused for want of a public port over the run (endpoint-independent mapping: each of the {} pool addresses carries at most 64,512 bindings per protocol, and every packet of the new-flow window is a new private endpoint)",
            setups::EBPF_POOL_SIZE
        ));
    }
    let namespaces: usize = rigs.iter().map(|r| r.net.namespaces().len()).sum();
    drop(rigs);
    progress(format!("removed {namespaces} namespaces"));
    Ok(Output {
        date: now_utc(),
        quick: args.quick,
        rounds: params.rounds,
        duration_seconds: started.elapsed().as_secs_f64(),
        machine: Machine {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_average_before,
        },
        cpus,
        setups: ALL.iter().map(|s| (s.name(), s.describe())).collect(),
        figures: collected.figures(),
        profiles,
        notes,
        namespace_prefix: prefix.to_string(),
        params,
    })
}

fn progress(message: String) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("natgw bench [{elapsed:5.1}s] {message}");
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
