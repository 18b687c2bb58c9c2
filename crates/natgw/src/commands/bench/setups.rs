//! The gateways compared, each in its own network: plain routing (the limit), the
//! classic recipe exactly as written, natgw as `up` installs it (plus natgw with a
//! pool of two addresses, for the one-destination figure), and natgw's own eBPF
//! translator (natgw-ebpf) attached by the benchmark itself: it is not selectable in
//! `natgw up` yet.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use natgw_lab::bench::counter::IfaceCounter;
use natgw_lab::bench::flows::{SOURCES, SOURCES_PREFIX_LEN};
use natgw_lab::bench::topology::{
    BenchNet, GATEWAY_PRIVATE, GATEWAY_PRIVATE_IF, GATEWAY_PUBLIC, GATEWAY_PUBLIC_2,
    GATEWAY_PUBLIC_IF, GENERATOR, GENERATOR_IF, SERVER_IF,
};

use super::host::Cpus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    Plain,
    Recipe,
    Natgw,
    NatgwPool2,
    Ebpf,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain",
            Setup::Recipe => "recipe",
            Setup::Natgw => "natgw",
            Setup::NatgwPool2 => "natgw-pool2",
            Setup::Ebpf => "ebpf",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Setup::Plain => "routing only: ip_forward=1, no NAT, no rules, no conntrack".into(),
            Setup::Recipe => format!(
                "ip_forward=1; iptables -t nat -A POSTROUTING -o {GATEWAY_PUBLIC_IF} -j SNAT --to {GATEWAY_PUBLIC} (kernel defaults)"
            ),
            Setup::Natgw => "natgw up (defaults; the generator's network as a route)".into(),
            Setup::NatgwPool2 => format!(
                "natgw up with snat_to = [\"{GATEWAY_PUBLIC}\", \"{GATEWAY_PUBLIC_2}\"], port_selection = \"random\""
            ),
            Setup::Ebpf => format!(
                "ip_forward=1 and natgw's eBPF translator at TCX of {GATEWAY_PUBLIC_IF} and {GATEWAY_PRIVATE_IF} (endpoint-independent, paired pooling over {EBPF_POOL_SIZE} addresses from {GATEWAY_PUBLIC}, ports 1024-65535); no rules, no conntrack"
            ),
        }
    }

    /// Whether the gateway tracks connections (and its table needs flushing between tests).
    pub fn tracks(self) -> bool {
        !matches!(self, Setup::Plain | Setup::Ebpf)
    }
}

/// One setup's network, configured, with the counters the figures read.
pub struct Rig {
    pub setup: Setup,
    pub net: BenchNet,
    pub generator_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    /// Packets arriving on the public side (what the gateway forwarded out).
    pub forwarded: IfaceCounter,
    /// Packets arriving back at the generator (replies the gateway forwarded in).
    pub returned: IfaceCounter,
    /// The eBPF setup's translator (replaced by a fresh one to flush it).
    ebpf: Mutex<Option<natgw_ebpf::Plane>>,
    /// New flows earlier eBPF translators (before a flush) refused for want of a port.
    ebpf_refused: AtomicU64,
}

impl Rig {
    pub fn build(setup: Setup, prefix: &str, cpus: &Cpus, scratch: &Path) -> anyhow::Result<Rig> {
        let net = BenchNet::build(&format!("{prefix}{}", setup.name()))
            .with_context(|| format!("cannot build the {} network", setup.name()))?;
        if let Some(gateway) = cpus.gateway {
            let (gw, rest) = (1u64 << gateway, 1u64 << cpus.generator);
            for (role, ifname, mask) in [
                ("gw", GATEWAY_PRIVATE_IF, gw),
                ("gw", GATEWAY_PUBLIC_IF, gw),
                ("gen", GENERATOR_IF, rest),
                ("srv", SERVER_IF, rest),
            ] {
                net.steer_receive(role, ifname, mask)
                    .with_context(|| format!("cannot steer {ifname}'s receive processing"))?;
            }
        }
        configure(setup, &net, scratch)
            .with_context(|| format!("cannot configure the {} gateway", setup.name()))?;
        let ebpf = match setup {
            Setup::Ebpf => Some(ebpf_plane(&net).context("cannot attach the eBPF translator")?),
            _ => None,
        };
        Ok(Rig {
            ebpf: Mutex::new(ebpf),
            ebpf_refused: AtomicU64::new(0),
            setup,
            generator_mac: net.mac("gen", GENERATOR_IF)?,
            gateway_mac: net.mac("gw", GATEWAY_PRIVATE_IF)?,
            forwarded: IfaceCounter::open(&net.ns("srv"), SERVER_IF)?,
            returned: IfaceCounter::open(&net.ns("gen"), GENERATOR_IF)?,
            net,
        })
    }

    /// New flows the eBPF translator refused for want of a public port, over the run.
    pub fn ebpf_refused(&self) -> u64 {
        let ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let now = ebpf
            .as_ref()
            .and_then(|p| p.counters().ok())
            .map_or(0, |c| c["drop_no_port"]);
        now + self.ebpf_refused.load(Ordering::Relaxed)
    }

