//! `natgw run --metrics-listen`: Prometheus metrics and a health check over HTTP.
//!
//! A scrape costs a fixed number of kernel requests (natgw's nftables counters, the
//! conntrack usage and per-CPU statistics over ctnetlink) plus a summary of the
//! translation view, which the daemon keeps current from conntrack events; it never
//! lists the conntrack table.

mod http;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use natgw_core::mapping::{self, TranslationView};
use natgw_core::Desired;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use http::serve;

/// The port of a bare `--metrics-listen` or one given as an address only.
pub const DEFAULT_PORT: u16 = 9469;

/// `ADDR:PORT`, `PORT` or `ADDR`; without an address, 127.0.0.1 (local users only).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if value.is_empty() {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DEFAULT_PORT));
    }
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = value.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(format!(
        "`{value}` is not ADDR:PORT, PORT or ADDR (e.g. 127.0.0.1:{DEFAULT_PORT})"
    ))
}

/// What the daemon reports about itself; updated by the event loop, read by scrapes.
#[derive(Debug, Default)]
pub struct DaemonFigures {
    pub reconcile_runs: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub apply_errors: AtomicU64,
    /// The last reconcile verified the gateway in place.
    pub verified: AtomicBool,
    /// The conntrack event stream overran and the view was rebuilt from a dump.
    pub view_resyncs: AtomicU64,
    gateway: Mutex<Option<GatewayInfo>>,
}

/// The resolved gateway, for the info metric and the port capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatewayInfo {
    public: String,
    private: String,
    snat: String,
    ports_allowed: u32,
    dataplane: String,
}

