//! The lab network:
//!
//! ```text
//!  NAME-n1 10.0.0.11 ─┐                                              NAME-pub
//!  NAME-n2 10.0.0.12 ─┼─ NAME-sw (br0) ─ lan0 NAME-head wan0 ───── eth0 203.0.113.254
//!  NAME-r1 10.0.0.254 ┘  (bridge only)   10.0.0.1     203.0.113.1      lo 198.51.100.10 (server)
//!     └ eth1 10.20.0.1 ── NAME-far 10.20.0.5   (with Spec::router)    lo 198.51.100.11 (alternate)
//! ```
//! The headnode gets plain interfaces; the private switch lives in its own namespace
//! with bridge netfilter off, so only the headnode's own rules act on its traffic.
//! `pub` is the upstream router and the public server in one, and has no route to the
//! private network: replies reach private nodes only through the headnode's NAT.
//!
//! With `Spec::ipv6` the lab is dual stack: wan0 2001:db8:1::1/64 with an IPv6 default
//! route to `pub` (2001:db8:1::fe), the servers at 2001:db8:100::10 and ::11 on `pub`'s
//! loopback, and the private side on fd00:77::/64 (nat66, nptv6) or the global
//! 2001:db8:77::/64 (routed), nodes at ::11, ::12, ... `pub` routes the routed prefix, or
//! the nptv6 public prefix 2001:db8:177::/64, to the headnode.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use natgw_core::config::Ipv6Mode;

use crate::marker::{self, Marker, Owner};
use crate::netns::{in_netns, ip, NetnsError};

pub const PRIVATE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const HEAD_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A second address of the public server, for RFC 5780 STUN behaviour tests.
pub const SERVER_ALT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const BEHIND_ROUTER_NODE: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
pub const HEAD_PUBLIC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const UPSTREAM6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const SERVER6_ALT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11);
/// The public prefix the upstream routes to the headnode in an nptv6 lab.
pub const NPTV6_PUBLIC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x177, 0, 0, 0, 0, 0);
/// A host beyond `pub`, behind a 1280-byte link: bigger packets to it get a
/// packet-too-big from `pub` (path MTU discovery through the headnode).
pub const BEYOND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 2);
const BEYOND6_ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);

/// Every role a lab namespace can have; `remove` looks for exactly these.
const ROLES: [&str; 16] = [
    "head", "sw", "pub", "r1", "far", "beyond", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8",
    "head2", "psw",
];

/// HA lab (`Spec::ha`): the shared addresses and each headnode's own.
pub const HA_PUBLIC_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const HA_HEADS: [(&str, Ipv4Addr, Ipv4Addr, Ipv4Addr); 2] = [
    (
        "head",
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(203, 0, 113, 2),
        Ipv4Addr::new(192, 168, 255, 1),
    ),
    (
        "head2",
        Ipv4Addr::new(10, 0, 0, 3),
        Ipv4Addr::new(203, 0, 113, 3),
        Ipv4Addr::new(192, 168, 255, 2),
    ),
];

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Private nodes n1..nN (1 to 8).
    pub nodes: usize,
    /// Add router r1 on the private network with the network 10.20.0.0/24 behind it.
    pub router: bool,
    /// Two headnodes (head, head2) on a private and a public switch with a sync link
    /// between them; the private nodes' gateway is the shared address 10.0.0.1.
    pub ha: bool,
    /// Dual stack, addressed for this IPv6 mode (`Off`: IPv4 only).
    pub ipv6: Ipv6Mode,
}

impl Spec {
    /// `n` private nodes, no router.
    pub fn nodes(n: usize) -> Spec {
        Spec {
            nodes: n,
            router: false,
            ha: false,
            ipv6: Ipv6Mode::Off,
        }
    }

    /// Dual stack, addressed for `mode`.
    pub fn with_ipv6(self, mode: Ipv6Mode) -> Spec {
        Spec { ipv6: mode, ..self }
    }

    /// The private IPv6 network: global for routed, ULA otherwise; `None` without IPv6.
    pub fn private6(&self) -> Option<Ipv6Addr> {
        match self.ipv6 {
            Ipv6Mode::Off => None,
            Ipv6Mode::Routed => Some(Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0)),
            Ipv6Mode::Nat66 | Ipv6Mode::Nptv6 => {
                Some(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0))
            }
        }
    }

    /// The HA pair instead of a single headnode.
    pub fn with_ha(self) -> Spec {
        Spec { ha: true, ..self }
    }

    /// Adds router r1 with 10.20.0.0/24 behind it.
    pub fn with_router(self) -> Spec {
        Spec {
            router: true,
            ..self
        }
    }
}

