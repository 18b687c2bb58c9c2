//! Command-line arguments (stage one: raw flags; `commands::gateway` resolves them).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use natgw_core::config::Ipv6Mode;
use natgw_core::dataplane::DataplaneKind;

use crate::address_flags::{Endpoint, Host, Target};

#[derive(Debug, Parser)]
#[command(
    name = "natgw",
    version,
    about = "Make this Linux host the outbound NAT gateway of its private network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr [default: human; the journal when run by systemd].
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log more: -v one level more detail, -vv two (NATGW_LOG overrides both).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `natgw: applied: ...`, one line per event.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure forwarding, routes and source NAT so private nodes reach the outside.
    Up {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what `up` would change, and what was detected (same as `up --dry-run`).
    Plan {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything natgw added and restore the sysctl values it changed.
    Down {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: apply like `up`, then keep the gateway in that state (repairs
    /// drift, follows address changes, survives link flaps); SIGHUP reloads the config.
    Run {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Remove natgw's rules and routes when stopped (by default they stay, so
        /// traffic keeps flowing across a restart or an upgrade).
        #[arg(long)]
        down_on_exit: bool,
        #[command(flatten)]
        observe: ObserveArgs,
    },
    /// Roles, drift against the desired state, translation counters, conntrack usage.
    Status {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Refresh in place every SECS seconds [bare: 2].
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
              conflicts_with = "json")]
        watch: Option<f64>,
    },
    /// Find every reason the gateway fails to give outbound connectivity; --fix repairs
    /// what is safe to repair.
    Doctor {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Bring configured interfaces up, turn forwarding on, apply natgw's rules.
        #[arg(long)]
        fix: bool,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// On a private node: route through the headnode (recipe section 1).
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// From a private node: reachability probes and, with a STUN server, the public
    /// address the outside sees and the NAT's behaviour (RFC 5780, RFC 4787).
    Probe(ProbeArgs),
    /// Run a STUN server (RFC 5389 Binding over UDP and TCP, RFC 5780 with --alt, RFC 3489
    /// clients in their own terms) on a public host. SIGINT/SIGTERM stop it and print its
    /// counters.
    StunServer(StunServerArgs),
    /// Demo: build a throwaway network in namespaces, run natgw in it, prove it works.
    Lab(LabArgs),
    /// Which private host used PUBLIC_IP:PORT (from the mapping log and live conntrack).
    Trace(TraceArgs),
    /// Write /etc/natgw/natgw.toml from detection (never over an existing one) and the
    /// systemd unit natgw.service (with its eBPF drop-in when the config selects that
    /// plane), and enable it where systemd runs (without starting it).
    Install(InstallArgs),
    /// Remove the systemd unit and its drop-in (disabled first where systemd runs); keeps
    /// the config.
    Uninstall(UninstallArgs),
    /// Write the man pages, shell completions and example config, for packaging.
    #[command(hide = true)]
    PackageAssets {
        /// Directory to write them to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Date the man pages carry, YYYY-MM-DD (the package's, for reproducible builds).
        #[arg(long, value_name = "DATE")]
        date: Option<String>,
    },
    /// Measure plain routing, the classic iptables recipe and natgw side by side, in
    /// throwaway namespaces (new flows/s, packets/s, TCP connects/s, flows to one
    /// destination, bulk TCP).
    Bench(BenchArgs),
    /// Internal: keepalived calls this on each HA transition (master, backup, fault,
    /// stop) to drive conntrackd.
    #[command(hide = true)]
    HaNotify {
        /// The role keepalived moved to.
        role: String,
    },
}

impl Command {
    /// Commands that change the system (or run a service) log each change by default;
    /// read commands stay quiet unless something is wrong.
    pub fn changes_system(&self) -> bool {
        match self {
            Command::Install(InstallArgs { dry_run, .. })
            | Command::Uninstall(UninstallArgs { dry_run, .. }) => !dry_run,
            Command::PackageAssets { .. } => false,
            Command::Up { dry_run, .. } => !dry_run,
            Command::Plan { .. }
            | Command::Status { .. }
            | Command::Probe(_)
            | Command::Trace(_) => false,
            Command::Down { .. }
            | Command::Run { .. }
            | Command::StunServer(_)
            | Command::Lab(_)
            | Command::Bench(_)
            | Command::HaNotify { .. } => true,
            Command::Doctor { fix, .. } => *fix,
            Command::Node { action } => match action {
                NodeAction::Up { .. } | NodeAction::Down { .. } => true,
                NodeAction::Check { .. } => false,
                NodeAction::Persist { dry_run, .. } => !dry_run,
            },
        }
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct GatewayArgs {
    /// Config file [default: /etc/natgw/natgw.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public (uplink) interface [default: the one holding the IPv4 default route].
    #[arg(long, value_name = "IFACE")]
    pub public: Option<String>,
    /// Private interface, repeatable [default: up interfaces with RFC 1918/6598 addresses].
    #[arg(long, value_name = "IFACE")]
    pub private: Vec<String>,
    /// Address to translate to [default: the public interface's primary IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub snat_to: Vec<IpAddr>,
    /// Masquerade: follow the public interface's current address (dynamic addresses).
    #[arg(long)]
    pub masquerade: bool,
    /// Outbound IPv6: routed, nptv6, nat66 or off [default: `[ipv6] mode`, else detected].
    #[arg(long, value_name = "MODE", value_parser = parse_ipv6_mode)]
    pub ipv6_mode: Option<Ipv6Mode>,
    /// nptv6: the public prefix the upstream routes here [default: `[ipv6] public_prefix`].
    #[arg(long, value_name = "PREFIX")]
    pub ipv6_public_prefix: Option<ipnet::Ipv6Net>,
    /// Which data plane translates IPv4: nftables or ebpf [default: config key
    /// `dataplane`, else nftables].
    #[arg(long, value_name = "PLANE", value_parser = parse_dataplane)]
    pub dataplane: Option<DataplaneKind>,
}

pub fn parse_dataplane(text: &str) -> Result<DataplaneKind, String> {
    match text {
        "nftables" => Ok(DataplaneKind::Nftables),
        "ebpf" => Ok(DataplaneKind::Ebpf),
        _ => Err("expected nftables or ebpf".into()),
    }
}

pub fn parse_ipv6_mode(text: &str) -> Result<Ipv6Mode, String> {
    match text {
        "routed" => Ok(Ipv6Mode::Routed),
        "nptv6" => Ok(Ipv6Mode::Nptv6),
        "nat66" => Ok(Ipv6Mode::Nat66),
        "off" => Ok(Ipv6Mode::Off),
        _ => Err("expected routed, nptv6, nat66 or off".into()),
    }
}

impl GatewayArgs {
    /// Nothing given on the command line: read commands then check the gateway
    /// `up` recorded.
    pub fn is_empty(&self) -> bool {
        self.config.is_none()
            && self.public.is_none()
            && self.private.is_empty()
            && self.snat_to.is_empty()
            && !self.masquerade
            && self.ipv6_mode.is_none()
            && self.ipv6_public_prefix.is_none()
            && self.dataplane.is_none()
    }
}

/// What `natgw run` publishes about the translations it keeps.
#[derive(Debug, Args, Clone, Default)]
pub struct ObserveArgs {
    /// Serve Prometheus /metrics and /healthz on ADDR:PORT, PORT or ADDR [bare: 127.0.0.1:9469].
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "",
          value_parser = crate::metrics::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write one JSON line per translation created and ended to FILE (root-only, rotated).
    #[arg(long, value_name = "FILE")]
    pub log_mappings: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The public address and port from an abuse report.
    #[arg(value_name = "PUBLIC_IP:PORT")]
    pub address: std::net::SocketAddr,
    /// The gateway whose port blocks answer [default: the one `up` recorded].
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// When: Unix seconds or UTC like 2026-01-01T12:00:00Z [default: any time in the log].
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<TraceProtocol>,
    /// The mapping log natgw run writes.
    #[arg(long, value_name = "FILE", default_value = crate::mapping_log::DEFAULT_PATH)]
    pub log: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Resolve the gateway from this config file's settings (they stay set in the
    /// written config; what is detected is written commented out).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write under this directory instead of / (packaging, tests); systemctl is not run.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print what would be written and run, without doing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove from under this directory instead of / (systemctl is not run).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print what would be removed and run, without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub action: Option<LabAction>,
    /// Leave the topology up afterwards and print how to enter each namespace.
    #[arg(long)]
    pub keep: bool,
    /// Prefix of the lab's namespace names.
    #[arg(long, default_value = "natgw-lab", global = true)]
    pub name: String,
    /// High availability: two headnodes, fail the primary (link down, then a process
    /// kill, alternating) with connections open, measure what survives, fail back.
    #[arg(long)]
    pub ha: bool,
    /// With --ha: failovers to run [default: 2].
    #[arg(long, value_name = "N", default_value_t = 2, requires = "ha",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// With --ha: long-lived TCP connections per round.
    #[arg(long, value_name = "N", default_value_t = 20, requires = "ha",
          value_parser = clap::value_parser!(u32).range(4..=200))]
    pub connections: u32,
    /// With --ha: VRRP advertisement interval in seconds (the takeover takes about
    /// 3.6 of them).
    #[arg(long, value_name = "SECS", default_value_t = 0.3, requires = "ha")]
    pub advert_interval: f64,
    /// With --ha: print machine-readable JSON.
    #[arg(long, requires = "ha")]
    pub json: bool,
    /// IPv6 of the lab: nat66 (ULA nodes behind the headnode's address), nptv6 (ULA
    /// mapped to a routed prefix), routed (global addresses on the nodes) or off.
    #[arg(long, value_name = "MODE", default_value = "nat66", value_parser = parse_ipv6_mode)]
    pub ipv6_mode: Ipv6Mode,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run for CI (seconds, one round) instead of the full one (minutes).
    #[arg(long)]
    pub quick: bool,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// Rounds per figure [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Also profile the gateway's CPU (perf, cpu-clock) during a 64-byte flood and a
    /// new-flow flood of each setup, and show where the time goes.
    #[arg(long)]
    pub profile: bool,
    /// Measure only these figures (repeat or separate with commas), e.g. to check a
    /// change quickly: `--only new-flows,pps-64`.
    #[arg(long, value_name = "FIGURE", value_delimiter = ',')]
    pub only: Vec<BenchFigure>,
}

/// The figures `natgw bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFigure {
    /// New UDP flows per second.
    NewFlows,
    /// Packets per second of established flows, 64-byte frames.
    #[value(name = "pps-64")]
    Pps64,
    /// Packets per second of established flows, 1400-byte packets.
    #[value(name = "pps-1400")]
    Pps1400,
    /// TCP connections per second while many stay open.
    Connects,
    /// Simultaneous UDP flows to one destination.
    OneDestination,
    /// Bulk TCP throughput, one stream and several.
    Bulk,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Remove a topology left by `natgw lab --keep`.
    Down,
    /// Internal: waits for `natgw lab` process OWNER to end and removes its lab if
    /// that process could not (SIGKILL).
    #[command(hide = true)]
    Guard {
        /// The pid of the `natgw lab` process to watch.
        #[arg(long)]
        owner: u32,
    },
}

#[derive(Debug, Args)]
pub struct StunServerArgs {
    /// Primary address [port 3478 when omitted].
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen: Endpoint,
    /// Alternate address (a second IP of this host) [port 3479 when omitted].
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub alt: Option<Endpoint>,
    /// Requests per second each source address may send (bursts of twice that);
    /// more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = natgw_probe::server::DEFAULT_RATE)]
    pub rate_limit: u32,
    /// Also print the counters every SECS seconds [10 when given without a value].
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "10")]
    pub stats: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// STUN server for the mapped address and the behaviour tests.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub stun: Option<Target>,
    /// TCP connect probe, repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub tcp: Vec<Target>,
    /// UDP request/response probe, repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub udp: Vec<Target>,
    /// ICMP echo probe, repeatable.
    #[arg(long, value_name = "HOST")]
    pub icmp: Vec<Host>,
    /// Per-probe timeout in seconds.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub timeout: f64,
    /// Also measure the UDP binding lifetime, up to SECS idle [120, RFC 4787 REQ-5's 2
    /// minutes, when given without a value]; it runs beside the other tests.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "120")]
    pub lifetime: Option<u64>,
    /// Speak RFC 3489 (no magic cookie) and also name the NAT type the old way (full
    /// cone, restricted, port-restricted, symmetric).
    #[arg(long)]
    pub classic: bool,
    /// Also measure whether an established TCP connection through the NAT survives SECS
    /// seconds idle (RFC 5382 REQ-5 wants 7440: 2 h 4 min).
    #[arg(long, value_name = "SECS")]
    pub tcp_lifetime: Option<u64>,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Point the IPv4 default route at the gateway (checks it is on-link and answers).
    Up {
        /// The headnode's address on this node's network.
        #[arg(long, value_name = "ADDR")]
        gateway: IpAddr,
        /// Replace a different existing default route (it is recorded for `node down`).
        #[arg(long)]
        replace: bool,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore the default route as it was before `node up`.
    Down {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report the default route, whether the gateway answers, and the DNS resolvers.
    Check {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the default route survive reboot, for the network manager in use.
    Persist {
        /// The headnode's address on this node's network.
        #[arg(long, value_name = "ADDR")]
        gateway: IpAddr,
        /// Print the file changes without writing them.
        #[arg(long)]
        dry_run: bool,
        /// Operate on the configuration under this directory instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand, with the path to it.
    fn all_args(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((format!("{path} {}", arg.get_id()), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_has_a_help_line() {
        Cli::command().debug_assert();
        let mut args = Vec::new();
        all_args(&Cli::command(), "natgw".into(), &mut args);
        let missing: Vec<&String> = args
            .iter()
            .filter(|(_, arg)| {
                arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help" | "version")
            })
            .map(|(path, _)| path)
            .collect();
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn read_commands_are_told_from_commands_that_change_things() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("natgw").chain(args.iter().copied()))
                .unwrap()
                .command
                .changes_system()
        };
        for read in [
            &["status"][..],
            &["plan"],
            &["up", "--dry-run"],
            &["doctor"],
            &["probe", "--icmp", "198.51.100.10"],
            &["node", "check"],
            &["node", "persist", "--gateway", "10.0.0.1", "--dry-run"],
            &["install", "--dry-run"],
            &["uninstall", "--dry-run"],
        ] {
            assert!(!parse(read), "{read:?} is a read command");
        }
        for change in [
            &["up"][..],
            &["down"],
            &["doctor", "--fix"],
            &["node", "up", "--gateway", "10.0.0.1"],
            &["node", "down"],
            &["node", "persist", "--gateway", "10.0.0.1"],
            &["install", "--root", "/tmp/x"],
            &["uninstall"],
        ] {
            assert!(parse(change), "{change:?} changes the system");
        }
    }

    #[test]
    fn global_log_flags_go_anywhere_on_the_line() {
        let cli = Cli::try_parse_from(["natgw", "status", "--log-format", "json", "-vv"]).unwrap();
        assert_eq!((cli.log_format, cli.verbose), (Some(LogFormat::Json), 2));
        let cli = Cli::try_parse_from(["natgw", "--log-format=human", "-v", "down"]).unwrap();
        assert_eq!((cli.log_format, cli.verbose), (Some(LogFormat::Human), 1));
        assert!(Cli::try_parse_from(["natgw", "--log-format", "xml", "status"]).is_err());
    }
}
