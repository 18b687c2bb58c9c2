//! `natgw trace`: which private host used a public address and port, and when, from
//! the mapping log's records (and the live translations, which the caller adds as
//! open intervals). Pure: records and times come in as values.

use std::net::SocketAddr;

use serde::Serialize;

use crate::mapping::{MappingRecord, Protocol, RecordKind};

/// A private endpoint that held `public` from `from_ms` to `until_ms` (open when the
/// log has no end for it yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub protocol: Protocol,
    pub private: SocketAddr,
    pub public: SocketAddr,
    /// Milliseconds since the Unix epoch; `None` when it started before the log did.
    pub from_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Seen in the live conntrack table right now.
    pub live: bool,
}

impl Holder {
    /// Whether it held the address at `at_ms`.
    pub fn covers(&self, at_ms: u64) -> bool {
        self.from_ms.is_none_or(|f| f <= at_ms) && self.until_ms.is_none_or(|u| at_ms <= u)
    }
}

/// Pairs the created and ended records of `public` (and `protocol`, when given), in
/// log order, into holders.
pub fn holders(
    records: impl IntoIterator<Item = MappingRecord>,
    public: SocketAddr,
    protocol: Option<Protocol>,
) -> Vec<Holder> {
    let mut out: Vec<Holder> = Vec::new();
    for r in records {
        if r.public != public || protocol.is_some_and(|p| p != r.protocol) {
            continue;
        }
        match r.event {
            RecordKind::Created => out.push(Holder {
                protocol: r.protocol,
                private: r.private,
                public: r.public,
                from_ms: Some(r.time_ms),
                until_ms: None,
                live: false,
            }),
            RecordKind::Ended => {
                let open = out.iter_mut().rev().find(|h| {
                    h.until_ms.is_none() && h.private == r.private && h.protocol == r.protocol
                });
                match open {
                    Some(h) => h.until_ms = Some(r.time_ms),
                    // Created before the log began (or in a rotated-away file).
                    None => out.push(Holder {
                        protocol: r.protocol,
                        private: r.private,
                        public: r.public,
                        from_ms: None,
                        until_ms: Some(r.time_ms),
                        live: false,
                    }),
                }
            }
        }
    }
    out
}

/// Parses `--at`: Unix seconds (`1767225600`, `1767225600.5`) or RFC 3339 in UTC
/// (`2026-01-01T00:00:00Z`, fractional seconds allowed); milliseconds since the epoch.
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok((seconds * 1000.0).round() as u64);
        }
    }
    let err = || format!("`{text}` is not Unix seconds or a UTC time like 2026-01-01T12:00:00Z");
    let rest = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .ok_or_else(err)?;
    let (date, time) = rest.split_once(['T', ' ']).ok_or_else(err)?;
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err(err());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| err());
    let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hour, minute) = (num(t[0])?, num(t[1])?);
    let second: f64 = t[2].parse().map_err(|_| err())?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0.0..61.0).contains(&second)
    {
        return Err(err());
    }
    let days = days_from_civil(year, month, day);
    let ms = ((days * 86_400 + hour * 3600 + minute * 60) as f64 + second) * 1000.0;
    if ms < 0.0 {
        return Err(err());
    }
    Ok(ms.round() as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as RFC 3339 UTC, for output.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time_ms: u64, event: RecordKind, private: &str, public: &str) -> MappingRecord {
        MappingRecord {
            time_ms,
            event,
            protocol: Protocol::Udp,
            private: private.parse().unwrap(),
            public: public.parse().unwrap(),
        }
    }

    #[test]
    fn a_reused_public_port_names_the_host_of_each_time() {
        let public: SocketAddr = "203.0.113.1:40000".parse().unwrap();
        let log = vec![
            record(
                1000,
                RecordKind::Created,
                "10.0.0.11:5000",
                "203.0.113.1:40000",
            ),
            record(
                1500,
                RecordKind::Created,
                "10.0.0.99:1",
                "203.0.113.1:40001",
            ),
            record(
                2000,
                RecordKind::Ended,
                "10.0.0.11:5000",
                "203.0.113.1:40000",
            ),
            record(
                3000,
                RecordKind::Created,
                "10.0.0.12:6000",
                "203.0.113.1:40000",
            ),
        ];
        let h = holders(log, public, Some(Protocol::Udp));
        assert_eq!(h.len(), 2);
        let at = |ms| {
            h.iter()
                .filter(|h| h.covers(ms))
                .map(|h| h.private.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(at(1200), ["10.0.0.11:5000"]);
        assert_eq!(at(2500), Vec::<String>::new());
        assert_eq!(at(9999), ["10.0.0.12:6000"]);
        assert!(holders(vec![], public, Some(Protocol::Tcp)).is_empty());
    }

    #[test]
    fn an_end_without_a_start_began_before_the_log() {
        let public: SocketAddr = "203.0.113.1:40000".parse().unwrap();
        let h = holders(
            vec![record(
                2000,
                RecordKind::Ended,
                "10.0.0.11:5000",
                "203.0.113.1:40000",
            )],
            public,
            None,
        );
        assert_eq!((h[0].from_ms, h[0].until_ms), (None, Some(2000)));
        assert!(h[0].covers(0) && !h[0].covers(2001));
    }

    #[test]
    fn times_parse_and_print() {
        assert_eq!(parse_time("1767225600").unwrap(), 1_767_225_600_000);
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_time("2026-01-01T00:00:01.250Z").unwrap(),
            1_767_225_601_250
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(
            parse_time("2026-01-01T00:00:00").is_err(),
            "a zone is required"
        );
        assert_eq!(format_time(1_767_225_601_250), "2026-01-01T00:00:01.250Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
