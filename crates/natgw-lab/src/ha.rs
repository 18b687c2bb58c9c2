//! The HA failover exercise on a `Spec::ha` lab: both headnodes run `natgw run` with an
//! `[ha]` section, private nodes keep long-lived TCP connections and a UDP stream to
//! the public server exchanging data, the primary fails, and what survived and how
//! long traffic stopped is measured. Shared by `natgw lab --ha` and the e2e tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::netns::{in_netns, NetnsError};
use crate::topology::{Lab, HA_HEADS, HA_PUBLIC_VIP, PRIVATE_GATEWAY, SERVER};

/// The echo service's port on the public server.
pub const ECHO_PORT: u16 = 7100;
/// How often each flow sends a message.
const TICK: Duration = Duration::from_millis(20);

/// `natgw.toml` of headnode `index` (0: the preferred primary).
pub fn config(index: usize, advert_interval: f64) -> String {
    let peer = HA_HEADS[1 - index].3;
    let priority = if index == 0 { 150 } else { 100 };
    format!(
        "public = \"wan0\"\nprivate = [\"lan0\"]\n[ha]\npeer = \"{peer}\"\nsync_interface = \"sync0\"\nvrid = 51\npriority = {priority}\nprivate_vip = \"{PRIVATE_GATEWAY}/24\"\npublic_vip = \"{HA_PUBLIC_VIP}/24\"\nadvert_interval = {advert_interval:.2}\npreempt_delay = 1\n"
    )
}

/// `natgw run` on one headnode, killed on drop.
pub struct Member {
    pub role: &'static str,
    child: Option<Child>,
    /// Its config file.
    pub config: PathBuf,
}

impl Member {
    pub fn start(
        lab: &Lab,
        index: usize,
        natgw: &Path,
        advert_interval: f64,
        log: Stdio,
    ) -> std::io::Result<Member> {
        let role = HA_HEADS[index].0;
        // A file per start: the member it replaces removes its own when dropped.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let config = std::env::temp_dir().join(format!("{}-{role}-{n}.toml", lab.name));
        std::fs::write(&config, self::config(index, advert_interval))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(role)])
            .arg(natgw)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Member {
            role,
            child: Some(child),
            config,
        })
    }

    /// SIGKILL: the process dies without a word (its daemons get SIGTERM from the
    /// kernel, PR_SET_PDEATHSIG).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGHUP: `natgw run` rereads its config (`ip netns exec` execs natgw, so the
    /// child is natgw itself).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGHUP);
            }
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Whether headnode `role` holds the private shared address now.
pub fn holds_vip(lab: &Lab, role: &str) -> bool {
    lab.ip(role, &["-4", "-o", "addr", "show", "dev", "lan0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {PRIVATE_GATEWAY}/")))
        .unwrap_or(false)
}

