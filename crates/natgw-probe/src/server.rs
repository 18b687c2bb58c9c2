//! A STUN server (RFC 5389 Binding over UDP and TCP, RFC 5780 behaviour discovery,
//! RFC 3489 clients answered in their own terms): with an alternate address it listens
//! on both addresses × both ports and honours CHANGE-REQUEST, RESPONSE-PORT,
//! OTHER-ADDRESS and RESPONSE-ORIGIN.
//!
//! It is public by design, so it is built not to be an amplifier: every source address
//! has a token bucket, replies carry only what the request needs, RESPONSE-PORT reaches
//! only unprivileged ports of the requester's own address under a tighter limit, and
//! whatever is dropped is counted by reason (`stats`).

pub mod limit;
pub mod reply;
pub mod stats;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use limit::{Limiter, Rate, Verdict};
use reply::{answer, Transport, MAX_REQUEST};
use stats::{Dropped, Stats};

pub const DEFAULT_PORT: u16 = 3478;
pub const DEFAULT_ALT_PORT: u16 = 3479;
/// Requests per second per source address, by default.
pub const DEFAULT_RATE: u32 = 50;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct ServerError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// How much one source address may ask of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Every request, over UDP and TCP.
    pub per_source: Rate,
    /// Requests whose answer goes to another port (RESPONSE-PORT): one binding
    /// lifetime test needs one per idle period.
    pub response_port: Rate,
    /// Sources remembered at once; when full, those whose bucket has refilled (idle
    /// ones) are forgotten, and new sources wait while every one is active.
    pub max_sources: usize,
    /// TCP connections open at once, in all and per source address.
    pub tcp_connections: usize,
    pub tcp_per_source: usize,
    /// A TCP connection silent this long is closed. Longer than RFC 5382 REQ-5's
    /// 2 h 4 min by default, so a client can measure a NAT against it.
    pub tcp_idle_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_source: Rate::per_second(DEFAULT_RATE),
            response_port: Rate {
                per_sec: 1.0,
                burst: 5.0,
            },
            max_sources: 65_536,
            tcp_connections: 256,
            tcp_per_source: 8,
            tcp_idle_secs: 7_500,
        }
    }
}

/// Where the server listens: the primary address and port, and optionally the
/// alternate address and port (RFC 5780 needs both to differ).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub primary: SocketAddr,
    pub alternate: Option<SocketAddr>,
    pub limits: Limits,
}

impl Config {
    pub fn new(primary: SocketAddr, alternate: Option<SocketAddr>) -> Config {
        Config {
            primary,
            alternate,
            limits: Limits::default(),
        }
    }

    /// The primary endpoint, and with an alternate the other three combinations.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut endpoints = vec![self.primary];
        if let Some(a) = self.alternate {
            let p = self.primary;
            endpoints.extend([
                SocketAddr::new(p.ip(), a.port()),
                SocketAddr::new(a.ip(), p.port()),
                a,
            ]);
        }
        endpoints
    }
}

type Sockets = HashMap<(IpAddr, u16), UdpSocket>;

/// What every serving thread shares.
struct Shared {
    config: Config,
    sockets: Sockets,
    limiter: Limiter,
    response_port_limiter: Limiter,
    stats: Arc<Stats>,
    connections: Arc<tcp::Connections>,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub listening: Vec<SocketAddr>,
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let error = |source| ServerError { addr, source };
    let socket = UdpSocket::bind(addr).map_err(error)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(error)?;
    Ok(socket)
}

impl Server {
    pub fn start(config: Config) -> Result<Server, ServerError> {
        let endpoints = config.endpoints();
        let mut sockets = Sockets::new();
        let mut listeners = Vec::new();
        for addr in &endpoints {
            sockets.insert((addr.ip(), addr.port()), bind_udp(*addr)?);
            listeners.push((tcp::listen(*addr)?, *addr));
        }
        let shared = Arc::new(Shared {
            config,
            sockets,
            limiter: Limiter::new(config.limits.per_source, config.limits.max_sources),
            response_port_limiter: Limiter::new(
                config.limits.response_port,
                config.limits.max_sources,
            ),
            stats: Arc::new(Stats::default()),
            connections: Arc::default(),
            stop: AtomicBool::new(false),
        });
        let mut threads: Vec<JoinHandle<()>> = endpoints
            .iter()
            .map(|addr| {
                let (shared, addr) = (shared.clone(), *addr);
                std::thread::spawn(move || serve_udp(&shared, addr))
            })
            .collect();
        threads.extend(listeners.into_iter().map(|(listener, addr)| {
            let shared = shared.clone();
            std::thread::spawn(move || tcp::serve(shared, listener, addr))
        }));
        Ok(Server {
            shared,
            threads,
            listening: endpoints,
        })
    }

    /// The counters, live.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Bigger than any request natgw answers, so a longer datagram shows as too long
/// instead of arriving cut to a size that might parse.
const RECEIVE_BUFFER: usize = MAX_REQUEST + 512;

fn serve_udp(shared: &Shared, local: SocketAddr) {
    let socket = &shared.sockets[&(local.ip(), local.port())];
    let stats = &shared.stats;
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        stats.received();
        match handle(shared, &buf[..n], peer, local, Transport::Udp) {
            Ok(reply) => {
                if let Some(out) = shared.sockets.get(&(reply.from.ip(), reply.from.port())) {
                    if out.send_to(&reply.bytes, reply.to).is_ok() {
                        stats.answered(reply.error);
                    }
                }
            }
            Err(why) => stats.dropped(why),
        }
    }
}

/// Limits first (cheap, before any parsing), then the protocol.
fn handle(
    shared: &Shared,
    datagram: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) -> Result<reply::Reply, Dropped> {
    if datagram.len() > MAX_REQUEST {
        return Err(Dropped::Oversized);
    }
    let now = Instant::now();
    match shared.limiter.allow(peer.ip(), now) {
        Verdict::Allowed => {}
        Verdict::Limited => return Err(Dropped::RateLimited),
        Verdict::TableFull => return Err(Dropped::SourcesFull),
    }
    let reply = answer(datagram, peer, local, &shared.config, transport)?;
    if reply.response_port {
        match shared.response_port_limiter.allow(peer.ip(), now) {
            Verdict::Allowed => {}
            Verdict::Limited | Verdict::TableFull => return Err(Dropped::ResponsePortLimited),
        }
    }
    Ok(reply)
}
