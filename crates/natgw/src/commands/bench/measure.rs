//! One measurement of one setup: start the traffic, read the far side's counters over a
//! window, stop, and leave the gateway's table empty for the next one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use natgw_lab::bench::counter::ConntrackDrops;
use natgw_lab::bench::flows;
use natgw_lab::bench::frames::{Flow, UdpFrame, MIN_IP_PACKET};
use natgw_lab::bench::generator::{pin_to_cpu, Generator};
use natgw_lab::bench::packet_socket::PacketSocket;
use natgw_lab::bench::services::{self, TcpRole, TcpServer, UdpEcho};
use natgw_lab::bench::topology::{GENERATOR_IF, SERVER, SINK};
use natgw_lab::in_netns;

use super::host::Cpus;
use super::setups::Rig;

const ECHO_PORT: u16 = 7400;
const ONE_DESTINATION_PORT: u16 = 7300;
const ANSWER_PORT: u16 = 7100;
const HOLD_PORT: u16 = 7101;
const SINK_PORT: u16 = 7200;
/// Established flows the packet-rate figures cycle through.
const ESTABLISHED_FLOWS: u64 = 256;

/// Durations and sizes: seconds for CI, minutes for the README.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Params {
    pub rounds: usize,
    pub window: Duration,
    pub ramp: Duration,
    pub connect_duration: Duration,
    pub connect_clients: usize,
    pub held_connections: usize,
    pub one_destination_flows: u64,
    pub bulk_window: Duration,
    pub bulk_streams: usize,
}

impl Params {
    pub fn quick() -> Params {
        Params {
            rounds: 1,
            window: Duration::from_millis(400),
            ramp: Duration::from_millis(100),
            connect_duration: Duration::from_secs(2),
            connect_clients: 4,
            held_connections: 1_000,
            one_destination_flows: 100_000,
            bulk_window: Duration::from_millis(500),
            bulk_streams: 4,
        }
    }

    pub fn full() -> Params {
        Params {
            rounds: 3,
            window: Duration::from_secs(1),
            ramp: Duration::from_millis(200),
            connect_duration: Duration::from_secs(60),
            connect_clients: 4,
            held_connections: 20_000,
            one_destination_flows: 100_000,
            bulk_window: Duration::from_secs(3),
            bulk_streams: 4,
        }
    }
}

/// A rate read at the receiver, with what the generator offered meanwhile and what the
/// gateway's CPU spent per packet that arrived.
pub struct Rate {
    pub per_second: f64,
    pub offered_per_second: f64,
    /// Nanoseconds the gateway's CPU spent in softirq (where the receive processing
    /// that RPS sends it runs: the gateway's forwarding, and the far side's reception,
    /// alike for every setup) per packet that arrived. None without a CPU of its own.
    pub gateway_ns_per_packet: Option<f64>,
}

/// Softirq time of one CPU so far, in clock ticks (/proc/stat).
fn softirq_ticks(cpu: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow!("/proc/stat has no line for {name}"))?;
    // cpuN user nice system idle iowait irq softirq ...
    line.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("/proc/stat: cannot read the softirq time of {name}: {line}"))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Floods the gateway with `flows` while counting what arrives on the public side.
fn flood_rate(
    rig: &Rig,
    cpus: &Cpus,
    params: &Params,
    template: UdpFrame,
    flows: &(dyn Fn(u64) -> Flow + Sync),
) -> anyhow::Result<Rate> {
    let generator = generator(rig, template)?;
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    std::thread::scope(|scope| -> anyhow::Result<Rate> {
        let sender = scope.spawn(|| {
            let _ = pin_to_cpu(cpus.generator);
            let result = generator.flood(flows, 0, &stop, &sent);
            stop.store(true, Ordering::Relaxed);
            result
        });
        let measured = (|| -> anyhow::Result<Rate> {
            std::thread::sleep(params.ramp);
            let busy = || cpus.gateway.map(softirq_ticks).transpose();
            let (c0, s0, b0, t0) = (
                rig.forwarded.rx_packets()?,
                sent.load(Ordering::Relaxed),
                busy()?,
                Instant::now(),
            );
            std::thread::sleep(params.window);
            let (c1, s1, b1, t1) = (
                rig.forwarded.rx_packets()?,
                sent.load(Ordering::Relaxed),
                busy()?,
                Instant::now(),
            );
            let seconds = (t1 - t0).as_secs_f64();
            let arrived = c1 - c0;
            Ok(Rate {
                per_second: arrived as f64 / seconds,
                offered_per_second: (s1 - s0) as f64 / seconds,
                gateway_ns_per_packet: b0
                    .zip(b1)
                    .filter(|_| arrived > 0)
                    .map(|(b0, b1)| (b1 - b0) as f64 / ticks_per_second() * 1e9 / arrived as f64),
            })
        })();
        stop.store(true, Ordering::Relaxed);
        sender
            .join()
            .map_err(|_| anyhow!("the generator thread panicked"))?
            .context("the generator failed")?;
        measured
    })
}

fn generator(rig: &Rig, template: UdpFrame) -> anyhow::Result<Generator> {
    let socket = in_netns(&rig.net.ns("gen"), || PacketSocket::open(GENERATOR_IF))?
        .context("cannot open the generator's packet socket")?;
    Ok(Generator::new(socket, template))
}

fn frame(rig: &Rig, destination: std::net::Ipv4Addr, ip_length: usize) -> UdpFrame {
    UdpFrame::new(rig.generator_mac, rig.gateway_mac, destination, ip_length)
}

