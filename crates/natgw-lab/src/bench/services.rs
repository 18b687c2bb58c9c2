//! The far side's services for the benchmark, each running in a namespace until dropped:
//! a server that answers each TCP connection with one byte and closes it (connections
//! per second), one that keeps connections open (flows that stay), a sink that counts
//! bytes (throughput), and a UDP echo that answers until told to be quiet (so flows
//! count as established, then cost the server nothing).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{in_netns, NetnsError};

const POLL: Duration = Duration::from_millis(50);

/// What a TCP server does with each connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRole {
    /// Write one byte and close (the server closes first, so TIME_WAIT stays here).
    AnswerAndClose,
    /// Keep the connection open until the server is dropped.
    Hold,
    /// Read and count everything.
    Sink,
}

/// A TCP server in a namespace; stops (and closes everything) when dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    /// Bytes received (`Sink`).
    pub bytes: Arc<AtomicU64>,
}

impl TcpServer {
    /// Listens on `addr` in `ns` with `acceptors` accepting threads.
    pub fn start(
        ns: &str,
        addr: SocketAddr,
        role: TcpRole,
        acceptors: usize,
    ) -> Result<TcpServer, NetnsError> {
        // Non-blocking: several acceptors wake for one connection, and only one gets it.
        let listener = in_netns(ns, move || -> io::Result<TcpListener> {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?
        .map_err(|source| NetnsError::Enter {
            name: format!("{ns} (listen on {addr})"),
            source,
        })?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..acceptors.max(1))
            .map(|_| {
                let (listener, stop, accepted, bytes, held) = (
                    listener.clone(),
                    stop.clone(),
                    accepted.clone(),
                    bytes.clone(),
                    held.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !readable(listener.as_raw_fd(), POLL) {
                            continue;
                        }
                        let Ok((stream, _)) = listener.accept() else {
                            continue;
                        };
                        let _ = stream.set_nonblocking(false);
                        accepted.fetch_add(1, Ordering::Relaxed);
                        match role {
                            TcpRole::AnswerAndClose => {
                                let _ = (&stream).write_all(b"!");
                            }
                            TcpRole::Hold => held.lock().unwrap().push(stream),
                            TcpRole::Sink => {
                                let (stop, bytes) = (stop.clone(), bytes.clone());
                                std::thread::spawn(move || sink(stream, &stop, &bytes));
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(TcpServer {
            stop,
            threads,
            accepted,
            bytes,
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn sink(mut stream: TcpStream, stop: &AtomicBool, bytes: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) > 0 }
}

/// A UDP echo in a namespace: answers every datagram until `quiet`, then leaves them
/// unread (the socket stays bound, so the server sends no ICMP errors back).
pub struct UdpEcho {
    echoing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _socket: Arc<UdpSocket>,
    /// Datagrams answered.
    pub answered: Arc<AtomicU64>,
}

impl UdpEcho {
    pub fn start(ns: &str, addr: SocketAddr) -> Result<UdpEcho, NetnsError> {
        let socket = in_netns(ns, move || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(socket)
        })?
        .map_err(|source| NetnsError::Enter {
            name: format!("{ns} (bind {addr})"),
            source,
        })?;
        let socket = Arc::new(socket);
        let echoing = Arc::new(AtomicBool::new(true));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = {
            let (socket, echoing, answered) = (socket.clone(), echoing.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while echoing.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                        if socket.send_to(&buf[..n], peer).is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Ok(UdpEcho {
            echoing,
            thread: Some(thread),
            _socket: socket,
            answered,
        })
    }

    /// Stops answering; what arrives from now on is dropped at the full socket.
    pub fn quiet(&mut self) {
        self.echoing.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.quiet();
    }
}

/// Outcome of a connections-per-second run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectCount {
    pub completed: u64,
    pub failed: u64,
}

/// From `ns`, `threads` clients connect to `server`, read its byte and close, over and
/// over for `duration`; a connect or read that fails or takes over `timeout` is a failure.
pub fn connect_loop(
    ns: &str,
    server: SocketAddr,
    threads: usize,
    duration: Duration,
    timeout: Duration,
) -> Result<ConnectCount, NetnsError> {
    let workers: Vec<JoinHandle<ConnectCount>> = (0..threads.max(1))
        .map(|_| {
            let ns = ns.to_string();
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let deadline = std::time::Instant::now() + duration;
                    let mut count = ConnectCount::default();
                    while std::time::Instant::now() < deadline {
                        if connect_once(server, timeout).is_ok() {
                            count.completed += 1;
                        } else {
                            count.failed += 1;
                        }
                    }
                    count
                })
                .unwrap_or_default()
            })
        })
        .collect();
    let mut total = ConnectCount::default();
    for w in workers {
        let c = w.join().expect("client thread panicked");
        total.completed += c.completed;
        total.failed += c.failed;
    }
    Ok(total)
}

fn connect_once(server: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)
}

/// Opens `count` TCP connections from `ns` to `server` and returns them (kept open by
/// the caller); fails at the first connection that cannot be made.
pub fn open_connections(
    ns: &str,
    server: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<io::Result<Vec<TcpStream>>, NetnsError> {
    in_netns(ns, move || {
        (0..count)
            .map(|_| TcpStream::connect_timeout(&server, timeout))
            .collect()
    })
}

/// From `ns`, `streams` connections to `server` each write as fast as they can until
/// `stop`.
pub fn bulk_senders(
    ns: &str,
    server: SocketAddr,
    streams: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, NetnsError> {
    let connections = in_netns(ns, move || -> io::Result<Vec<TcpStream>> {
        (0..streams)
            .map(|_| TcpStream::connect_timeout(&server, Duration::from_secs(2)))
            .collect()
    })?
    .map_err(|source| NetnsError::Enter {
        name: format!("{ns} (connect to {server})"),
        source,
    })?;
    Ok(connections
        .into_iter()
        .map(|mut stream| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _ = stream.set_write_timeout(Some(POLL));
                let buf = vec![0x5au8; 128 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = stream.write(&buf) {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) {
                            return;
                        }
                    }
                }
            })
        })
        .collect())
}
