//! `natgw probe` and `natgw stun-server`.

use std::time::Duration;

use anyhow::anyhow;
use natgw_probe::behaviour::{self, Behaviour, Options, Requirement};
use natgw_probe::reach::{self, Outcome};
use natgw_probe::server::{self, Server};
use serde::Serialize;

use crate::address_flags::Endpoint;
use crate::cli::ProbeArgs;
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
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut probes: Vec<Outcome> = Vec::new();
    probes.extend(
        args.icmp
            .iter()
            .map(|t| reach::icmp(&t.to_string(), timeout)),
    );
    probes.extend(args.tcp.iter().map(|t| reach::tcp(&t.to_string(), timeout)));
    probes.extend(args.udp.iter().map(|t| reach::udp(&t.to_string(), timeout)));
    let stun = args
        .stun
        .as_ref()
        .map(|target| stun_report(&target.to_string(), timeout, args.lifetime));

    let failed = probes.iter().any(|p| !p.ok) || stun.as_ref().is_some_and(|s| s.error.is_some());
    let report = Report { probes, stun };
    if args.json {
        output::json(&report);
    } else {
        print_report(&report);
    }
    Ok(if failed { exit::PROBLEM } else { exit::OK })
}

pub fn stun_report(target: &str, timeout: Duration, lifetime_max: Option<u64>) -> StunReport {
    let result = reach::resolve(target, server::DEFAULT_PORT).and_then(|server| {
        behaviour::discover(
            server,
            Options {
                timeout,
                lifetime_max,
            },
        )
        .map_err(|e| e.to_string())
    });
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
    println!("hairpinning:      {}", b.hairpinning_text());
    println!(
        "port preserved:   {}",
        if b.port_preserved { "yes" } else { "no" }
    );
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

pub fn stun_server(listen: Endpoint, alt: Option<Endpoint>) -> exit::Result<i32> {
    let primary = listen.or_port(server::DEFAULT_PORT);
    let alternate = alt.map(|a| a.or_port(server::DEFAULT_ALT_PORT));
    if let Some(alt) = alternate {
        if alt.ip() == primary.ip() || alt.port() == primary.port() {
            return Err(usage(anyhow!("--alt must differ from --listen in both address and port (RFC 5780): got {primary} and {alt}")));
        }
    }
    let server = Server::start(server::Config { primary, alternate }).map_err(problem)?;
    let listening: Vec<String> = server.listening.iter().map(|a| a.to_string()).collect();
    println!("natgw stun-server listening on {}", listening.join(", "));
    server.wait();
    Ok(exit::OK)
}
