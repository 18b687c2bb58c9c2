//! The benchmark network, one per gateway setup:
//!
//! ```text
//!  NAME-gen                     NAME-gw                        NAME-srv
//!  gen0 10.0.0.2/24 ─────── lan0 10.0.0.1/24                   lo 198.51.100.10 (services)
//!  lo: local 10.0.128.0/17        wan0 203.0.113.1/24 ──── eth0 203.0.113.254/24
//!  (the synthetic sources)        route 10.0.128.0/17            blackhole 198.51.100.20 (sink)
//!                                 via 10.0.0.2 (the setup's)     route 10.0.0.0/8 via gw
//! ```
//! The gateway has nothing but two plain veth interfaces: no bridge whose netfilter hooks
//! would run in its namespace. The generator is a router for the synthetic sources, so
//! the gateway needs one neighbour entry for all of them. The server forwards (so the
//! blackhole drops the flood silently, without ICMP errors back through the gateway) and
//! routes the private network back for the setup without NAT.

use std::net::Ipv4Addr;
use std::process::Output;

use super::flows::{SOURCES, SOURCES_PREFIX_LEN};
use crate::netns::{in_netns, ip, run, NetnsError};

pub const GENERATOR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const GATEWAY_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const GATEWAY_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The second address of a pool of two (added by the setup that uses it).
pub const GATEWAY_PUBLIC_2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The server's services (TCP, UDP echo).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Where floods go: routed to a blackhole on the server.
pub const SINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

pub const GENERATOR_IF: &str = "gen0";
pub const GATEWAY_PRIVATE_IF: &str = "lan0";
pub const GATEWAY_PUBLIC_IF: &str = "wan0";
pub const SERVER_IF: &str = "eth0";

const ROLES: [&str; 3] = ["gen", "gw", "srv"];

/// One benchmark network; dropping it removes its namespaces.
pub struct BenchNet {
    pub name: String,
    created: Vec<String>,
}

impl BenchNet {
    /// Builds the network with namespaces `NAME-gen`, `NAME-gw`, `NAME-srv`; on error,
    /// whatever was created is removed again.
    pub fn build(name: &str) -> Result<BenchNet, NetnsError> {
        let mut net = BenchNet {
            name: name.to_string(),
            created: Vec::new(),
        };
        net.create()?;
        Ok(net)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// `ip -n NS ARGS...` for a role.
    pub fn ip(&self, role: &str, args: &[&str]) -> Result<Output, NetnsError> {
        let ns = self.ns(role);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `PROGRAM ARGS...` inside a role's namespace (`ip netns exec`).
    pub fn exec(&self, role: &str, program: &str, args: &[&str]) -> Result<Output, NetnsError> {
        let ns = self.ns(role);
        let mut full = vec!["netns", "exec", ns.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Writes a sysctl inside a role's namespace.
    pub fn sysctl(&self, role: &str, name: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let value = value.to_string();
        in_netns(&self.ns(role), move || std::fs::write(&path, value))?.map_err(|source| {
            NetnsError::Enter {
                name: format!("{} (sysctl {name})", self.ns(role)),
                source,
            }
        })
    }

    /// The MAC address of an interface.
    pub fn mac(&self, role: &str, ifname: &str) -> Result<[u8; 6], NetnsError> {
        let ns = self.ns(role);
        let path = format!("/sys/class/net/{ifname}/address");
        let out = self.exec(role, "cat", &[&path])?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_mac(text.trim()).ok_or_else(|| NetnsError::Failed {
            command: format!("ip netns exec {ns} cat {path}"),
            stderr: format!("not a MAC address: {text:?}"),
        })
    }

    /// Steers the receive processing of `ifname` to the CPUs in `mask` (RPS), through
    /// the namespace's own sysfs (`ip netns exec` mounts it).
    pub fn steer_receive(&self, role: &str, ifname: &str, mask: u64) -> Result<(), NetnsError> {
        let path = format!("/sys/class/net/{ifname}/queues/rx-0/rps_cpus");
        let script = format!("echo {mask:x} > {path}");
        self.exec(role, "sh", &["-c", &script]).map(drop)
    }

    fn add_ns(&mut self, role: &str) -> Result<(), NetnsError> {
        let ns = self.ns(role);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns);
        self.ip(role, &["link", "set", "lo", "up"]).map(drop)
    }

    /// A veth pair between two namespaces, each end addressed and up.
    fn cable(
        &self,
        (a, a_if, a_cidr): (&str, &str, &str),
        (b, b_if, b_cidr): (&str, &str, &str),
    ) -> Result<(), NetnsError> {
        crate::netns::cable((&self.ns(a), a_if, a_cidr), (&self.ns(b), b_if, b_cidr))
    }

    fn create(&mut self) -> Result<(), NetnsError> {
        for role in ROLES {
            self.add_ns(role)?;
        }
        let sources = format!("{SOURCES}/{SOURCES_PREFIX_LEN}");
        self.cable(
            ("gen", GENERATOR_IF, &format!("{GENERATOR}/24")),
            ("gw", GATEWAY_PRIVATE_IF, &format!("{GATEWAY_PRIVATE}/24")),
        )?;
        self.cable(
            ("gw", GATEWAY_PUBLIC_IF, &format!("{GATEWAY_PUBLIC}/24")),
            ("srv", SERVER_IF, &format!("{UPSTREAM}/24")),
        )?;

        // Generator: the synthetic sources are its own (AnyIP), so it answers for them.
        self.ip("gen", &["route", "add", "local", &sources, "dev", "lo"])?;
        self.ip(
            "gen",
            &[
                "route",
                "add",
                "default",
                "via",
                &GATEWAY_PRIVATE.to_string(),
            ],
        )?;
        self.sysctl("gen", "net.ipv4.ip_local_port_range", "1024 65535")?;

        // Gateway: a plain host; each setup turns forwarding on its own way.
        self.ip(
            "gw",
            &["route", "add", "default", "via", &UPSTREAM.to_string()],
        )?;
        self.sysctl("gw", "net.ipv4.ip_forward", "0")?;

        // Server.
        self.ip(
            "srv",
            &["addr", "add", &format!("{SERVER}/32"), "dev", "lo"],
        )?;
        self.ip("srv", &["route", "add", "blackhole", &format!("{SINK}/32")])?;
        self.ip(
            "srv",
            &[
                "route",
                "add",
                "10.0.0.0/8",
                "via",
                &GATEWAY_PUBLIC.to_string(),
            ],
        )?;
        self.sysctl("srv", "net.ipv4.ip_forward", "1")?;
        Ok(())
    }

    /// Removes every namespace of this network (also done on drop).
    pub fn teardown(&mut self) {
        for ns in self.created.drain(..).rev() {
            crate::topology::delete_unmarked_namespace(&ns);
        }
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes every namespace whose name starts with `prefix` (a benchmark run's networks,
/// after Ctrl-C). Returns the namespaces removed.
pub fn remove_all(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|ns| ns.starts_with(prefix))
        .filter(|ns| crate::topology::delete_unmarked_namespace(ns))
        .collect()
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_addresses() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:7e"),
            Some([2, 0xab, 0, 0x10, 0xff, 0x7e])
        );
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:7e:01"), None);
        assert_eq!(parse_mac("zz:ab:00:10:ff:7e"), None);
    }
}