/// Waits until `role` holds the private shared address (or not); false on timeout.
pub fn wait_vip(lab: &Lab, role: &str, held: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if holds_vip(lab, role) == held {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Unplugs (or plugs back) headnode `role`'s private and public cables at the switches.
pub fn set_links(lab: &Lab, role: &str, up: bool) -> Result<(), NetnsError> {
    let state = if up { "up" } else { "down" };
    for switch in ["sw", "psw"] {
        lab.ip(switch, &["link", "set", &format!("p-{role}"), state])?;
    }
    Ok(())
}

/// The echo server on the public host: TCP and UDP, until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    pub fn start(lab: &Lab) -> Result<Echo, NetnsError> {
        let addr = SocketAddr::from((SERVER, ECHO_PORT));
        let (tcp, udp) = in_netns(&lab.ns("pub"), move || -> std::io::Result<_> {
            let tcp = TcpListener::bind(addr)?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(addr)?;
            udp.set_read_timeout(Some(TICK))?;
            Ok((tcp, udp))
        })?
        .map_err(|source| NetnsError::Enter {
            name: format!("pub (bind {addr})"),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((stream, _)) => {
                        let s = s1.clone();
                        conns.push(std::thread::spawn(move || echo_tcp(stream, &s)));
                    }
                    Err(_) => std::thread::sleep(TICK),
                }
            }
            conns.into_iter().for_each(|c| {
                let _ = c.join();
            });
        });
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        });
        Ok(Echo {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

/// Echoes what arrives; a connection that opens with `P` is pushed to instead: the
/// server sends every 20 ms and the client only acknowledges (after a failover only
/// the server's packets arrive, so only replicated state carries such a flow).
fn echo_tcp(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 256];
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if first {
            let mut one = [0u8; 1];
            if stream.peek(&mut one).is_ok_and(|n| n == 1) {
                first = false;
                if one[0] == b'P' {
                    let _ = stream.read(&mut one);
                    return push_tcp(stream, stop);
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn push_tcp(mut stream: TcpStream, stop: &AtomicBool) {
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if stream.write_all(&seq.to_be_bytes()).is_err() {
            return;
        }
        std::thread::sleep(TICK);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}

/// One flow's record: every successful round trip's time, and how it ended.
#[derive(Default)]
struct FlowLog {
    ok: Vec<Instant>,
    error: Option<String>,
}

/// Long-lived flows from the private nodes: `tcp` connections and one UDP stream,
/// each sending a small message every 20 ms and waiting for its echo.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tcp: Vec<Arc<Mutex<FlowLog>>>,
    udp: Arc<Mutex<FlowLog>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// `tcp` echo connections and `push` connections the server sends on (see
    /// `echo_tcp`), spread over the private nodes.
    pub fn start(lab: &Lab, tcp: usize, push: usize) -> Result<Traffic, String> {
        let server = SocketAddr::from((SERVER, ECHO_PORT));
        let nodes = lab.nodes();
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..tcp + push {
            let ns = lab.ns(&nodes[i % nodes.len()]);
            let pushed = i >= tcp;
            let stream = in_netns(&ns, move || {
                TcpStream::connect_timeout(&server, Duration::from_secs(3))
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connection {i} from {ns}: {e}"))?;
            let log = Arc::new(Mutex::new(FlowLog::default()));
            let (l, s) = (log.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                if pushed {
                    run_push(stream, &l, &s)
                } else {
                    run_tcp(stream, &l, &s)
                }
            }));
            logs.push(log);
        }
        let ns = lab.ns(&nodes[0]);
        let socket = in_netns(&ns, || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddr::from((SERVER, ECHO_PORT)))?;
            s.set_read_timeout(Some(TICK))?;
            Ok(s)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("UDP stream: {e}"))?;
        let udp = Arc::new(Mutex::new(FlowLog::default()));
        let (l, s) = (udp.clone(), stop.clone());
        threads.push(std::thread::spawn(move || run_udp(socket, &l, &s)));
        Ok(Traffic {
            stop,
            tcp: logs,
            udp,
            threads,
        })
    }

    /// TCP connections that have not failed and echoed since `since`.
    pub fn alive_since(&self, since: Instant) -> usize {
        self.tcp
            .iter()
            .filter(|l| {
                let l = l.lock().unwrap();
                l.error.is_none() && l.ok.last().is_some_and(|t| *t > since)
            })
            .count()
    }

    pub fn tcp_count(&self) -> usize {
        self.tcp.len()
    }

    /// The longest stop of echoes that began after `from`: the worst over the TCP
    /// connections that survived, and the UDP stream's.
    pub fn outage(&self, from: Instant) -> (f64, f64) {
        let gap = |l: &FlowLog| {
            l.ok.windows(2)
                .filter(|w| w[1] > from)
                .map(|w| w[1].duration_since(w[0].max(from)).as_secs_f64())
                .fold(0.0, f64::max)
        };
        let tcp = self
            .tcp
            .iter()
            .map(|l| l.lock().unwrap())
            .filter(|l| l.error.is_none())
            .map(|l| gap(&l))
            .fold(0.0, f64::max);
        let udp = gap(&self.udp.lock().unwrap());
        (tcp, udp)
    }

    /// Errors of the connections that failed.
    pub fn errors(&self) -> Vec<String> {
        self.tcp
            .iter()
            .filter_map(|l| l.lock().unwrap().error.clone())
            .collect()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}

fn run_tcp(mut stream: TcpStream, log: &Mutex<FlowLog>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut seq: u64 = 0;
    let mut pending = false;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 8];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        if !pending && Instant::now() >= next_send {
            seq += 1;
            if let Err(e) = stream.write_all(&seq.to_be_bytes()) {
                log.lock().unwrap().error = Some(format!("send: {e}"));
                return;
            }
            pending = true;
            next_send = Instant::now() + TICK;
        }
        match stream.read(&mut buf[have..]) {
            Ok(0) => {
                log.lock().unwrap().error = Some("closed by the peer".into());
                return;
            }
            Ok(n) => {
                have += n;
                if have == 8 {
                    have = 0;
                    if u64::from_be_bytes(buf) != seq {
                        log.lock().unwrap().error = Some("echo out of order".into());
                        return;
                    }
                    pending = false;
                    log.lock().unwrap().ok.push(Instant::now());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log.lock().unwrap().error = Some(format!("receive: {e}"));
                return;
            }
        }
    }
}

fn run_push(mut stream: TcpStream, log: &Mutex<FlowLog>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if let Err(e) = stream.write_all(b"P") {
        log.lock().unwrap().error = Some(format!("send: {e}"));
        return;
    }
    let mut buf = [0u8; 8];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf[have..]) {
            Ok(0) => {
                log.lock().unwrap().error = Some("closed by the peer".into());
                return;
            }
            Ok(n) => {
                have += n;
                if have == 8 {
                    have = 0;
                    log.lock().unwrap().ok.push(Instant::now());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log.lock().unwrap().error = Some(format!("receive: {e}"));
                return;
            }
        }
    }
}

fn run_udp(socket: UdpSocket, log: &Mutex<FlowLog>, stop: &AtomicBool) {
    let mut seq: u64 = 0;
    let mut buf = [0u8; 16];
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let _ = socket.send(&seq.to_be_bytes());
        let deadline = Instant::now() + TICK;
        while Instant::now() < deadline {
            if let Ok(8) = socket.recv(&mut buf) {
                log.lock().unwrap().ok.push(Instant::now());
            }
        }
    }
}

/// One failover measured.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// `link-down` (the primary's cables unplugged) or `process-kill` (its `natgw run`
    /// SIGKILLed).
    pub failure: &'static str,
    pub connections_before: usize,
    /// Of them, in the backup's conntrackd external cache just before the failure.
    pub replicated_before: usize,
    pub survived: usize,
    /// Worst stop of the surviving TCP connections' echoes, seconds.
    pub tcp_outage_s: f64,
    /// The UDP stream's longest stop, seconds.
    pub udp_outage_s: f64,
    /// Seconds until the backup held the shared address.
    pub takeover_s: f64,
    /// Whether the recovered primary took the address back with the connections alive.
    pub failback_survived: Option<usize>,
    pub failback_outage_s: Option<f64>,
}

