//! `natgw lab`: the demo. Builds a throwaway network in namespaces, runs this very
//! binary's `up` (autodetection) in the headnode namespace, proves outbound
//! connectivity from every private node and that unsolicited inbound is dropped, and
//! removes everything again: on error, Ctrl-C and SIGTERM by itself, and after SIGKILL
//! by a guard process that waits for it to end.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use natgw_lab::{
    tcp_exchange, udp_exchange, Ipv6Mode, Lab, Listener, NetnsError, Owner, Spec, HEAD_PUBLIC,
    NPTV6_PUBLIC, SERVER, SERVER6, SERVER_ALT,
};

use crate::cli::{LabAction, LabArgs};
use crate::exit::{self, problem, usage};

const SERVICE_PORT: u16 = 7000;
const INBOUND_PORT: u16 = 7001;
const TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(args: &LabArgs) -> exit::Result<i32> {
    super::gateway::require_privilege()?;
    match args.action {
        Some(LabAction::Down) => return down(&args.name),
        Some(LabAction::Guard { owner }) => return guard(&args.name, owner),
        None => {}
    }
    let name = args.name.clone();
    // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination`): remove what this lab made.
    ctrlc::set_handler(move || {
        natgw_lab::remove_abandoned(&name, Owner::current());
        eprintln!("\nnatgw lab: interrupted, topology removed");
        std::process::exit(130);
    })
    .context("cannot install the signal handler")
    .map_err(problem)?;
    let _guard = spawn_guard(&args.name).map_err(problem)?;
    if args.ha {
        return super::lab_ha::run(args);
    }

    let spec = Spec::default().with_ipv6(args.ipv6_mode);
    let ipv6 = match args.ipv6_mode {
        Ipv6Mode::Off => String::new(),
        mode => format!(" and {SERVER6}, IPv6 {mode}"),
    };
    println!(
        "building lab {}: 2 private nodes, headnode, public server {SERVER}{ipv6}",
        args.name
    );
    let mut lab = Lab::build(&args.name, spec).map_err(|e| match e {
        NetnsError::Busy { .. } | NetnsError::Kept { .. } | NetnsError::Foreign { .. } => {
            usage(anyhow!(e))
        }
        e => problem(anyhow!(e).context("cannot build the lab topology")),
    })?;
    if !lab.leftovers.is_empty() {
        println!("removed a lab {} left from an earlier run", args.name);
    }
    let report = prove(&lab).map_err(problem)?;
    println!("\n{} passed, {} failed", report.passed, report.failed);

    if args.keep {
        lab.keep_up().map_err(problem)?;
        println!("\nthe lab stays up; enter a namespace with:");
        for ns in lab.namespaces() {
            println!("  ip netns exec {ns} bash");
        }
        println!("remove it with: natgw lab down{}", name_flag(&args.name));
    }
    Ok(if report.failed == 0 {
        exit::OK
    } else {
        exit::PROBLEM
    })
}

fn down(name: &str) -> exit::Result<i32> {
    let done = natgw_lab::remove(name).map_err(|e| usage(anyhow!(e)))?;
    println!("removed {} namespace(s) of lab {name}", done.removed.len());
    for ns in &done.foreign {
        println!("left {ns} alone: natgw lab did not make it");
    }
    Ok(if done.foreign.is_empty() {
        exit::OK
    } else {
        exit::PROBLEM
    })
}

/// Starts `natgw lab guard` in its own process group (a Ctrl-C or `kill` of the lab
/// does not reach it) with a pipe from this process: when the pipe closes, this
/// process has ended, however it ended.
pub(super) fn spawn_guard(name: &str) -> anyhow::Result<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the natgw binary")?;
    let mut child = Command::new(exe)
        .args(["lab", "guard", "--name", name, "--owner"])
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the lab's guard process")?;
    Ok(child.stdin.take().expect("piped"))
}

/// The guard: waits for end of input (its owner ended), then removes the owner's
/// lab if the owner left it behind; a lab that was finished, kept or taken over by
/// another process is not touched.
fn guard(name: &str, owner: u32) -> exit::Result<i32> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let Some(owner) = Owner::of(owner) else {
        return Ok(exit::OK);
    };
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    natgw_lab::remove_abandoned(name, owner);
    Ok(exit::OK)
}

