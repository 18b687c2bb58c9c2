//! Tiny TCP and UDP services for proving connectivity: the server answers each client
//! with the source address it saw (`peer=IP:PORT`), which is how a test learns what the
//! outside world sees of a private node.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{in_netns, NetnsError};

const POLL: Duration = Duration::from_millis(20);

/// A TCP + UDP "who am I" server running in a namespace until dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr` (TCP and UDP, same port) inside namespace `ns`.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Listener, NetnsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = in_netns(ns, move || -> std::io::Result<(TcpListener, UdpSocket)> {
            let tcp = TcpListener::bind(addr)?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(addr)?;
            udp.set_read_timeout(Some(POLL))?;
            Ok((tcp, udp))
        })?
        .map_err(|source| NetnsError::Enter {
            name: format!("{ns} (bind {addr})"),
            source,
        })?;
        let (tcp, udp) = sockets;
        let tcp_stop = stop.clone();
        let udp_stop = stop.clone();
        let threads = vec![
            std::thread::spawn(move || serve_tcp(tcp, &tcp_stop)),
            std::thread::spawn(move || serve_udp(udp, &udp_stop)),
        ];
        Ok(Listener { stop, threads })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve_udp(socket: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("peer={peer}\n").as_bytes(), peer);
        }
    }
}

/// Connects from namespace `ns` to a `Listener` and returns the source address the
/// server saw, or the error (refused, timed out, ...).
pub fn tcp_exchange(ns: &str, server: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    in_netns(ns, move || -> Result<SocketAddr, String> {
        let stream = TcpStream::connect_timeout(&server, timeout)
            .map_err(|e| format!("connect {server}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| format!("read from {server}: {e}"))?;
        parse_peer(&line)
    })
    .map_err(|e| e.to_string())?
}

/// Sends one datagram from namespace `ns` and returns the source address the server saw.
pub fn udp_exchange(ns: &str, server: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    in_netns(ns, move || -> Result<SocketAddr, String> {
        let any: SocketAddr = match server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        socket
            .send_to(b"who am i", server)
            .map_err(|e| format!("send to {server}: {e}"))?;
        let mut buf = [0u8; 1500];
        let (n, _) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("no reply from {server}: {e}"))?;
        parse_peer(&String::from_utf8_lossy(&buf[..n]))
    })
    .map_err(|e| e.to_string())?
}

fn parse_peer(line: &str) -> Result<SocketAddr, String> {
    line.trim()
        .strip_prefix("peer=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("unexpected answer {line:?}"))
}
