//! The gateways compared, each in its own network: plain routing (the limit), the
//! classic recipe exactly as written, and natgw as `up` installs it (plus natgw with a
//! pool of two addresses, for the one-destination figure).

use std::path::Path;
use std::process::Command;

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
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain",
            Setup::Recipe => "recipe",
            Setup::Natgw => "natgw",
            Setup::NatgwPool2 => "natgw-pool2",
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
        }
    }

    /// Whether the gateway tracks connections (and its table needs flushing between tests).
    pub fn tracks(self) -> bool {
        self != Setup::Plain
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
            setup,
            generator_mac: net.mac("gen", GENERATOR_IF)?,
            gateway_mac: net.mac("gw", GATEWAY_PRIVATE_IF)?,
            forwarded: IfaceCounter::open(&net.ns("srv"), SERVER_IF)?,
            returned: IfaceCounter::open(&net.ns("gen"), GENERATOR_IF)?,
            net,
        })
    }

    /// Empties the gateway's connection table between tests.
    pub fn flush(&self) -> anyhow::Result<()> {
        if self.setup.tracks() {
            self.net.exec("gw", "conntrack", &["-F"]).context(
                "cannot flush the gateway's conntrack table (apt-get install conntrack)",
            )?;
        }
        Ok(())
    }
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
