//! STUN over TCP (RFC 5389 7.2.2): one thread per connection, messages framed by their own
//! length field, connections bounded in number (in all and per source) and closed when
//! silent for `tcp_idle_secs` or as soon as they send anything natgw would drop.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reply::{Transport, MAX_REQUEST};
use super::{handle, ServerError, Shared};
use crate::wire::HEADER_LEN;

/// How often blocked reads and accepts look at the stop flag and the clocks.
const TICK: Duration = Duration::from_millis(100);

pub(super) fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let error = |source| ServerError { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    socket.listen(64).map_err(error)?;
    // Linux applies the receive timeout to accept(), so the loop sees the stop flag.
    socket.set_read_timeout(Some(TICK)).map_err(error)?;
    Ok(socket.into())
}

/// Open connections per source address.
#[derive(Debug, Default)]
pub(super) struct Connections(Mutex<HashMap<IpAddr, usize>>);

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    connections: Arc<Connections>,
    source: IpAddr,
}

impl Connections {
    fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        total: usize,
        per_source: usize,
    ) -> Option<Admitted> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = open.values().sum();
        let mine = open.get(&source).copied().unwrap_or(0);
        if all >= total || mine >= per_source {
            return None;
        }
        open.insert(source, mine + 1);
        Some(Admitted {
            connections: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

pub(super) fn serve(shared: Arc<Shared>, listener: TcpListener, local: SocketAddr) {
    let limits = shared.config.limits;
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        let Some(place) =
            shared
                .connections
                .admit(peer.ip(), limits.tcp_connections, limits.tcp_per_source)
        else {
            shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        shared.stats.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _place = place;
            let _ = connection(&shared, stream, peer, local);
        });
    }
}

/// Serves one connection until it is silent too long, misbehaves, or closes.
fn connection(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TICK))?;
    stream.set_nodelay(true)?;
    let idle = Duration::from_secs(shared.config.limits.tcp_idle_secs);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_REQUEST);
    let mut chunk = [0u8; 2048];
    let mut last_heard = Instant::now();
    let mut push: Option<(Instant, Vec<u8>)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if push.as_ref().is_some_and(|(at, _)| Instant::now() >= *at) {
            let (_, bytes) = push.take().expect("checked");
            stream.write_all(&bytes)?;
        }
        if last_heard.elapsed() >= idle {
            return Ok(());
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        };
        last_heard = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = framed_length(&buf) {
            if buf.len() < len {
                break;
            }
            shared.stats.received();
            match handle(shared, &buf[..len], peer, local, Transport::Tcp) {
                Ok(reply) => {
                    stream.write_all(&reply.bytes)?;
                    shared.stats.answered(reply.error);
                    if let Some(secs) = reply.push_after {
                        let at = Instant::now() + Duration::from_secs(u64::from(secs));
                        push = Some((at, reply.bytes));
                    }
                }
                // Anything dropped ends the connection: the stream cannot be trusted
                // to be in step, and a limited source gets no free ride on it.
                Err(why) => {
                    shared.stats.dropped(why);
                    return Ok(());
                }
            }
            buf.drain(..len);
        }
        if buf.len() >= HEADER_LEN && framed_length(&buf).is_none() {
            shared.stats.received();
            shared.stats.dropped(if buf[0] & 0xc0 != 0 {
                super::stats::Dropped::Malformed
            } else {
                super::stats::Dropped::Oversized
            });
            return Ok(());
        }
    }
    Ok(())
}

/// The whole length of the message that starts `buf`, once its header is in and it is
/// a STUN header within the size natgw answers.
fn framed_length(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    if header[0] & 0xc0 != 0 {
        return None;
    }
    let len = HEADER_LEN + usize::from(u16::from_be_bytes([header[2], header[3]]));
    (len <= MAX_REQUEST).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_takes_the_length_from_the_header_and_refuses_the_oversized() {
        let mut header = vec![0u8; HEADER_LEN];
        assert_eq!(framed_length(&header[..10]), None);
        header[3] = 8;
        assert_eq!(framed_length(&header), Some(28));
        header[2] = 0xff;
        assert_eq!(framed_length(&header), None);
        header[2] = 0;
        header[0] = 0x80;
        assert_eq!(framed_length(&header), None);
    }

    #[test]
    fn connections_are_bounded_in_all_and_per_source() {
        let c = Arc::new(Connections::default());
        let (a, b) = (
            IpAddr::from([203, 0, 113, 1]),
            IpAddr::from([203, 0, 113, 2]),
        );
        let first = c.admit(a, 3, 2).unwrap();
        let _second = c.admit(a, 3, 2).unwrap();
        assert!(c.admit(a, 3, 2).is_none(), "per source");
        let _third = c.admit(b, 3, 2).unwrap();
        assert!(c.admit(b, 3, 2).is_none(), "in all");
        drop(first);
        assert!(
            c.admit(b, 3, 2).is_some(),
            "a closed connection frees its place"
        );
    }
}