/// New UDP flows per second: every packet a new source address and port.
pub fn new_flows(rig: &Rig, cpus: &Cpus, params: &Params) -> anyhow::Result<Rate> {
    // A window in which nothing arrived measured nothing (on a loaded machine the
    // generator thread may not run at all in a 0.4 s window): it is run again, at most
    // twice, and a gateway that forwards nothing still reports 0.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let rate = flood_rate(
            rig,
            cpus,
            params,
            frame(rig, SINK, MIN_IP_PACKET),
            &flows::every_packet_new,
        );
        rig.flush()?;
        match rate {
            Ok(r) if r.per_second == 0.0 && attempts < 3 => {
                eprintln!(
                    "natgw bench: nothing arrived in a new-flow window of {} (offered {:.0}/s); measuring again",
                    rig.setup.name(),
                    r.offered_per_second
                );
            }
            other => return other,
        }
    }
}

/// Packets per second through established flows (each answered once by the server
/// before the window) of `ip_length`-byte packets.
pub fn established(
    rig: &Rig,
    cpus: &Cpus,
    params: &Params,
    ip_length: usize,
) -> anyhow::Result<Rate> {
    let server = SocketAddr::from((SERVER, ECHO_PORT));
    let mut echo = UdpEcho::start(&rig.net.ns("srv"), server)?;
    let flows = flows::cycling(ESTABLISHED_FLOWS, ECHO_PORT);
    let returned = || rig.returned.rx_packets();
    generator(rig, frame(rig, SERVER, ip_length))?
        .paced(
            &flows,
            0,
            ESTABLISHED_FLOWS,
            &returned,
            64,
            Duration::from_millis(200),
        )
        .context("the generator failed")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while echo.answered.load(Ordering::Relaxed) < ESTABLISHED_FLOWS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = echo.answered.load(Ordering::Relaxed);
    echo.quiet();
    let rate = if answered < ESTABLISHED_FLOWS {
        Err(anyhow!(
            "only {answered} of {ESTABLISHED_FLOWS} flows were answered before the measurement"
        ))
    } else {
        flood_rate(rig, cpus, params, frame(rig, SERVER, ip_length), &flows)
    };
    drop(echo);
    rig.flush()?;
    rate
}

/// TCP connections per second, and failed connects, while `held_connections` stay open.
pub struct Connects {
    pub per_second: f64,
    pub failed: u64,
}

pub fn connects(rig: &Rig, params: &Params) -> anyhow::Result<Connects> {
    let srv = rig.net.ns("srv");
    let gen = rig.net.ns("gen");
    let hold = TcpServer::start(&srv, (SERVER, HOLD_PORT).into(), TcpRole::Hold, 1)?;
    let held = services::open_connections(
        &gen,
        (SERVER, HOLD_PORT).into(),
        params.held_connections,
        Duration::from_secs(2),
    )?
    .with_context(|| {
        format!(
            "cannot open {} connections to keep",
            params.held_connections
        )
    })?;
    let answer = TcpServer::start(
        &srv,
        (SERVER, ANSWER_PORT).into(),
        TcpRole::AnswerAndClose,
        2,
    )?;
    let start = Instant::now();
    let count = services::connect_loop(
        &gen,
        (SERVER, ANSWER_PORT).into(),
        params.connect_clients,
        params.connect_duration,
        Duration::from_secs(1),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    drop((answer, held, hold));
    rig.flush()?;
    Ok(Connects {
        per_second: count.completed as f64 / seconds,
        failed: count.failed,
    })
}

/// UDP flows to one destination (address and port), each from a new source address and
/// port, offered a little faster than they arrive; returns how many arrived.
pub fn one_destination(rig: &Rig, params: &Params) -> anyhow::Result<u64> {
    let flows = flows::every_packet_new_to(ONE_DESTINATION_PORT);
    // Flows the gateway refused are done with too: without counting them the generator
    // would wait for each, patience after patience, once the ports run out.
    let refused = ConntrackDrops::open(&rig.net.ns("gw"));
    let done = || -> std::io::Result<u64> {
        let refused = refused.as_ref().map_or(Ok(0), |r| r.read())?;
        Ok(rig.forwarded.rx_packets()? + refused)
    };
    let before = rig.forwarded.rx_packets()?;
    generator(rig, frame(rig, SINK, MIN_IP_PACKET))?
        .paced(
            &flows,
            0,
            params.one_destination_flows,
            &done,
            512,
            Duration::from_millis(20),
        )
        .context("the generator failed")?;
    std::thread::sleep(Duration::from_millis(200));
    let carried = (rig.forwarded.rx_packets()? - before).min(params.one_destination_flows);
    rig.flush()?;
    Ok(carried)
}

/// Bulk TCP throughput in Gbit/s over `streams` connections, counted by the receiver.
pub fn bulk(rig: &Rig, params: &Params, streams: usize) -> anyhow::Result<f64> {
    let server = SocketAddr::from((SERVER, SINK_PORT));
    let sink = TcpServer::start(&rig.net.ns("srv"), server, TcpRole::Sink, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let senders = services::bulk_senders(&rig.net.ns("gen"), server, streams, stop.clone())?;
    std::thread::sleep(params.ramp);
    let (b0, t0) = (sink.bytes.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(params.bulk_window);
    let (b1, t1) = (sink.bytes.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    drop(sink);
    rig.flush()?;
    Ok((b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e9)
}