pub(super) fn name_flag(name: &str) -> String {
    if name == "natgw-lab" {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS  {what}: {detail}");
            }
            Err(detail) => {
                self.failed += 1;
                println!("FAIL  {what}: {detail}");
            }
        }
    }
}

fn natgw_in(lab: &Lab, role: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let exe = std::env::current_exe().context("cannot find the natgw binary")?;
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(role)])
        .arg(exe)
        .args(args)
        .output()
        .context("cannot run natgw inside the headnode namespace")
}

fn prove(lab: &Lab) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // nptv6 is the one mode detection cannot find: the upstream's routed prefix is
    // not visible on the headnode.
    let nptv6 = format!("{NPTV6_PUBLIC}/64");
    let mut args = vec!["up"];
    if lab.spec.ipv6 == Ipv6Mode::Nptv6 {
        args.extend(["--ipv6-public-prefix", &nptv6]);
    }
    let up = natgw_in(lab, "head", &args)?;
    println!(
        "\n$ natgw {}   (in {}, autodetection)",
        args.join(" "),
        lab.ns("head")
    );
    for line in String::from_utf8_lossy(&up.stdout).lines() {
        println!("  {line}");
    }
    let stderr = String::from_utf8_lossy(&up.stderr).trim().to_string();
    if !up.status.success() {
        return Err(anyhow!(
            "natgw up failed in the headnode namespace: {stderr}"
        ));
    }
    println!();

    let server = SocketAddr::new(IpAddr::V4(SERVER), SERVICE_PORT);
    let _server = Listener::start(&lab.ns("pub"), server)?;
    let nodes = nodes(lab, "the headnode's public address", |i| {
        (IpAddr::V4(Lab::node_address(i)), IpAddr::V4(HEAD_PUBLIC))
    });
    prove_outbound(lab, &mut report, "ICMP", server, &nodes);
    // An upstream host that routes the private network at the headnode anyway.
    lab.route_private_from_upstream()?;
    prove_inbound_dropped(lab, &mut report, IpAddr::V4(Lab::node_address(1)))?;

    report.check(
        "n1 STUN behaviour test against the public server",
        stun_behaviour(lab),
    );
    if lab.spec.ipv6 != Ipv6Mode::Off {
        prove_ipv6(lab, &mut report)?;
    }

    let status = natgw_in(lab, "head", &["status"])?;
    println!("\n$ natgw status   (in {})", lab.ns("head"));
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("  {line}");
    }
    Ok(report)
}

/// A private node as a proof sees it: what the far side must see it as, and why.
struct Node {
    name: String,
    address: IpAddr,
    seen_as: IpAddr,
    why: &'static str,
}

/// The lab's nodes; `addresses(i)` gives node i's (1-based) own address and the one
/// the far side must see.
fn nodes(lab: &Lab, why: &'static str, addresses: impl Fn(usize) -> (IpAddr, IpAddr)) -> Vec<Node> {
    lab.nodes()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (address, seen_as) = addresses(i + 1);
            Node {
                name: name.clone(),
                address,
                seen_as,
                why,
            }
        })
        .collect()
}

/// Echo, TCP and UDP from every node to `server`, which must see each node as promised.
fn prove_outbound(lab: &Lab, report: &mut Report, icmp: &str, server: SocketAddr, nodes: &[Node]) {
    for node in nodes {
        let seen = |result: Result<SocketAddr, String>| {
            let peer = result?;
            if peer.ip() == node.seen_as {
                Ok(format!("server saw {peer} ({})", node.why))
            } else {
                Err(format!(
                    "server saw {peer}, not {} ({})",
                    node.seen_as, node.why
                ))
            }
        };
        let who = format!("{} {}", node.name, node.address);
        let ns = lab.ns(&node.name);
        report.check(
            &format!("{who} {icmp} echo to {}", server.ip()),
            ping(&ns, server.ip()),
        );
        report.check(
            &format!("{who} TCP exchange with {server}"),
            seen(tcp_exchange(&ns, server, TIMEOUT)),
        );
        report.check(
            &format!("{who} UDP exchange with {server}"),
            seen(udp_exchange(&ns, server, TIMEOUT)),
        );
    }
}