impl Default for Spec {
    fn default() -> Self {
        Spec::nodes(2)
    }
}

/// A built lab; dropping it removes every namespace it created.
pub struct Lab {
    pub name: String,
    pub spec: Spec,
    created: Vec<String>,
    pub keep: bool,
    /// Namespaces of an earlier, abandoned lab of this name, removed by `build`.
    pub leftovers: Vec<String>,
}

impl Lab {
    /// Builds the topology. On error, whatever was created is removed again. A lab
    /// of this name that is running or kept, or a namespace of one of its names that
    /// the lab did not make, is refused; an abandoned one (its owner died) is removed.
    pub fn build(name: &str, spec: Spec) -> Result<Lab, NetnsError> {
        assert!(
            (1..=8).contains(&spec.nodes),
            "a lab has 1 to 8 private nodes"
        );
        let leftovers = claim(name)?;
        let mut lab = Lab {
            name: name.to_string(),
            spec,
            created: Vec::new(),
            keep: false,
            leftovers,
        };
        lab.create()?;
        Ok(lab)
    }

    /// Namespace name of a role (`head`, `pub`, `n1`, ...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    /// Private node names: n1, n2, ...
    pub fn nodes(&self) -> Vec<String> {
        (1..=self.spec.nodes).map(|i| format!("n{i}")).collect()
    }

