//! What the server did with every datagram and connection, by reason.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Over the per-source token bucket.
    RateLimited,
    /// The table of sources is full of active ones.
    SourcesFull,
    /// Longer than any STUN request natgw answers (or cut by the receive buffer).
    Oversized,
    /// Not a well-formed STUN message.
    Malformed,
    /// A STUN message, but not a Binding request.
    NotARequest,
    /// RESPONSE-PORT to a port natgw never sends to (below 1024), or over TCP.
    ResponsePortRefused,
    /// RESPONSE-PORT over its own, tighter, per-source limit.
    ResponsePortLimited,
    /// RESPONSE-ADDRESS (RFC 3489): natgw never sends to a third party.
    ResponseAddressRefused,
}

/// Counters, shared by all of the server's threads.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    /// Error responses (420, 400) among `answered`.
    pub errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sources_full: AtomicU64,
    pub oversized: AtomicU64,
    pub malformed: AtomicU64,
    pub not_a_request: AtomicU64,
    pub response_port_refused: AtomicU64,
    pub response_port_limited: AtomicU64,
    pub response_address_refused: AtomicU64,
    pub tcp_accepted: AtomicU64,
    /// Connections closed at once: over the per-source or total connection limit.
    pub tcp_refused: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub received: u64,
    pub answered: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub sources_full: u64,
    pub oversized: u64,
    pub malformed: u64,
    pub not_a_request: u64,
    pub response_port_refused: u64,
    pub response_port_limited: u64,
    pub response_address_refused: u64,
    pub tcp_accepted: u64,
    pub tcp_refused: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn received(&self) {
        bump(&self.received);
    }

    pub fn answered(&self, error: bool) {
        bump(&self.answered);
        if error {
            bump(&self.errors);
        }
    }

    pub fn dropped(&self, why: Dropped) {
        bump(match why {
            Dropped::RateLimited => &self.rate_limited,
            Dropped::SourcesFull => &self.sources_full,
            Dropped::Oversized => &self.oversized,
            Dropped::Malformed => &self.malformed,
            Dropped::NotARequest => &self.not_a_request,
            Dropped::ResponsePortRefused => &self.response_port_refused,
            Dropped::ResponsePortLimited => &self.response_port_limited,
            Dropped::ResponseAddressRefused => &self.response_address_refused,
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: get(&self.received),
            answered: get(&self.answered),
            errors: get(&self.errors),
            rate_limited: get(&self.rate_limited),
            sources_full: get(&self.sources_full),
            oversized: get(&self.oversized),
            malformed: get(&self.malformed),
            not_a_request: get(&self.not_a_request),
            response_port_refused: get(&self.response_port_refused),
            response_port_limited: get(&self.response_port_limited),
            response_address_refused: get(&self.response_address_refused),
            tcp_accepted: get(&self.tcp_accepted),
            tcp_refused: get(&self.tcp_refused),
        }
    }
}

impl Snapshot {
    /// Every counter by name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("received", self.received),
            ("answered", self.answered),
            ("errors", self.errors),
            ("rate_limited", self.rate_limited),
            ("sources_full", self.sources_full),
            ("oversized", self.oversized),
            ("malformed", self.malformed),
            ("not_a_request", self.not_a_request),
            ("response_port_refused", self.response_port_refused),
            ("response_port_limited", self.response_port_limited),
            ("response_address_refused", self.response_address_refused),
            ("tcp_accepted", self.tcp_accepted),
            ("tcp_refused", self.tcp_refused),
        ]
    }
}

impl std::fmt::Display for Snapshot {
    /// One line, `name=value` pairs, for logs and scripts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}", pairs.join(" "))
    }
}
