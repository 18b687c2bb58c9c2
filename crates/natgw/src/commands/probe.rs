//! `natgw probe` and `natgw stun-server`.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use natgw_probe::behaviour::{self, Behaviour, Options, Requirement};
use natgw_probe::reach::{self, Outcome};
use natgw_probe::server::limit::Rate;
use natgw_probe::server::{self, Server};
use serde::Serialize;

use crate::cli::{ProbeArgs, StunServerArgs};
use crate::exit::{self, problem, usage};
use crate::output;

#[derive(Serialize)]
struct Report {
    probes: Vec<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stun: Option<StunReport>,
}

#[derive(Serialize)]
pub struct StunReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<Behaviour>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub requirements: Vec<Requirement>,
}

pub fn run(args: &ProbeArgs) -> exit::Result<i32> {
    if args.stun.is_none() && args.tcp.is_empty() && args.udp.is_empty() && args.icmp.is_empty() {
        return Err(usage(anyhow!(
            "nothing to probe: give --stun, --tcp, --udp or --icmp"
        )));
    }
    if !(args.timeout > 0.0 && args.timeout <= 60.0) {
        return Err(usage(anyhow!(
            "--timeout {} is out of range; use 0.1 to 60 seconds",
            args.timeout
        )));
    }
    if args.lifetime == Some(0) || args.lifetime > Some(3_600) {
        return Err(usage(anyhow!(
            "--lifetime {} is out of range; use 1 to 3600 seconds (RFC 4787 REQ-5: 120)",
            args.lifetime.unwrap_or_default()
        )));
    }
    if args.tcp_lifetime == Some(0) || args.tcp_lifetime > Some(86_400) {
        return Err(usage(anyhow!(
            "--tcp-lifetime {} is out of range; use 1 to 86400 seconds (RFC 5382 REQ-5: 7440)",
            args.tcp_lifetime.unwrap_or_default()
        )));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut probes: Vec<Outcome> = Vec::new();
    probes.extend(
        args.icmp
            .iter()
            .map(|t| reach::icmp(&t.to_string(), timeout)),
    );
    probes.extend(args.tcp.iter().map(|t| reach::tcp(&t.to_string(), timeout)));
    probes.extend(args.udp.iter().map(|t| reach::udp(&t.to_string(), timeout)));
    if let (Some(_), Some(secs)) = (&args.stun, args.lifetime) {
        // The results wait for it: say why the probe takes this long.
        eprintln!(
            "natgw probe: measuring the UDP binding lifetime (up to {secs} s) beside the other tests"
        );
    }
    let stun = args.stun.as_ref().map(|target| {
        stun_report(
            &target.to_string(),
            Options {
                lifetime_max: args.lifetime,
                classic: args.classic,
                tcp_lifetime: args.tcp_lifetime,
                ..stun_options(timeout)
            },
        )
    });

    let failed = probes.iter().any(|p| !p.ok) || stun.as_ref().is_some_and(|s| s.error.is_some());
    let report = Report { probes, stun };
    if args.json {
        output::json(&report);
    } else {
        print_report(&report);
    }
    Ok(if failed { exit::PROBLEM } else { exit::OK })
}

/// The behaviour tests with nothing optional.
pub fn stun_options(timeout: Duration) -> Options {
    Options {
        timeout,
        lifetime_max: None,
        classic: false,
        tcp_lifetime: None,
    }
}

pub fn stun_report(target: &str, options: Options) -> StunReport {
    let result = reach::resolve(target, server::DEFAULT_PORT)
        .and_then(|server| behaviour::discover(server, options).map_err(|e| e.to_string()));
    match result {
        Ok(b) => StunReport {
            requirements: behaviour::requirements(&b),
            behaviour: Some(b),
            error: None,
        },
        Err(e) => StunReport {
            behaviour: None,
            error: Some(e),
            requirements: Vec::new(),
        },
    }
}

fn print_report(report: &Report) {
    for p in &report.probes {
        let latency = p
            .latency_ms
            .map_or(String::new(), |ms| format!(" in {ms:.1} ms"));
        println!(
            "{}  {:<28} {}{latency}",
            if p.ok { "ok  " } else { "FAIL" },
            p.probe,
            p.detail
        );
    }
    if let Some(stun) = &report.stun {
        print_stun(stun);
    }
}

/// The behaviour report, as `probe` and `lab` print it.
pub fn print_stun(stun: &StunReport) {
    if let Some(e) = &stun.error {
        println!("FAIL  stun: {e}");
        return;
    }
    let b = stun.behaviour.as_ref().expect("behaviour without error");
    let show = |k: Option<behaviour::Kind>| k.map_or("not measured".to_string(), |k| k.to_string());
    println!(
        "stun server:      {} (other address: {})",
        b.server,
        b.other_address.map_or("none".into(), |a| a.to_string())
    );
    if b.translated() {
        println!("public address:   {} (local {})", b.mapped, b.local);
    } else {
        println!(
            "public address:   {} (no NAT: the server sees the local address)",
            b.mapped
        );
    }
    println!("mapping:          {}", show(b.mapping));
    println!("filtering:        {}", show(b.filtering));
    if let Some(classic) = b.classic_type {
        println!("RFC 3489 type:    {classic}");
    }
    println!("hairpinning:      {}", b.hairpinning_text());
    println!(
        "port preserved:   {}",
        if b.port_preserved { "yes" } else { "no" }
    );
    if let Some(tcp) = &b.tcp {
        println!(
            "tcp:              {} (local {}), mapping {}, port preserved {}",
            tcp.mapped,
            tcp.local,
            show(tcp.mapping),
            if tcp.port_preserved { "yes" } else { "no" }
        );
    }
    for note in &b.notes {
        println!("note: {note}");
    }
    println!("requirements:");
    for r in &stun.requirements {
        let verdict = match r.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        println!(
            "  {verdict} {:<16} {} — observed: {}",
            r.id, r.text, r.observed
        );
    }
}

pub fn stun_server(args: &StunServerArgs) -> exit::Result<i32> {
    let primary = args.listen.or_port(server::DEFAULT_PORT);
    let alternate = args.alt.map(|a| a.or_port(server::DEFAULT_ALT_PORT));
    if let Some(alt) = alternate {
        if alt.ip() == primary.ip() || alt.port() == primary.port() {
            return Err(usage(anyhow!("--alt must differ from --listen in both address and port (RFC 5780): got {primary} and {alt}")));
        }
    }
    if !(1..=1_000_000).contains(&args.rate_limit) {
        return Err(usage(anyhow!(
            "--rate-limit {} is out of range; use 1 to 1000000 requests per second",
            args.rate_limit
        )));
    }
    if args.stats == Some(0) {
        return Err(usage(anyhow!(
            "--stats 0 is out of range; give an interval of 1 second or more"
        )));
    }
    let mut config = server::Config::new(primary, alternate);
    config.limits.per_source = Rate::per_second(args.rate_limit);
    // Stop on SIGINT/SIGTERM/SIGHUP, after printing the counters.
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("cannot install the signal handler")
    .map_err(problem)?;
    let server = Server::start(config).map_err(problem)?;
    let listening: Vec<String> = server.listening.iter().map(|a| a.to_string()).collect();
    println!("natgw stun-server listening on {}", listening.join(", "));
    let stats = server.stats();
    let interval = args.stats.map_or(Duration::MAX, Duration::from_secs);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
        println!("stats: {}", stats.snapshot());
    }
    drop(server);
    println!("natgw stun-server stopped; stats: {}", stats.snapshot());
    Ok(exit::OK)
}
