//! Helpers shared by the end-to-end test binaries: labs with unique names, running the
//! natgw binary inside a lab namespace, and snapshots of what natgw may touch.
//!
//! `NATGW_E2E_BIN=/path/to/natgw` runs the scenarios against another build (for
//! example the code before a fix, to see a scenario fail there).
#![allow(dead_code)]

mod plane;
#[allow(unused_imports)]
pub use plane::*;

use std::io::Write;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use natgw_lab::{tcp_exchange, udp_exchange, Lab, Spec, SERVER};

pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: end-to-end tests must run as root under CI");
    }
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: end-to-end tests need root (run the suite with sudo)"
    );
    false
}

/// The lab for one test, or `None` (with the skip message) without root.
pub fn lab_or_skip(test: &str, spec: Spec) -> Option<Lab> {
    root_or_skip(test).then(|| lab(spec))
}

/// A lab with a name unique to this test process and call.
pub fn lab(spec: Spec) -> Lab {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "ngwp{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Lab::build(&name, spec).expect("build lab")
}

pub fn binary() -> String {
    std::env::var("NATGW_E2E_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_natgw").to_string())
}

/// `ip netns exec NS natgw ARGS` with extra environment, not yet started.
pub fn natgw_command(lab: &Lab, role: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &lab.ns(role), &binary()])
        .args(args)
        .envs(env.iter().copied());
    command
}

pub fn natgw_env(lab: &Lab, role: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    natgw_command(lab, role, args, env)
        .output()
        .expect("run natgw")
}