/// A connection from the public side to a service on n1 at `address` must not get in.
fn prove_inbound_dropped(lab: &Lab, report: &mut Report, address: IpAddr) -> anyhow::Result<()> {
    let target = SocketAddr::new(address, INBOUND_PORT);
    let _inbound = Listener::start(&lab.ns("n1"), target)?;
    let inbound = match tcp_exchange(&lab.ns("pub"), target, Duration::from_secs(1)) {
        Ok(peer) => Err(format!("connection got through (n1 saw {peer})")),
        Err(e) => Ok(format!("dropped ({e})")),
    };
    report.check(
        &format!("unsolicited TCP from the public side to {target}"),
        inbound,
    );
    Ok(())
}

/// The same proofs over IPv6, with the source the lab's mode promises.
fn prove_ipv6(lab: &Lab, report: &mut Report) -> anyhow::Result<()> {
    let server = SocketAddr::new(IpAddr::V6(SERVER6), SERVICE_PORT);
    let _server = Listener::start(&lab.ns("pub"), server)?;
    let why = match lab.spec.ipv6 {
        Ipv6Mode::Nat66 => "the headnode's public IPv6 address",
        Ipv6Mode::Nptv6 => "its address in the mapped prefix",
        _ => "its own address, routed",
    };
    let nodes = nodes(lab, why, |i| {
        let own = lab.node_address6(i).expect("dual stack");
        let seen = lab.expected_source6(i).expect("dual stack");
        (IpAddr::V6(own), IpAddr::V6(seen))
    });
    prove_outbound(lab, report, "ICMPv6", server, &nodes);
    lab.route_private6_from_upstream()?;
    prove_inbound_dropped(lab, report, nodes[0].address)
}

/// Runs natgw's STUN server on the public host (two addresses, two ports) and the
/// RFC 5780 behaviour test from n1; prints the report; passes when the server saw the
/// headnode's public address.
fn stun_behaviour(lab: &Lab) -> Result<String, String> {
    let config = natgw_probe::server::Config::new(
        SocketAddr::new(IpAddr::V4(SERVER), natgw_probe::server::DEFAULT_PORT),
        Some(SocketAddr::new(
            IpAddr::V4(SERVER_ALT),
            natgw_probe::server::DEFAULT_ALT_PORT,
        )),
    );
    let _server = natgw_lab::in_netns(&lab.ns("pub"), move || {
        natgw_probe::server::Server::start(config)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let target = config.primary.to_string();
    let stun = natgw_lab::in_netns(&lab.ns("n1"), move || {
        super::probe::stun_report(&target, super::probe::stun_options(TIMEOUT))
    })
    .map_err(|e| e.to_string())?;
    println!(
        "\n$ natgw probe --stun {}   (in {})",
        config.primary,
        lab.ns("n1")
    );
    super::probe::print_stun(&stun);
    println!();
    let mapped = stun
        .behaviour
        .as_ref()
        .map(|b| b.mapped)
        .ok_or_else(|| stun.error.clone().unwrap_or_default())?;
    if mapped.ip() == IpAddr::V4(HEAD_PUBLIC) {
        Ok(format!("mapped address {mapped}"))
    } else {
        Err(format!(
            "mapped address {mapped} is not the headnode's public address"
        ))
    }
}

/// One ICMP echo with iputils' ping, run inside `ns`.
pub fn ping(ns: &str, to: IpAddr) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            &to.to_string(),
        ])
        .output()
        .map_err(|e| format!("cannot run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let rtt = text
            .lines()
            .find_map(|l| l.split("time=").nth(1))
            .unwrap_or("?");
        return Ok(format!("reply in {}", rtt.trim()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file") || err.contains("not found") {
        return Err("ping is not installed (apt-get install iputils-ping)".into());
    }
    Err("no reply".into())
}