    /// Empties the gateway's connection table between tests (the eBPF translator:
    /// replaces it with a fresh one).
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = ebpf.take() {
            let refused = old.counters().map(|c| c["drop_no_port"]).unwrap_or(0);
            self.ebpf_refused.fetch_add(refused, Ordering::Relaxed);
            drop(old);
            wait_detached(&self.net)?;
            *ebpf = Some(ebpf_plane(&self.net).context("cannot re-attach the eBPF translator")?);
        }
        if self.setup.tracks() {
            self.net.exec("gw", "conntrack", &["-F"]).context(
                "cannot flush the gateway's conntrack table (apt-get install conntrack)",
            )?;
        }
        Ok(())
    }
}

/// natgw's eBPF translator, loaded and attached inside the gateway namespace.
fn ebpf_plane(net: &BenchNet) -> anyhow::Result<natgw_ebpf::Plane> {
    let cfg = natgw_nat::Config {
        private: vec![
            sources().parse().context("the sources prefix")?,
            "10.0.0.0/24".parse().context("the gateway's network")?,
        ],
        pool: ebpf_pool(),
        ports: 1024..=65535,
        filtering: natgw_nat::Filtering::EndpointIndependent,
        timeouts: natgw_nat::Timeouts::default(),
        icmp_source: GATEWAY_PRIVATE,
    };
    natgw_lab::in_netns(&net.ns("gw"), move || {
        let mut plane = natgw_ebpf::Plane::load(&cfg, 1)?;
        plane.attach(GATEWAY_PUBLIC_IF)?;
        plane.attach_private(GATEWAY_PRIVATE_IF)?;
        Ok::<_, natgw_ebpf::PlaneError>(plane)
    })?
    .map_err(anyhow::Error::from)
}

/// Waits until a dropped translator's programs are gone (the kernel detaches a closed
/// link a moment later).
fn wait_detached(net: &BenchNet) -> anyhow::Result<()> {
    let attached = || {
        natgw_lab::in_netns(&net.ns("gw"), || {
            natgw_ebpf::Side::ALL
                .iter()
                .map(|&side| {
                    let ifname = match side {
                        natgw_ebpf::Side::Private => GATEWAY_PRIVATE_IF,
                        _ => GATEWAY_PUBLIC_IF,
                    };
                    natgw_ebpf::plane::attached(ifname, side).map(|p| p.len())
                })
                .sum::<Result<usize, _>>()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if attached()?? == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the old eBPF translator is still attached"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The eBPF translator's pool. Endpoint-independent mapping gives every private
/// endpoint its own public port, and every packet of a new-flow window is a new
/// endpoint: one address (64,512 ports) would run out within a window at the rates
/// measured, and the figure would measure the port budget, not the programs. Hosts are
/// spread over the pool by paired pooling.
pub const EBPF_POOL_SIZE: u8 = 4;

fn ebpf_pool() -> Vec<std::net::Ipv4Addr> {
    let [a, b, c, d] = GATEWAY_PUBLIC.octets();
    (0..EBPF_POOL_SIZE)
        .map(|i| std::net::Ipv4Addr::new(a, b, c, d + i))
        .collect()
}

fn sources() -> String {
    format!("{SOURCES}/{SOURCES_PREFIX_LEN}")
}

fn configure(setup: Setup, net: &BenchNet, scratch: &Path) -> anyhow::Result<()> {
    let route = format!(
        "routes = [{{ to = \"{}\", via = \"{GENERATOR}\" }}]\n",
        sources()
    );
    match setup {
        Setup::Plain | Setup::Recipe | Setup::Ebpf => {
            // The recipe's section 2.4: the static route to the network behind a router.
            net.ip(
                "gw",
                &["route", "add", &sources(), "via", &GENERATOR.to_string()],
            )?;
            net.sysctl("gw", "net.ipv4.ip_forward", "1")?;
            if setup == Setup::Ebpf {
                // The pool's other addresses, so that the gateway answers for them.
                for addr in ebpf_pool().iter().skip(1) {
                    net.ip(
                        "gw",
                        &[
                            "addr",
                            "add",
                            &format!("{addr}/24"),
                            "dev",
                            GATEWAY_PUBLIC_IF,
                        ],
                    )?;
                }
            }
            if setup == Setup::Recipe {
                net.exec(
                    "gw",
                    "iptables",
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        GATEWAY_PUBLIC_IF,
                        "-j",
                        "SNAT",
                        "--to",
                        &GATEWAY_PUBLIC.to_string(),
                    ],
                )
                .context("the recipe's iptables rule failed (apt-get install iptables)")?;
            }
            Ok(())
        }
        Setup::Natgw => natgw_up(net, &scratch.join("natgw.toml"), &route),
        Setup::NatgwPool2 => {
            net.ip(
                "gw",
                &[
                    "addr",
                    "add",
                    &format!("{GATEWAY_PUBLIC_2}/24"),
                    "dev",
                    GATEWAY_PUBLIC_IF,
                ],
            )?;
            let config = format!(
                "snat_to = [\"{GATEWAY_PUBLIC}\", \"{GATEWAY_PUBLIC_2}\"]\nport_selection = \"random\"\n{route}"
            );
            natgw_up(net, &scratch.join("natgw-pool2.toml"), &config)
        }
    }
}

/// Runs this very binary's `up` in the gateway namespace.
fn natgw_up(net: &BenchNet, config_path: &Path, config: &str) -> anyhow::Result<()> {
    std::fs::write(config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the natgw binary")?;
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns("gw")])
        .arg(exe)
        .arg("up")
        .arg("--config")
        .arg(config_path)
        .output()
        .context("cannot run natgw up in the gateway namespace")?;
    if !out.status.success() {
        return Err(anyhow!(
            "natgw up exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