/// Which way the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    LinkDown,
    ProcessKill,
}

/// Runs one failover (and failback) on a lab whose two members run, head primary.
/// `restart` starts head's `natgw run` again after a process kill.
pub fn failover(
    lab: &Lab,
    primary: &mut Member,
    failure: Failure,
    connections: usize,
    restart: &mut dyn FnMut() -> std::io::Result<Member>,
) -> Result<Round, String> {
    let _echo = Echo::start(lab).map_err(|e| e.to_string())?;
    // A quarter of them server-push: those survive only through replicated state.
    let push = connections / 4;
    let traffic = Traffic::start(lab, connections - push, push)?;
    // Let conntrackd replicate the established connections.
    std::thread::sleep(Duration::from_millis(1500));
    let before = traffic.alive_since(Instant::now() - Duration::from_millis(500));
    let replicated_before = replicated(lab, "head2")?;
    let failed_at = Instant::now();
    match failure {
        Failure::LinkDown => set_links(lab, "head", false).map_err(|e| e.to_string())?,
        Failure::ProcessKill => primary.kill(),
    }
    if !wait_vip(lab, "head2", true, Duration::from_secs(15)) {
        return Err("head2 never took the shared address over".into());
    }
    let takeover_s = failed_at.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(4));
    let check = Instant::now() - Duration::from_millis(500);
    let survived = traffic.alive_since(check);
    let (tcp_outage_s, udp_outage_s) = traffic.outage(failed_at);
    // Fail back: head returns, resyncs, and takes over after its preempt delay.
    match failure {
        Failure::LinkDown => set_links(lab, "head", true).map_err(|e| e.to_string())?,
        Failure::ProcessKill => *primary = restart().map_err(|e| e.to_string())?,
    }
    let back_at = Instant::now();
    let (failback_survived, failback_outage_s) =
        if wait_vip(lab, "head", true, Duration::from_secs(20)) {
            std::thread::sleep(Duration::from_secs(3));
            let alive = traffic.alive_since(Instant::now() - Duration::from_millis(500));
            (Some(alive), Some(traffic.outage(back_at).0))
        } else {
            (None, None)
        };
    Ok(Round {
        failure: match failure {
            Failure::LinkDown => "link-down",
            Failure::ProcessKill => "process-kill",
        },
        connections_before: before,
        replicated_before,
        survived,
        tcp_outage_s,
        udp_outage_s,
        takeover_s,
        failback_survived,
        failback_outage_s,
    })
}

/// How many connections to the echo service conntrackd on `role` holds in its external
/// cache (replicated from the peer): the proof that state is synchronised, not merely
/// picked up again after a failover.
pub fn replicated(lab: &Lab, role: &str) -> Result<usize, String> {
    let dir = in_netns(&lab.ns(role), natgw_linux::state_store::ha_dir)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(role), "conntrackd", "-C"])
        .arg(dir.join("conntrackd.conf"))
        .arg("-e")
        .output()
        .map_err(|e| format!("conntrackd -e: {e}"))?;
    let port = format!("dport={ECHO_PORT} ");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ESTABLISHED") && l.contains(&port))
        .count())
}
