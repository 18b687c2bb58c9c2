//! Per-source token buckets: one source address cannot take more than its share of the
//! server, whatever it sends. Time enters as an argument, so the arithmetic is tested
//! without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_sec` requests per second with a burst of twice that (at least 10), so one
    /// RFC 5780 discovery run with its retransmissions passes untouched.
    pub fn per_second(per_sec: u32) -> Rate {
        let per_sec = f64::from(per_sec);
        Rate {
            per_sec,
            burst: (2.0 * per_sec).max(10.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited,
    /// The table of sources is full of active ones; a new source waits.
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by source address, bounded in number.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    max_sources: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    /// When the full table was last swept, so a flood of new (spoofed) sources costs
    /// one sweep per `SWEEP_EVERY`, not one per packet.
    swept: Option<Instant>,
}

const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Limiter {
    pub fn new(rate: Rate, max_sources: usize) -> Limiter {
        Limiter {
            rate,
            max_sources,
            table: Mutex::new(Table::default()),
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.rate.per_sec).min(self.rate.burst)
    }

    /// Takes one token for `source` at `now`.
    pub fn allow(&self, source: IpAddr, now: Instant) -> Verdict {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let burst = self.rate.burst;
        if !table.buckets.contains_key(&source) && table.buckets.len() >= self.max_sources {
            if table
                .swept
                .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
            {
                return Verdict::TableFull;
            }
            // A full bucket is the same as no bucket: forget those sources.
            table.swept = Some(now);
            table.buckets.retain(|_, b| self.refilled(b, now) < burst);
            if table.buckets.len() >= self.max_sources {
                return Verdict::TableFull;
            }
        }
        let bucket = table.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Verdict::Allowed
        } else {
            *bucket = Bucket { tokens, at: now };
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, last])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = Limiter::new(
            Rate {
                per_sec: 10.0,
                burst: 5.0,
            },
            16,
        );
        let t0 = Instant::now();
        let allowed = (0..20)
            .filter(|_| limiter.allow(ip(1), t0) == Verdict::Allowed)
            .count();
        assert_eq!(allowed, 5);
        // Another source is unaffected by the first one's flood.
        assert_eq!(limiter.allow(ip(2), t0), Verdict::Allowed);
        // 100 ms later one more token has arrived, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limiter.allow(ip(1), t1), Verdict::Allowed);
        assert_eq!(limiter.allow(ip(1), t1), Verdict::Limited);
        // Idle long enough: back to a full burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        let allowed = (0..20)
            .filter(|_| limiter.allow(ip(1), t2) == Verdict::Allowed)
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn the_table_of_sources_is_bounded_and_forgets_idle_ones() {
        let limiter = Limiter::new(
            Rate {
                per_sec: 1.0,
                burst: 2.0,
            },
            2,
        );
        let t0 = Instant::now();
        assert_eq!(limiter.allow(ip(1), t0), Verdict::Allowed);
        assert_eq!(limiter.allow(ip(2), t0), Verdict::Allowed);
        assert_eq!(limiter.allow(ip(3), t0), Verdict::TableFull);
        // Once the first two have refilled they are forgotten and make room.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(limiter.allow(ip(3), later), Verdict::Allowed);
        // A full table of active sources is swept at most every SWEEP_EVERY.
        assert_eq!(limiter.allow(ip(1), later), Verdict::Allowed);
        assert_eq!(limiter.allow(ip(4), later), Verdict::TableFull);
        let soon = later + Duration::from_millis(10);
        assert_eq!(limiter.allow(ip(5), soon), Verdict::TableFull);
        let after_a_sweep_interval = later + SWEEP_EVERY + Duration::from_secs(5);
        assert_eq!(
            limiter.allow(ip(5), after_a_sweep_interval),
            Verdict::Allowed
        );
    }

    #[test]
    fn the_default_burst_covers_a_discovery_run() {
        assert_eq!(Rate::per_second(50).burst, 100.0);
        assert_eq!(Rate::per_second(1).burst, 10.0);
    }
}