    pub fn node_address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 10 + i as u8)
    }

    /// IPv6 address of node `i` (1-based) in the private prefix, or the headnode's
    /// private address for `i = 0`; `None` without IPv6.
    pub fn node_address6(&self, i: usize) -> Option<Ipv6Addr> {
        let mut segments = self.spec.private6()?.segments();
        segments[7] = if i == 0 { 1 } else { 0x10 + i as u16 };
        Some(Ipv6Addr::from(segments))
    }

    /// Where the far side sees node `i`'s IPv6 traffic come from in this lab's mode.
    pub fn expected_source6(&self, i: usize) -> Option<Ipv6Addr> {
        let own = self.node_address6(i)?;
        Some(match self.spec.ipv6 {
            Ipv6Mode::Nat66 => HEAD_PUBLIC6,
            Ipv6Mode::Nptv6 => {
                let mut segments = NPTV6_PUBLIC.segments();
                segments[4..].copy_from_slice(&own.segments()[4..]);
                Ipv6Addr::from(segments)
            }
            _ => own,
        })
    }

    /// Namespaces that exist for this lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// `ip -n NS ARGS...` for a role.
    pub fn ip(&self, role: &str, args: &[&str]) -> Result<std::process::Output, NetnsError> {
        let ns = self.ns(role);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Writes a sysctl inside a role's namespace.
    pub fn sysctl(&self, role: &str, name: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let value = value.to_string();
        in_netns(&self.ns(role), move || std::fs::write(&path, value))?.map_err(|source| {
            NetnsError::Enter {
                name: format!("{role} (sysctl {name})"),
                source,
            }
        })
    }

    /// Reads a sysctl inside a role's namespace.
    pub fn read_sysctl(&self, role: &str, name: &str) -> Result<String, NetnsError> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        in_netns(&self.ns(role), move || std::fs::read_to_string(&path))?
            .map(|v| v.trim().to_string())
            .map_err(|source| NetnsError::Enter {
                name: format!("{role} (sysctl {name})"),
                source,
            })
    }

    fn add_ns(&mut self, role: &str) -> Result<(), NetnsError> {
        let ns = self.ns(role);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns);
        self.save_marker(Some(Owner::current()))?;
        if self.spec.ipv6 != Ipv6Mode::Off {
            // No duplicate address detection: addresses are usable at once, not
            // tentative for a second or two.
            for conf in ["all", "default"] {
                self.sysctl(role, &format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
            }
        }
        self.ip(role, &["link", "set", "lo", "up"]).map(drop)
    }

    /// `ip -6 addr add CIDR dev IFNAME nodad` in a role's namespace.
    fn add_address6(&self, role: &str, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        self.ip(role, &["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
            .map(drop)
    }

    /// The IPv6 half of a dual-stack lab (see the module documentation).
    fn create_ipv6(&mut self) -> Result<(), NetnsError> {
        let Some(private) = self.spec.private6() else {
            return Ok(());
        };
        self.sysctl("head", "net.ipv6.conf.all.forwarding", "0")?;
        self.sysctl("pub", "net.ipv6.conf.all.forwarding", "1")?;
        self.add_address6("head", "wan0", &format!("{HEAD_PUBLIC6}/64"))?;
        self.add_address6("pub", "eth0", &format!("{UPSTREAM6}/64"))?;
        for server in [SERVER6, SERVER6_ALT] {
            self.add_address6("pub", "lo", &format!("{server}/128"))?;
        }
        self.ip(
            "head",
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &UPSTREAM6.to_string(),
            ],
        )?;
        let gateway = self.node_address6(0).expect("dual stack");
        self.add_address6("head", "lan0", &format!("{gateway}/64"))?;
        for i in 1..=self.spec.nodes {
            let node = format!("n{i}");
            let address = self.node_address6(i).expect("dual stack");
            self.add_address6(&node, "eth0", &format!("{address}/64"))?;
            self.ip(
                &node,
                &["-6", "route", "add", "default", "via", &gateway.to_string()],
            )?;
        }
        // The upstream routes the prefix it delegated to the headnode.
        let routed = match self.spec.ipv6 {
            Ipv6Mode::Routed => Some(private),
            Ipv6Mode::Nptv6 => Some(NPTV6_PUBLIC),
            _ => None,
        };
        self.add_ns("beyond")?;
        self.cable(
            ("pub", "eth1", &format!("{BEYOND6_ROUTER}/64")),
            ("beyond", "eth0", &format!("{BEYOND6}/64")),
        )?;
        self.ip("pub", &["link", "set", "eth1", "mtu", "1280"])?;
        self.ip(
            "beyond",
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &BEYOND6_ROUTER.to_string(),
            ],
        )?;
        if let Some(prefix) = routed {
            self.ip(
                "pub",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{prefix}/64"),
                    "via",
                    &HEAD_PUBLIC6.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    fn save_marker(&self, owner: Option<Owner>) -> Result<(), NetnsError> {
        let namespaces = self
            .created
            .iter()
            .filter_map(|ns| Some((ns.clone(), marker::inode(ns)?)))
            .collect();
        Marker { owner, namespaces }
            .save(&self.name)
            .map_err(|source| NetnsError::Marker {
                name: self.name.clone(),
                source,
            })
    }

    /// Leaves the lab up after this process: `natgw lab down` removes it, and a new
    /// lab of this name is refused until then.
    pub fn keep_up(&mut self) -> Result<(), NetnsError> {
        self.keep = true;
        self.save_marker(None)
    }

    /// A veth pair from `role`'s `ifname` to a port of the private switch.
    fn plug_into_switch(&self, role: &str, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        self.plug_into("sw", role, ifname, cidr)
    }

    /// A veth pair from `role`'s `ifname` to port `p-ROLE` of switch `switch`.
    fn plug_into(
        &self,
        switch: &str,
        role: &str,
        ifname: &str,
        cidr: &str,
    ) -> Result<(), NetnsError> {
        let port = format!("p-{role}");
        let sw = self.ns(switch);
        self.ip(
            role,
            &[
                "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", &sw,
            ],
        )?;
        self.ip(switch, &["link", "set", &port, "master", "br0", "up"])?;
        self.ip(role, &["addr", "add", cidr, "dev", ifname])?;
        self.ip(role, &["link", "set", ifname, "up"]).map(drop)
    }

    /// A veth pair between two namespaces, each end addressed and up.
    fn cable(
        &self,
        (a, a_if, a_cidr): (&str, &str, &str),
        (b, b_if, b_cidr): (&str, &str, &str),
    ) -> Result<(), NetnsError> {
        crate::netns::cable((&self.ns(a), a_if, a_cidr), (&self.ns(b), b_if, b_cidr))
    }

    fn default_route(&self, role: &str, via: Ipv4Addr) -> Result<(), NetnsError> {
        self.ip(role, &["route", "add", "default", "via", &via.to_string()])
            .map(drop)
    }

    /// Makes the upstream host route the private network at the headnode's public
    /// address: a hostile neighbour trying unsolicited connections to private nodes.
    pub fn route_private_from_upstream(&self) -> Result<(), NetnsError> {
        self.ip(
            "pub",
            &[
                "route",
                "add",
                "10.0.0.0/24",
                "via",
                &HEAD_PUBLIC.to_string(),
            ],
        )
        .map(drop)
    }

    /// The IPv6 counterpart: the upstream routes the private IPv6 prefix at the
    /// headnode (a routed lab has that route already).
    pub fn route_private6_from_upstream(&self) -> Result<(), NetnsError> {
        let Some(private) = self.spec.private6() else {
            return Ok(());
        };
        if self.spec.ipv6 == Ipv6Mode::Routed {
            return Ok(());
        }
        self.ip(
            "pub",
            &[
                "-6",
                "route",
                "add",
                &format!("{private}/64"),
                "via",
                &HEAD_PUBLIC6.to_string(),
            ],
        )
        .map(drop)
    }

    fn switch(&mut self, role: &str) -> Result<(), NetnsError> {
        self.add_ns(role)?;
        self.ip(role, &["link", "add", "br0", "type", "bridge"])?;
        self.ip(role, &["link", "set", "br0", "up"])?;
        for family in ["iptables", "ip6tables", "arptables"] {
            // Absent when br_netfilter is not loaded: then there is nothing to turn off.
            let _ = self.sysctl(role, &format!("net.bridge.bridge-nf-call-{family}"), "0");
        }
        Ok(())
    }

    fn create(&mut self) -> Result<(), NetnsError> {
        self.switch("sw")?;
        for role in ["head", "pub"] {
            self.add_ns(role)?;
        }
        if self.spec.ha {
            self.create_ha_heads()?;
        } else {
            // Headnode: private side on the switch, public side straight to the upstream.
            self.plug_into_switch("head", "lan0", &format!("{PRIVATE_GATEWAY}/24"))?;
            self.cable(
                ("head", "wan0", &format!("{HEAD_PUBLIC}/24")),
                ("pub", "eth0", &format!("{UPSTREAM}/24")),
            )?;
            self.default_route("head", UPSTREAM)?;
            // Start from a plain host: forwarding off, whatever the root namespace has.
            self.sysctl("head", "net.ipv4.ip_forward", "0")?;
        }
        self.ip(
            "pub",
            &["addr", "add", &format!("{SERVER}/32"), "dev", "lo"],
        )?;
        self.ip(
            "pub",
            &["addr", "add", &format!("{SERVER_ALT}/32"), "dev", "lo"],
        )?;

        for (i, node) in self.nodes().iter().enumerate() {
            self.add_ns(node)?;
            self.plug_into_switch(node, "eth0", &format!("{}/24", Lab::node_address(i + 1)))?;
            self.default_route(node, PRIVATE_GATEWAY)?;
        }

        if self.spec.router {
            self.add_ns("r1")?;
            self.add_ns("far")?;
            self.plug_into_switch("r1", "eth0", &format!("{ROUTER}/24"))?;
            self.cable(
                ("r1", "eth1", "10.20.0.1/24"),
                ("far", "eth0", &format!("{BEHIND_ROUTER_NODE}/24")),
            )?;
            self.default_route("r1", PRIVATE_GATEWAY)?;
            self.sysctl("r1", "net.ipv4.ip_forward", "1")?;
            self.default_route("far", Ipv4Addr::new(10, 20, 0, 1))?;
        }
        self.create_ipv6()
    }

    /// Two headnodes on the private switch and a public switch (with the upstream),
    /// and a direct sync cable between them.
    fn create_ha_heads(&mut self) -> Result<(), NetnsError> {
        self.add_ns("head2")?;
        self.switch("psw")?;
        self.plug_into("psw", "pub", "eth0", &format!("{UPSTREAM}/24"))?;
        for (role, private, public, _) in HA_HEADS {
            self.plug_into("sw", role, "lan0", &format!("{private}/24"))?;
            self.plug_into("psw", role, "wan0", &format!("{public}/24"))?;
            self.default_route(role, UPSTREAM)?;
            self.sysctl(role, "net.ipv4.ip_forward", "0")?;
        }
        let [(a, .., a_sync), (b, .., b_sync)] = HA_HEADS;
        self.cable(
            (a, "sync0", &format!("{a_sync}/30")),
            (b, "sync0", &format!("{b_sync}/30")),
        )
    }

    /// Removes every namespace of this lab (also done on drop unless `keep`).
    pub fn teardown(&mut self) {
        if let Some(m) = Marker::load(&self.name) {
            remove_marked(&self.name, &m);
        }
        // Created but not yet in the marker: still ours, by this process's own list.
        for ns in self.created.drain(..).rev() {
            if let Some(inode) = marker::inode(&ns) {
                delete_namespace(&ns, inode);
            }
        }
        Marker::remove(&self.name);
        natgw_linux::state_store::prune_dead_namespaces();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// What `remove` did.
#[derive(Debug, Default)]
pub struct Removed {
    pub removed: Vec<String>,
    /// Namespaces with the lab's names that it did not make, left alone.
    pub foreign: Vec<String>,
}

/// Namespaces named like lab `name`'s that exist now.
fn existing(name: &str) -> Vec<String> {
    ROLES
        .iter()
        .map(|role| format!("{name}-{role}"))
        .filter(|ns| marker::inode(ns).is_some())
        .collect()
}

/// Refuses a running or kept lab and foreign namespaces; removes an abandoned lab;
/// then records this process as the owner of `name`.
fn claim(name: &str) -> Result<Vec<String>, NetnsError> {
    let mut leftovers = Vec::new();
    if let Some(m) = Marker::load(name) {
        match m.owner {
            None => return Err(NetnsError::Kept { name: name.into() }),
            Some(o) if o.alive() && o != Owner::current() => {
                return Err(NetnsError::Busy {
                    name: name.into(),
                    pid: o.pid,
                })
            }
            _ => leftovers = remove_marked(name, &m),
        }
    }
    if let Some(ns) = existing(name).into_iter().next() {
        return Err(NetnsError::Foreign {
            name: name.into(),
            ns,
        });
    }
    Marker {
        owner: Some(Owner::current()),
        namespaces: Vec::new(),
    }
    .save(name)
    .map_err(|source| NetnsError::Marker {
        name: name.into(),
        source,
    })?;
    Ok(leftovers)
}

/// Removes lab `name` (`natgw lab down`): exactly the namespaces its marker names,
/// and only while each is still the namespace the lab created. A running lab is
/// refused; namespaces with its names that it did not make are reported, not touched.
pub fn remove(name: &str) -> Result<Removed, NetnsError> {
    let mut done = Removed::default();
    if let Some(m) = Marker::load(name) {
        if let Some(o) = m.owner.filter(|o| o.alive() && *o != Owner::current()) {
            return Err(NetnsError::Busy {
                name: name.into(),
                pid: o.pid,
            });
        }
        done.removed = remove_marked(name, &m);
    }
    done.foreign = existing(name);
    Ok(done)
}

/// Removes lab `name` after its owner `owner` died without cleaning up (the guard
/// process of `natgw lab` calls this); a lab of that name owned by anyone else is
/// left alone.
pub fn remove_abandoned(name: &str, owner: Owner) -> Vec<String> {
    match Marker::load(name) {
        Some(m) if m.owner == Some(owner) => remove_marked(name, &m),
        _ => Vec::new(),
    }
}

fn remove_marked(name: &str, m: &Marker) -> Vec<String> {
    let removed = m
        .namespaces
        .iter()
        .rev()
        .filter(|(ns, inode)| marker::inode(ns) == Some(*inode))
        .filter(|(ns, inode)| delete_namespace(ns, *inode))
        .map(|(ns, _)| ns.clone())
        .collect();
    Marker::remove(name);
    natgw_linux::state_store::prune_dead_namespaces();
    removed
}

/// Deletes a namespace together with the records natgw kept for it (the benchmark's
/// namespaces, which no marker lists).
pub(crate) fn delete_unmarked_namespace(ns: &str) -> bool {
    let _ = in_netns(ns, natgw_linux::state_store::remove_namespace_records);
    ip(&["netns", "del", ns]).is_ok()
}

/// Deletes a namespace with whatever still runs in it and the records natgw kept
/// for it.
fn delete_namespace(ns: &str, inode: u64) -> bool {
    for pid in marker::processes_in(inode) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    delete_unmarked_namespace(ns)
}
