//! The gateways compared, each in its own network: plain routing (the limit), the
//! classic recipe exactly as written, natgw as `up` installs it (plus natgw with a
//! pool of two addresses, for the one-destination figure), and natgw as `up` installs
//! it with `dataplane = "ebpf"`, `bypass_conntrack = true` and `fast_path = true` (its
//! own translator plus natgw's table, the translated flows out of conntrack, known
//! flows past the forward path).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context};
use natgw_lab::bench::counter::IfaceCounter;
use natgw_lab::bench::flows::{SOURCES, SOURCES_PREFIX_LEN};
use natgw_lab::bench::topology::{
    BenchNet, GATEWAY_PRIVATE_IF, GATEWAY_PUBLIC, GATEWAY_PUBLIC_2, GATEWAY_PUBLIC_IF, GENERATOR,
    GENERATOR_IF, SERVER_IF,
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
                "natgw up with dataplane = \"ebpf\", bypass_conntrack = true, fast_path = true (endpoint-independent, paired pooling over {EBPF_POOL_SIZE} addresses from {GATEWAY_PUBLIC}, port_range = \"{EBPF_PORTS}\")"
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
    /// Where the setup's natgw config lies (`up` again after a flush).
    scratch: std::path::PathBuf,
    /// New flows the eBPF plane refused for want of a port before earlier flushes.
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
        Ok(Rig {
            scratch: scratch.to_path_buf(),
            ebpf_refused: AtomicU64::new(0),
            setup,
            generator_mac: net.mac("gen", GENERATOR_IF)?,
            gateway_mac: net.mac("gw", GATEWAY_PRIVATE_IF)?,
            forwarded: IfaceCounter::open(&net.ns("srv"), SERVER_IF)?,
            returned: IfaceCounter::open(&net.ns("gen"), GENERATOR_IF)?,
            net,
        })
    }

    /// New flows the eBPF plane refused for want of a public port, over the run.
    pub fn ebpf_refused(&self) -> u64 {
        if self.setup != Setup::Ebpf {
            return 0;
        }
        ebpf_counter(&self.net, "drop_no_port").unwrap_or(0)
            + self.ebpf_refused.load(Ordering::Relaxed)
    }

    /// Empties the gateway's connection table between tests (the eBPF plane: `down`
    /// and `up` again, which starts with no binding).
    pub fn flush(&self) -> anyhow::Result<()> {
        if self.setup == Setup::Ebpf {
            let refused = ebpf_counter(&self.net, "drop_no_port")?;
            self.ebpf_refused.fetch_add(refused, Ordering::Relaxed);
            run_natgw(&self.net, &["down"])?;
            run_natgw(
                &self.net,
                &["up", "--config", &ebpf_config_path(&self.scratch)],
            )?;
        }
        if self.setup.tracks() {
            self.net.exec("gw", "conntrack", &["-F"]).context(
                "cannot flush the gateway's conntrack table (apt-get install conntrack)",
            )?;
        }
        Ok(())
    }
}

/// One of the eBPF plane's counters, from `natgw status --json`.
fn ebpf_counter(net: &BenchNet, name: &str) -> anyhow::Result<u64> {
    let out = run_natgw(net, &["status", "--json"])?;
    let status: serde_json::Value =
        serde_json::from_slice(&out).context("natgw status printed no JSON")?;
    status["ebpf"]["counters"][name]
        .as_u64()
        .ok_or_else(|| anyhow!("natgw status shows no eBPF counter {name}"))
}

fn ebpf_config_path(scratch: &Path) -> String {
    scratch.join("natgw-ebpf.toml").display().to_string()
}

/// The eBPF plane's ports. The pool addresses are the gateway's own, so natgw refuses
/// a range that overlaps the namespace's ephemeral ports: those are moved above it.
const EBPF_PORTS: &str = "1024-59999";
const EBPF_LOCAL_PORTS: &str = "60000 60999";

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
        Setup::Plain | Setup::Recipe => {
            // The recipe's section 2.4: the static route to the network behind a router.
            net.ip(
                "gw",
                &["route", "add", &sources(), "via", &GENERATOR.to_string()],
            )?;
            net.sysctl("gw", "net.ipv4.ip_forward", "1")?;
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
        Setup::Ebpf => {
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
            net.sysctl("gw", "net.ipv4.ip_local_port_range", EBPF_LOCAL_PORTS)?;
            let pool: Vec<String> = ebpf_pool().iter().map(|a| format!("\"{a}\"")).collect();
            let config = format!(
                "dataplane = \"ebpf\"\nbypass_conntrack = true\nfast_path = true\nsnat_to = [{}]\nport_range = \"{EBPF_PORTS}\"\n{route}",
                pool.join(", ")
            );
            natgw_up(net, Path::new(&ebpf_config_path(scratch)), &config)
        }
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
    run_natgw(net, &["up", "--config", &config_path.display().to_string()]).map(drop)
}

/// Runs this very binary in the gateway namespace; its standard output.
fn run_natgw(net: &BenchNet, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let exe = std::env::current_exe().context("cannot find the natgw binary")?;
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns("gw")])
        .arg(exe)
        .args(args)
        .output()
        .with_context(|| format!("cannot run natgw {} in the gateway namespace", args[0]))?;
    if !out.status.success() {
        return Err(anyhow!(
            "natgw {} exited with {}: {}{}",
            args[0],
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}
