//! `natgw lab --ha`: two headnodes running `natgw run` with `[ha]`, private nodes with
//! long-lived TCP connections and a UDP stream to a public server; the primary fails
//! (its cables unplugged, or its `natgw run` SIGKILLed, alternating), and each round
//! reports how many connections survived and how long traffic stopped, then fails back.

use std::process::Stdio;
use std::time::Duration;

use anyhow::anyhow;
use natgw_lab::ha::{self, Failure, Member, Round};
use natgw_lab::{Lab, NetnsError, Spec};
use serde::Serialize;

use crate::cli::LabArgs;
use crate::exit::{self, problem, usage};
use crate::output;

#[derive(Serialize)]
struct Summary {
    rounds: Vec<Round>,
    connections_before: usize,
    survived: usize,
    /// survived / connections_before.
    survived_share: f64,
    /// Median and worst TCP outage over the rounds, seconds.
    outage_median_s: f64,
    outage_worst_s: f64,
    /// The same per kind of failure (`link-down`, `process-kill`).
    by_failure: std::collections::BTreeMap<&'static str, Outage>,
    advert_interval_s: f64,
}

#[derive(Serialize)]
struct Outage {
    rounds: usize,
    median_s: f64,
    worst_s: f64,
}

/// Median and worst TCP outage of `rounds`.
fn outage(rounds: &[&Round]) -> Outage {
    let mut o: Vec<f64> = rounds.iter().map(|r| r.tcp_outage_s).collect();
    o.sort_by(f64::total_cmp);
    Outage {
        rounds: o.len(),
        median_s: median(&o),
        worst_s: o.last().copied().unwrap_or(0.0),
    }
}

pub fn run(args: &LabArgs) -> exit::Result<i32> {
    if !(0.01..=40.95).contains(&args.advert_interval) {
        return Err(usage(anyhow!(
            "--advert-interval must be between 0.01 and 40.95 seconds"
        )));
    }
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say(format!(
        "building HA lab {}: 2 private nodes, headnodes head and head2, public server {}",
        args.name,
        natgw_lab::SERVER
    ));
    let mut lab = Lab::build(&args.name, Spec::nodes(2).with_ha()).map_err(|e| match e {
        NetnsError::Busy { .. } | NetnsError::Kept { .. } | NetnsError::Foreign { .. } => {
            usage(anyhow!(e))
        }
        e => problem(anyhow!(e).context("cannot build the lab topology")),
    })?;
    let natgw = std::env::current_exe().map_err(problem)?;
    let start = |index| {
        Member::start(&lab, index, &natgw, args.advert_interval, Stdio::null())
            .map_err(|e| problem(anyhow!(e).context("cannot start natgw run")))
    };
    let mut head = start(0)?;
    let _head2 = start(1)?;
    if !ha::wait_vip(&lab, "head", true, Duration::from_secs(20)) {
        return Err(problem(anyhow!("head never became primary")));
    }
    say("head is primary, head2 backup".into());
    let mut rounds = Vec::new();
    for i in 0..args.rounds {
        let failure = if i % 2 == 0 {
            Failure::LinkDown
        } else {
            Failure::ProcessKill
        };
        let mut restart = || Member::start(&lab, 0, &natgw, args.advert_interval, Stdio::null());
        let round = ha::failover(
            &lab,
            &mut head,
            failure,
            args.connections as usize,
            &mut restart,
        )
        .map_err(|e| problem(anyhow!(e)))?;
        say(format!(
            "round {}: {}: {}/{} connections survived ({} replicated), TCP outage {:.2} s, UDP {:.2} s, takeover {:.2} s; failback: {}",
            i + 1,
            round.failure,
            round.survived,
            round.connections_before,
            round.replicated_before,
            round.tcp_outage_s,
            round.udp_outage_s,
            round.takeover_s,
            match (round.failback_survived, round.failback_outage_s) {
                (Some(n), Some(o)) => format!("{n} survived, outage {o:.2} s"),
                _ => "head did not take over again".into(),
            }
        ));
        rounds.push(round);
        if !ha::wait_vip(&lab, "head2", false, Duration::from_secs(10)) {
            return Err(problem(anyhow!(
                "head2 kept the shared address after failback"
            )));
        }
    }
    let before: usize = rounds.iter().map(|r| r.connections_before).sum();
    let survived: usize = rounds.iter().map(|r| r.survived).sum();
    let all = outage(&rounds.iter().collect::<Vec<_>>());
    let by_failure = ["link-down", "process-kill"]
        .into_iter()
        .map(|kind| {
            let of: Vec<&Round> = rounds.iter().filter(|r| r.failure == kind).collect();
            (kind, outage(&of))
        })
        .filter(|(_, o)| o.rounds > 0)
        .collect();
    let summary = Summary {
        connections_before: before,
        survived,
        survived_share: if before == 0 {
            0.0
        } else {
            survived as f64 / before as f64
        },
        outage_median_s: all.median_s,
        outage_worst_s: all.worst_s,
        by_failure,
        advert_interval_s: args.advert_interval,
        rounds,
    };
    if args.json {
        output::json(&summary);
    } else {
        println!(
            "\n{}/{} connections survived ({:.1} %); TCP outage median {:.2} s, worst {:.2} s (advert interval {:.2} s)",
            summary.survived,
            summary.connections_before,
            summary.survived_share * 100.0,
            summary.outage_median_s,
            summary.outage_worst_s,
            args.advert_interval
        );
        for (kind, o) in &summary.by_failure {
            println!(
                "  {kind}: {} round(s), TCP outage median {:.2} s, worst {:.2} s",
                o.rounds, o.median_s, o.worst_s
            );
        }
    }
    drop(head);
    if args.keep {
        lab.keep_up().map_err(problem)?;
        say(format!(
            "the lab stays up; remove it with: natgw lab down{}",
            super::lab::name_flag(&args.name)
        ));
    }
    // The goals of the HA issue: at least 95 % survive, traffic stops under 3 s.
    Ok(
        if summary.survived_share >= 0.95 && summary.outage_worst_s < 3.0 {
            exit::OK
        } else {
            exit::PROBLEM
        },
    )
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