impl DaemonFigures {
    pub fn set_gateway(&self, desired: &Desired) {
        let info = GatewayInfo {
            public: desired.public.name.to_string(),
            private: desired
                .private
                .iter()
                .map(|i| i.name.to_string())
                .collect::<Vec<_>>()
                .join(","),
            snat: desired.snat.to_string(),
            ports_allowed: mapping::ports_allowed(desired),
            dataplane: desired.dataplane.kind().to_string(),
        };
        *self.gateway.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    fn gateway(&self) -> Option<GatewayInfo> {
        self.gateway
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    pub figures: Arc<DaemonFigures>,
    pub view: Arc<Mutex<TranslationView>>,
}

/// natgw's nftables counters: (counter name, metric, label name, label value).
const NFT_COUNTERS: [(&str, &str, &str); 7] = [
    ("outbound", "forwarded", "outbound"),
    ("inbound_replies", "forwarded", "inbound"),
    ("translated_connections", "new_translations", ""),
    ("dropped_invalid", "dropped", "invalid"),
    ("dropped_spoofed", "dropped", "spoofed_private"),
    ("dropped_spoofed_public", "dropped", "spoofed_public"),
    ("dropped_unsolicited", "dropped", "unsolicited"),
];

/// The text of one scrape, in the Prometheus text format 0.0.4.
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::with_prefix("natgw");
    registry.register_collector(Box::new(Scrape(sources.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct Scrape(Sources);

type Labels<'a> = Vec<(&'static str, String)>;

/// One metric family: a name, help, and samples with their labels.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = samples.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.1.metric_type())?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// The eBPF plane's figures, read from its pinned maps: its per-CPU counters summed,
/// the public endpoints in use by protocol, the capacity per protocol, and how many of
/// its two programs are attached.
fn ebpf(encoder: &mut DescriptorEncoder, public: &str) -> Result<(), std::fmt::Error> {
    let Ok(Some(status)) = natgw_linux::ebpf::status(Some(public)) else {
        return Ok(());
    };
    family(
        encoder,
        "ebpf_programs_attached",
        "natgw's eBPF programs attached to the public interface (2 when healthy)",
        one(ConstGauge::new(status.attached.len() as i64)),
    )?;
    family(
        encoder,
        "ebpf_events",
        "what the eBPF data plane did, by event (its counters, summed over CPUs)",
        status
            .counters
            .iter()
            .map(|(name, v)| (vec![("event", name.to_string())], ConstCounter::new(*v)))
            .collect(),
    )?;
    family(
        encoder,
        "ebpf_bindings",
        "public endpoints the eBPF data plane has handed out, by protocol",
        status
            .bindings
            .iter()
            .map(|(p, n)| (vec![("protocol", p.clone())], ConstGauge::new(*n as i64)))
            .collect(),
    )?;
    family(
        encoder,
        "ebpf_bindings_capacity",
        "public endpoints available per protocol (ports of the range times pool addresses)",
        one(ConstGauge::new(status.bindings_capacity as i64)),
    )
}

fn one<M>(value: M) -> Vec<(Labels<'static>, M)> {
    vec![(Vec::new(), value)]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = &self.0.figures;
        let gateway = figures.gateway();
        let mut info: Labels = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
        if let Some(g) = &gateway {
            info.extend([
                ("public", g.public.clone()),
                ("private", g.private.clone()),
                ("snat", g.snat.clone()),
                ("dataplane", g.dataplane.clone()),
            ]);
        }
        family(
            &mut encoder,
            "info",
            "natgw's version and the gateway it keeps (roles as resolved); always 1",
            vec![(info, ConstGauge::new(1))],
        )?;
        family(
            &mut encoder,
            "gateway_verified",
            "1 when the last reconcile verified the gateway in place",
            one(ConstGauge::new(
                figures.verified.load(Ordering::Relaxed) as i64
            )),
        )?;
        for (name, help, value) in [
            (
                "reconcile_runs",
                "reconciles run (observe, plan, apply, verify)",
                &figures.reconcile_runs,
            ),
            (
                "drift_repairs",
                "reconciles that found drift and repaired it",
                &figures.drift_repairs,
            ),
            (
                "apply_errors",
                "reconciles whose apply or verification failed",
                &figures.apply_errors,
            ),
            (
                "translation_view_resyncs",
                "times missed conntrack events made natgw re-list its translations",
                &figures.view_resyncs,
            ),
        ] {
            family(
                &mut encoder,
                name,
                help,
                one(ConstCounter::new(value.load(Ordering::Relaxed))),
            )?;
        }

        if let Ok(counters) = natgw_linux::nft::counters() {
            let find = |name: &str| counters.iter().find(|c| c.name == name);
            let mut packets: Vec<(&str, Vec<(Labels, ConstCounter)>)> = Vec::new();
            let mut bytes: Vec<(Labels, ConstCounter)> = Vec::new();
            for (counter, metric, label) in NFT_COUNTERS {
                let Some(c) = find(counter) else { continue };
                let labels: Labels = match metric {
                    "forwarded" => vec![("direction", label.to_string())],
                    "dropped" => vec![("reason", label.to_string())],
                    _ => Vec::new(),
                };
                if metric == "forwarded" {
                    bytes.push((labels.clone(), ConstCounter::new(c.bytes)));
                }
                match packets.iter_mut().find(|(m, _)| *m == metric) {
                    Some((_, samples)) => samples.push((labels, ConstCounter::new(c.packets))),
                    None => packets.push((metric, vec![(labels, ConstCounter::new(c.packets))])),
                }
            }
            for (metric, samples) in packets {
                let (name, help) = match metric {
                    "forwarded" => ("forwarded_packets", "packets natgw forwarded, by direction"),
                    "new_translations" => (
                        "new_translations",
                        "connections natgw source-translated (the first packet of each)",
                    ),
                    _ => ("dropped_packets", "packets natgw dropped, by reason"),
                };
                family(&mut encoder, name, help, samples)?;
            }
            family(
                &mut encoder,
                "forwarded_bytes",
                "bytes natgw forwarded, by direction",
                bytes,
            )?;
        }

        if let Some(g) = gateway.as_ref().filter(|g| g.dataplane == "ebpf") {
            ebpf(&mut encoder, &g.public)?;
        }

        let mut ct = natgw_linux::ctnetlink::Ctnetlink::open().ok();
        if let Some(usage) = ct
            .as_mut()
            .and_then(|c| c.usage().ok())
            .or_else(natgw_linux::conntrack::usage)
        {
            family(
                &mut encoder,
                "conntrack_entries",
                "connection tracking entries in use (this network namespace)",
                one(ConstGauge::new(usage.count as i64)),
            )?;
            family(
                &mut encoder,
                "conntrack_entries_max",
                "connection tracking table size (nf_conntrack_max)",
                one(ConstGauge::new(usage.max as i64)),
            )?;
        }
        if let Some(stats) = ct.as_mut().and_then(|c| c.stats().ok()) {
            for (name, help, value) in [
                ("conntrack_insert_failed", "new connections the kernel could not track; with NAT usually no free source port", stats.insert_failed),
                ("conntrack_drop", "packets dropped because a new connection could not be tracked", stats.drop),
                ("conntrack_early_drop", "tracked connections evicted to make room (table full)", stats.early_drop),
                ("conntrack_invalid", "packets conntrack found invalid", stats.invalid),
            ] {
                family(&mut encoder, name, help, one(ConstCounter::new(value)))?;
            }
        }

        let allowed = gateway.map_or(mapping::PORTS_PER_DESTINATION, |g| g.ports_allowed);
        let summary = self
            .0
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary(0, allowed);
        let by_protocol = [
            mapping::Protocol::Tcp,
            mapping::Protocol::Udp,
            mapping::Protocol::Icmp,
            mapping::Protocol::Other,
        ]
        .into_iter()
        .map(|p| {
            let n = summary.by_protocol.get(&p).copied().unwrap_or(0);
            (vec![("protocol", p.to_string())], ConstGauge::new(n as i64))
        })
        .collect();
        family(
            &mut encoder,
            "translations",
            "translations in use, by protocol",
            by_protocol,
        )?;
        family(
            &mut encoder,
            "translations_created",
            "translations seen created since natgw run started",
            one(ConstCounter::new(summary.created)),
        )?;
        family(
            &mut encoder,
            "translations_ended",
            "translations seen ended since natgw run started",
            one(ConstCounter::new(summary.ended)),
        )?;
        let used = summary
            .port_use
            .iter()
            .map(|u| {
                (
                    vec![
                        ("public", u.public.to_string()),
                        ("protocol", u.protocol.to_string()),
                        ("destination", u.destination.ip().to_string()),
                        ("port", u.destination.port().to_string()),
                    ],
                    ConstGauge::new(u.ports_used as i64),
                )
            })
            .collect();
        family(&mut encoder, "public_ports_used", "source ports a public address uses towards its busiest destination (address, port, protocol)", used)?;
        let allowed = summary
            .port_use
            .iter()
            .map(|u| {
                (
                    vec![("public", u.public.to_string())],
                    ConstGauge::new(u.ports_allowed as i64),
                )
            })
            .collect();
        family(&mut encoder, "public_ports_allowed", "source ports a public address can use towards one destination (address, port, protocol)", allowed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_defaults_to_localhost() {
        assert_eq!(parse_listen("").unwrap(), "127.0.0.1:9469".parse().unwrap());
        assert_eq!(
            parse_listen("9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_listen("10.0.0.1:9100").unwrap(),
            "10.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_listen("10.0.0.1").unwrap(),
            "10.0.0.1:9469".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9100").unwrap(),
            "[::1]:9100".parse().unwrap()
        );
        assert!(parse_listen("localhost:9100").is_err());
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn a_scrape_without_kernel_figures_still_has_the_daemons() {
        let figures = Arc::new(DaemonFigures::default());
        figures.reconcile_runs.store(3, Ordering::Relaxed);
        figures.verified.store(true, Ordering::Relaxed);
        let mut view = TranslationView::new();
        view.insert(mapping::Translation {
            protocol: mapping::Protocol::Udp,
            private: "10.0.0.11:5000".parse().unwrap(),
            destination: "198.51.100.10:7000".parse().unwrap(),
            public: "203.0.113.1:5000".parse().unwrap(),
        });
        let text = render(&Sources {
            figures,
            view: Arc::new(Mutex::new(view)),
        });
        for line in [
            "# TYPE natgw_reconcile_runs_total counter",
            "natgw_reconcile_runs_total 3",
            "natgw_gateway_verified 1",
            "natgw_translations{protocol=\"udp\"} 1",
            "natgw_translations{protocol=\"tcp\"} 0",
            "natgw_public_ports_used{public=\"203.0.113.1\",protocol=\"udp\",destination=\"198.51.100.10\",port=\"7000\"} 1",
            "natgw_public_ports_allowed{public=\"203.0.113.1\"} 64512",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