pub fn natgw(lab: &Lab, args: &[&str]) -> Output {
    natgw_env(lab, "head", args, &[])
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command inside a lab namespace and returns its stdout; it must succeed.
pub fn in_ns(lab: &Lab, role: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(role)])
        .args(args)
        .output()
        .expect("run command in namespace");
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A second private network on the headnode: interface `name` (a veth whose peer
/// stays in the headnode, up) with the gateway address `cidr`.
pub fn add_private_network(lab: &Lab, name: &str, cidr: &str) {
    let peer = format!("{name}p");
    lab.ip(
        "head",
        &["link", "add", name, "type", "veth", "peer", "name", &peer],
    )
    .unwrap();
    lab.ip("head", &["addr", "add", cidr, "dev", name]).unwrap();
    lab.ip("head", &["link", "set", name, "up"]).unwrap();
    lab.ip("head", &["link", "set", &peer, "up"]).unwrap();
}

/// coturn's STUN server on the public host's two addresses, as the interop tests use it,
/// given a moment to bind.
pub fn coturn(lab: &Lab) -> Background {
    let server = spawn_in(
        lab,
        "pub",
        "turnserver",
        &[
            "--stun-only",
            "-L",
            "198.51.100.10",
            "-L",
            "198.51.100.11",
            "--no-cli",
            "-n",
            "--log-file",
            "stdout",
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    server
}

/// Pastes a printed doctor fix into a shell on the headnode, whole, as an admin would:
/// the prose lines are comments, and every command must succeed.
pub fn paste_fix(lab: &Lab, fix: &str) {
    in_ns(lab, "head", &["sh", "-e", "-c", fix]);
}

/// natgw's record of the headnode namespace, resolved there as natgw resolves it.
pub fn state_path(lab: &Lab) -> std::path::PathBuf {
    natgw_lab::in_netns(&lab.ns("head"), || {
        natgw_linux::state_store::path().unwrap()
    })
    .unwrap()
}

/// Everything natgw may touch in the headnode: the whole ruleset, the routes, the
/// forwarding sysctl, whether natgw's record exists and what it pinned (eBPF plane).
pub fn headnode_snapshot(lab: &Lab) -> String {
    let ruleset = in_ns(lab, "head", &["nft", "list", "ruleset"]);
    let routes = String::from_utf8_lossy(
        &lab.ip("head", &["-4", "route", "show", "table", "all"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    let forward = lab.read_sysctl("head", "net.ipv4.ip_forward").unwrap();
    let state = state_path(lab).exists();
    let pinned = pinned(lab);
    format!("{ruleset}\n{routes}\nip_forward={forward}\npinned={pinned:?}\nstate={state}")
}

/// The packet count of one of natgw's named counters in the headnode.
pub fn nft_counter(lab: &Lab, name: &str) -> u64 {
    let text = in_ns(
        lab,
        "head",
        &["nft", "list", "counter", "inet", "natgw", name],
    );
    // The line `packets N bytes M` (a comment may say "packets" too).
    text.lines()
        .find_map(|l| l.trim().strip_prefix("packets "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {text}"))
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// A scratch directory unique to the lab, removed by the caller.
pub fn scratch(lab: &Lab, what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-{what}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lab's public "who am I" server (start a `Listener` on it in `pub`).
pub fn server() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER), 7000)
}

/// TCP and UDP from `node` reach the public server, which sees them from `expect`.
#[track_caller]
pub fn assert_translated(lab: &Lab, node: &str, expect: IpAddr) {
    let timeout = Duration::from_secs(2);
    let ns = lab.ns(node);
    let tcp = tcp_exchange(&ns, server(), timeout).unwrap_or_else(|e| panic!("{node} TCP: {e}"));
    assert_eq!(tcp.ip(), expect, "{node}: server saw TCP from {tcp}");
    let udp = udp_exchange(&ns, server(), timeout).unwrap_or_else(|e| panic!("{node} UDP: {e}"));
    assert_eq!(udp.ip(), expect, "{node}: server saw UDP from {udp}");
}

pub fn doctor(lab: &Lab, args: &[&str]) -> (Output, serde_json::Value) {
    let mut full = vec!["doctor", "--json"];
    full.extend_from_slice(args);
    let out = natgw(lab, &full);
    let report = json(&out);
    (out, report)
}

/// `doctor` exits 0 and its check `id` passes.
#[track_caller]
pub fn assert_doctor_passes(lab: &Lab, id: &str) {
    let (out, report) = doctor(lab, &[]);
    assert_exit(&out, 0);
    assert_eq!(check(&report, id)["status"], "pass", "{report}");
}

/// Status of check `id` (the first finding with that id).
pub fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no {id}: {report}"))
}

pub fn fails(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// `natgw run` in the headnode (or another natgw command in a lab namespace), stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Service {
    child: Child,
    log: std::path::PathBuf,
}

impl Service {
    pub fn start(lab: &Lab, args: &[&str]) -> Service {
        Service::start_env(lab, args, &[])
    }

    /// `natgw run ARGS` with extra environment (test hooks).
    pub fn start_env(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        Service::spawn(lab, "head", &full, false, env)
    }

    /// `natgw ARGS` in the namespace of `role`, with stdout and stderr in its log.
    pub fn natgw_in(lab: &Lab, role: &str, args: &[&str]) -> Service {
        Service::spawn(lab, role, args, true, &[])
    }

    fn spawn(
        lab: &Lab,
        role: &str,
        args: &[&str],
        with_stdout: bool,
        env: &[(&str, &str)],
    ) -> Service {
        let log = scratch(lab, "run").join(format!("{}-{}.log", args[0], rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let stdout = if with_stdout {
            Stdio::from(file.try_clone().unwrap())
        } else {
            Stdio::null()
        };
        let child = natgw_command(lab, role, args, env)
            .process_group(0)
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap();
        Service { child, log }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// SIGTERM and the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, the exit code and everything logged up to the end.
    pub fn stop_with_log(self) -> (Option<i32>, String) {
        let log = self.log.clone();
        let code = self.stop();
        (code, std::fs::read_to_string(log).unwrap_or_default())
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.running() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// An `nft` that logs each call to `log` and sleeps `delay` seconds before running
/// the real one: slow enough to collide with, or to be killed in the middle of.
pub fn slow_nft(dir: &std::path::Path, delay: &str) -> (String, std::path::PathBuf) {
    let log = dir.join("calls.log");
    let wrapper = dir.join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nsleep {delay}\nexec /usr/sbin/nft \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper.to_str().unwrap().to_string(), log)
}

pub fn calls(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

/// A process started in a lab namespace, killed when dropped.
pub struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_in(lab: &Lab, role: &str, program: &str, args: &[&str]) -> Background {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns(role), program])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn in namespace");
    // Give it time to bind its sockets.
    std::thread::sleep(Duration::from_millis(400));
    Background(child)
}

/// `natgw probe --json ARGS` in the namespace of `role`.
pub fn probe_json(lab: &Lab, role: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let mut full = vec!["probe", "--json"];
    full.extend_from_slice(args);
    let out = natgw_env(lab, role, &full, &[]);
    let report = json(&out);
    (out, report)
}

/// A foreign nftables table (not natgw's) whose NAT chain runs before natgw's and
/// source-translates the headnode's outgoing `l4proto` (udp, tcp) with `translation`.
pub fn foreign_snat(lab: &Lab, table: &str, l4proto: &str, translation: &str) {
    in_ns(lab, "head", &["nft", "add", "table", "ip", table]);
    let hook = "{ type nat hook postrouting priority 50; }";
    in_ns(
        lab,
        "head",
        &["nft", "add", "chain", "ip", table, "post", hook],
    );
    let mut rule = vec![
        "nft", "add", "rule", "ip", table, "post", "oifname", "wan0", "meta", "l4proto", l4proto,
        "snat", "to",
    ];
    rule.extend(translation.split_whitespace());
    in_ns(lab, "head", &rule);
}

/// natgw's STUN server (RFC 5780: two addresses) on the lab's public server.
/// The classic RFC 3489 client's verdict line ("Primary: ...") from `role` against the
/// lab's STUN server at 198.51.100.10.
pub fn classic_client(lab: &Lab, role: &str) -> String {
    // `stun` exits with a bit mask of its findings, not 0: only its output matters.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns(role)])
        .args(["timeout", "20", "stun", "198.51.100.10"])
        .output()
        .expect("run the classic client (Debian package stun-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("Primary:"))
        .unwrap_or_else(|| panic!("no verdict from stun: {}", self::text(&out)))
        .trim()
        .to_string()
}

pub fn natgw_stun_server(lab: &Lab) -> Background {
    spawn_in(
        lab,
        "pub",
        env!("CARGO_BIN_EXE_natgw"),
        &[
            "stun-server",
            "--listen",
            "198.51.100.10",
            "--alt",
            "198.51.100.11",
        ],
    )
}

/// The bpffs where natgw pins the eBPF data plane, mounted in this (the host's) mount
/// namespace: each `ip netns exec` gets a mount namespace of its own, and a bpffs that
/// natgw mounted in there would end with it, taking the pinned programs along.
pub fn host_bpffs() {
    let path = std::path::Path::new("/run/natgw/bpffs");
    let is_bpffs = || {
        Command::new("stat")
            .args(["-f", "-c", "%T", "/run/natgw/bpffs"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
    };
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if is_bpffs() {
        return;
    }
    std::fs::create_dir_all(path).unwrap();
    let out = Command::new("mount")
        .args(["-t", "bpf", "-o", "mode=0700", "bpf", "/run/natgw/bpffs"])
        .output()
        .unwrap();
    assert!(
        out.status.success() || is_bpffs(),
        "mount bpffs: {}",
        text(&out)
    );
}

/// Where the tests' `natgw run --metrics-listen` listens (inside the headnode namespace).
pub const METRICS: &str = "127.0.0.1:9469";

/// One HTTP GET inside the headnode namespace: (status line, body).
pub fn http_get(lab: &Lab, path: &str) -> Option<(String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: natgw\r\n\r\n");
    natgw_lab::in_netns(&lab.ns("head"), move || {
        let mut s = std::net::TcpStream::connect(METRICS).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    })
    .unwrap()
}

/// The scrape as `series → value` (`name{labels}` exactly as served).
pub fn scrape(lab: &Lab) -> (String, std::collections::BTreeMap<String, f64>) {
    let (status, body) = http_get(lab, "/metrics").expect("scrape /metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect();
    (body, series)
}

/// The flows of a node's steady UDP stream: one datagram per 100 µs, sent in turn from
/// each of `flows` sockets; every `renew` datagrams the oldest socket is replaced by a
/// new one (a new source port, so a new flow for the gateway).
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub flows: usize,
    pub renew: u64,
}

impl Stream {
    /// One flow all along.
    pub const ONE_FLOW: Stream = Stream {
        flows: 1,
        renew: u64::MAX,
    };
    /// Every datagram a new flow.
    pub const NEW_FLOWS: Stream = Stream { flows: 1, renew: 1 };
    /// A new flow every millisecond, each living for 8 ms: flows that start during a
    /// change and go on after it.
    pub const OVERLAPPING: Stream = Stream {
        flows: 8,
        renew: 10,
    };
}

/// What node n1's `stream` to the public side looks like there while `during` runs:
/// datagrams seen with a private source, with any other source, and sent.
pub fn steady_stream(lab: &Lab, stream: Stream, during: impl FnOnce()) -> (u64, u64, u64) {
    use std::net::UdpSocket;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let sink = SocketAddr::new(IpAddr::V4(SERVER), 7100);
    let stop = Arc::new(AtomicBool::new(false));
    // The public side tallies the sources it sees.
    let receiver = {
        let stop = stop.clone();
        let socket =
            natgw_lab::in_netns(&lab.ns("pub"), move || UdpSocket::bind(sink).unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let (mut private, mut public) = (0u64, 0u64);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    match from.ip() {
                        IpAddr::V4(a) if a.is_private() => private += 1,
                        _ => public += 1,
                    }
                }
            }
            (private, public)
        })
    };
    let sender = {
        let stop = stop.clone();
        let ns = lab.ns("n1");
        std::thread::spawn(move || {
            natgw_lab::in_netns(&ns, move || {
                let open = || UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut sockets: Vec<UdpSocket> = (0..stream.flows).map(|_| open()).collect();
                let (mut tries, mut sent, mut oldest) = (0u64, 0u64, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let turn = (tries % stream.flows as u64) as usize;
                    if tries > 0 && tries % stream.renew == 0 {
                        sockets[oldest] = open();
                        oldest = (oldest + 1) % stream.flows;
                    }
                    tries += 1;
                    if sockets[turn].send_to(b"steady", sink).is_ok() {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                sent
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let (private, public) = receiver.join().unwrap();
    (private, public, sent)
}
