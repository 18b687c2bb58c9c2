//! The metrics listener: a minimal, read-only HTTP/1.x server for `GET /metrics` and
//! `GET /healthz`. Local users can connect (threat model), so every connection is
//! bounded: a few at once (more are closed unanswered), a request head of at most
//! 8 KiB read within 5 s, one request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Sources;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 4;
/// The request line and headers; anything longer is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// Time to send the whole request head.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves it on a thread of its own for the life of the process.
/// Binding happens before return, so a taken port is an error at start.
pub fn serve(addr: SocketAddr, sources: Sources) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr().context("metrics listener address")?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let (active, sources) = (active.clone(), sources.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, &sources);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The closure (and its decrement) never ran.
                    tracing::warn!("cannot start a thread for a metrics connection");
                }
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(bound)
}

fn handle(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (status, content_type, body) = match read_head(&mut stream)? {
        Some(head) => respond(&head, sources),
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// The request head, `None` when it exceeds `MAX_REQUEST`; a client that is too slow
/// gets a timeout error.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn respond(head: &str, sources: &Sources) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", super::CONTENT_TYPE, super::render(sources)),
        ("GET", "/healthz") => {
            if sources.figures.verified.load(Ordering::Relaxed) {
                (
                    "200 OK",
                    "text/plain",
                    "ok: the gateway is in place\n".into(),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "degraded: the last reconcile did not verify the gateway\n".into(),
                )
            }
        }
        (_, "/metrics" | "/healthz") => {
            ("405 Method Not Allowed", "text/plain", "only GET\n".into())
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DaemonFigures;
    use std::sync::Mutex;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn health_follows_verification_and_bad_requests_are_refused() {
        let figures = Arc::new(DaemonFigures::default());
        let sources = Sources {
            figures: figures.clone(),
            view: Arc::new(Mutex::new(Default::default())),
        };
        let addr = serve("127.0.0.1:0".parse().unwrap(), sources).unwrap();
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
        figures.verified.store(true, Ordering::Relaxed);
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, b"GET /etc/passwd HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(get(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
        let metrics = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("natgw_gateway_verified 1"), "{metrics}");
    }

    #[test]
    fn idle_connections_beyond_the_limit_are_closed() {
        let sources = Sources {
            figures: Arc::new(DaemonFigures::default()),
            view: Arc::new(Mutex::new(Default::default())),
        };
        let addr = serve("127.0.0.1:0".parse().unwrap(), sources).unwrap();
        // Hold every slot with a connection that sends nothing.
        let _idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        let n = extra.read_to_end(&mut out);
        assert!(
            matches!(n, Ok(0)) || n.is_err(),
            "answered over the limit: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}
