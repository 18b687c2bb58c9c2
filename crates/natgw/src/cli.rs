//! Command-line arguments (stage one: raw flags; `commands::gateway` resolves them).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "natgw",
    version,
    about = "Make this Linux host the outbound NAT gateway of its private network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
        #[arg(long)]
        json: bool,
    },
    /// Print what `up` would change, and what was detected (same as `up --dry-run`).
    Plan {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove everything natgw added and restore the sysctl values it changed.
    Down {
        #[arg(long)]
        json: bool,
    },
    /// Roles, drift against the desired state, translation counters, conntrack usage.
    Status {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        json: bool,
    },
    /// Find every reason the gateway fails to give outbound connectivity; --fix repairs
    /// what is safe to repair.
    Doctor {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Bring configured interfaces up, turn forwarding on, apply natgw's rules.
        #[arg(long)]
        fix: bool,
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
    /// Run a STUN server (RFC 5389 Binding, RFC 5780 with --alt) on a public host.
    StunServer {
        /// Primary address [port 3478 when omitted].
        #[arg(long, value_name = "ADDR[:PORT]")]
        listen: String,
        /// Alternate address (a second IP of this host) [port 3479 when omitted].
        #[arg(long, value_name = "ADDR[:PORT]")]
        alt: Option<String>,
    },
    /// Demo: build a throwaway network in namespaces, run natgw in it, prove it works.
    Lab(LabArgs),
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
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Remove a topology left by `natgw lab --keep`.
    Down,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// STUN server for the mapped address and the behaviour tests.
    #[arg(long, value_name = "HOST:PORT")]
    pub stun: Option<String>,
    /// TCP connect probe, repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Vec<String>,
    /// UDP request/response probe, repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub udp: Vec<String>,
    /// ICMP echo probe, repeatable.
    #[arg(long, value_name = "HOST")]
    pub icmp: Vec<String>,
    /// Per-probe timeout in seconds.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub timeout: f64,
    /// Also measure the UDP binding lifetime, up to SECS idle (takes about 2 x SECS).
    #[arg(long, value_name = "SECS")]
    pub lifetime: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Point the IPv4 default route at the gateway (checks it is on-link and answers).
    Up {
        #[arg(long, value_name = "ADDR")]
        gateway: IpAddr,
        /// Replace a different existing default route (it is recorded for `node down`).
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore the default route as it was before `node up`.
    Down {
        #[arg(long)]
        json: bool,
    },
    /// Report the default route, whether the gateway answers, and the DNS resolvers.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Make the default route survive reboot, for the network manager in use.
    Persist {
        #[arg(long, value_name = "ADDR")]
        gateway: IpAddr,
        /// Print the file changes without writing them.
        #[arg(long)]
        dry_run: bool,
        /// Operate on the configuration under this directory instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
}
