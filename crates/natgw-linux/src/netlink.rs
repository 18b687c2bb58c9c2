//! Links, addresses and routes over rtnetlink. The crate is async; natgw's commands
//! are short-lived and sequential, so each call runs on a private current-thread runtime.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use natgw_core::{Address, Link, Route, RouteSpec};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use nix::errno::Errno;
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// (output interface index, MTU) of routes that set an MTU (`Observed::route_mtus`).
pub type RouteMtus = Vec<(u32, u32)>;

pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Connect)?;
        let handle = {
            let _guard = runtime.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
            runtime.spawn(connection);
            handle
        };
        Ok(Netlink { runtime, handle })
    }

    /// Runs a dump request to completion.
    fn dump<T>(
        &self,
        what: &str,
        stream: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
    ) -> Result<Vec<T>, NetlinkError> {
        self.runtime
            .block_on(stream.try_collect())
            .map_err(|source| request(what, source))
    }

    /// The old-style tc filters of kind bpf on the clsact qdisc of interface `index`
    /// (`tc filter show dev IFACE ingress|egress`); none when it has no clsact qdisc.
    pub fn bpf_filters(
        &self,
        index: u32,
        ingress: bool,
    ) -> Vec<natgw_core::doctor::tc_programs::TcFilter> {
        use natgw_core::doctor::tc_programs::{Program, TcFilter};
        use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
        let request = self.handle.traffic_filter(index as i32).get();
        let request = if ingress {
            request.ingress()
        } else {
            request.egress()
        };
        // No clsact qdisc: the kernel refuses the dump; there is nothing to list.
        let messages = self
            .dump("dump tc filters", request.execute())
            .unwrap_or_default();
        messages
            .into_iter()
            .filter_map(|m| {
                let mut bpf = false;
                let (mut id, mut name) = (None, String::new());
                for attribute in &m.attributes {
                    match attribute {
                        TcAttribute::Kind(kind) => bpf = kind == "bpf",
                        TcAttribute::Options(options) => {
                            for option in options {
                                match option {
                                    TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                        name = n.clone()
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                // The dump lists each priority's chain head without options too.
                let id = id.filter(|_| bpf)?;
                Some(TcFilter {
                    program: Program { id, name },
                    pref: (m.header.info >> 16) as u16,
                    handle: (u32::from(m.header.handle.major) << 16)
                        | u32::from(m.header.handle.minor),
                })
            })
            .collect()
    }

    /// The id of the XDP program attached to each interface that has one
    /// (`ip link show` prints it as `prog/xdp id N`): (interface index, program id).
    pub fn xdp_programs(&self) -> Result<Vec<(u32, u32)>, NetlinkError> {
        use netlink_packet_route::link::LinkXdp;
        let messages: Vec<_> = self.dump("dump links", self.handle.link().get().execute())?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let id = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                        LinkXdp::ProgId(id)
                        | LinkXdp::DrvProgId(id)
                        | LinkXdp::SkbProgId(id)
                        | LinkXdp::HwProgId(id) => Some(*id),
                        _ => None,
                    }),
                    _ => None,
                })?;
                Some((m.header.index, id))
            })
            .collect())
    }

    /// `ip link show`
    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<_> = self.dump("dump links", self.handle.link().get().execute())?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let mut link = Link {
                    index: m.header.index,
                    name: String::new(),
                    up: m.header.flags.contains(LinkFlags::Up),
                    carrier: m.header.flags.contains(LinkFlags::LowerUp),
                    loopback: m.header.flags.contains(LinkFlags::Loopback),
                    mtu: 0,
                    kind: None,
                };
                for attribute in m.attributes {
                    match attribute {
                        LinkAttribute::IfName(name) => link.name = name,
                        LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                        LinkAttribute::LinkInfo(infos) => {
                            link.kind = infos.iter().find_map(|i| match i {
                                netlink_packet_route::link::LinkInfo::Kind(kind) => {
                                    Some(kind.to_string())
                                }
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                link
            })
            .collect())
    }

    /// `ip link set NAME up`
    pub fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = rtnetlink::LinkUnspec::new_with_index(index).up().build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .map_err(|source| request(&format!("set link {index} up"), source))
    }

    /// `ip addr show`
    pub fn addresses(&self) -> Result<Vec<Address>, NetlinkError> {
        let messages: Vec<_> =
            self.dump("dump addresses", self.handle.address().get().execute())?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let mut local = None;
                let mut address = None;
                let mut permanent = m.header.flags.contains(AddressHeaderFlags::Permanent);
                for attribute in m.attributes {
                    match attribute {
                        AddressAttribute::Local(ip) => local = Some(ip),
                        AddressAttribute::Address(ip) => address = Some(ip),
                        AddressAttribute::Flags(flags) => {
                            permanent = flags.contains(AddressFlags::Permanent)
                        }
                        _ => {}
                    }
                }
                // IFA_LOCAL is the interface's own address on point-to-point links.
                Some(Address {
                    ifindex: m.header.index,
                    address: local.or(address)?,
                    prefix_len: m.header.prefix_len,
                    secondary: m.header.flags.contains(AddressHeaderFlags::Secondary),
                    dynamic: !permanent,
                })
            })
            .collect())
    }

    /// `ip addr del ADDR dev INDEX`; an address that is not there is success. Returns
    /// whether it was there.
    pub fn del_address(&self, index: u32, address: std::net::IpAddr) -> Result<bool, NetlinkError> {
        let messages: Vec<_> = self.dump(
            "dump addresses",
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(address)
                .execute(),
        )?;
        let mut found = false;
        for message in messages {
            found = true;
            self.runtime
                .block_on(self.handle.address().del(message).execute())
                .map_err(|source| request(&format!("delete address {address}"), source))?;
        }
        Ok(found)
    }

    /// `ip route show table main` and `ip -6 route show table main`, and (output
    /// interface, MTU) of every IPv4 route, in any table, that sets an MTU
    /// (`ip route show table all | grep mtu`): one dump per family serves both.
    pub fn routes(&self) -> Result<(Vec<Route>, RouteMtus), NetlinkError> {
        let mut routes = Vec::new();
        let mut mtus = Vec::new();
        // Every table (route_of keeps the main one's).
        let all = u32::from(RouteHeader::RT_TABLE_UNSPEC);
        for filter in [
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(all).build(),
            RouteMessageBuilder::<Ipv6Addr>::new().table_id(all).build(),
        ] {
            let messages: Vec<RouteMessage> =
                self.dump("dump routes", self.handle.route().get(filter).execute())?;
            for m in messages {
                if m.header.address_family == netlink_packet_route::AddressFamily::Inet {
                    mtus.extend(route_mtus(&m));
                }
                routes.extend(route_of(m));
            }
        }
        Ok((routes, mtus))
    }

    /// `ip route add TO via VIA proto OWNER`. A route to TO that is already there is
    /// an error (EEXIST): it is not natgw's, so natgw must neither record it as its own
    /// nor silently leave the desired route out.
    pub fn add_route(&self, spec: &RouteSpec, owner: u8) -> Result<(), NetlinkError> {
        self.runtime
            .block_on(
                self.handle
                    .route()
                    .add(route_message_with(spec, owner))
                    .execute(),
            )
            .map_err(|source| {
                request(
                    &format!("add route {} via {} proto {owner}", spec.to, spec.via),
                    source,
                )
            })
    }

    /// `ip route add TO via VIA proto PROTOCOL`: puts back a route natgw did not own,
    /// with the protocol it had; one already there is success.
    pub fn restore_route(&self, spec: &RouteSpec, protocol: u8) -> Result<(), NetlinkError> {
        match self.add_route(spec, protocol) {
            Err(NetlinkError::Request { source, .. }) if errno(&source) == Some(Errno::EEXIST) => {
                Ok(())
            }
            other => other,
        }
    }

    /// `ip route replace TO via VIA proto OWNER`
    pub fn replace_route(&self, spec: &RouteSpec, owner: u8) -> Result<(), NetlinkError> {
        self.runtime
            .block_on(
                self.handle
                    .route()
                    .add(route_message_with(spec, owner))
                    .replace()
                    .execute(),
            )
            .map_err(|source| {
                request(
                    &format!("replace route {} via {}", spec.to, spec.via),
                    source,
                )
            })
    }

    /// Whether `ip` answered neighbour discovery on `ifindex` (`ip neigh show`):
    /// `Some(true)` reachable or recently so, `Some(false)` failed, `None` unknown yet.
    pub fn neighbour_answered(
        &self,
        ifindex: u32,
        ip: IpAddr,
    ) -> Result<Option<bool>, NetlinkError> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourState,
        };
        let messages: Vec<_> =
            self.dump("dump neighbours", self.handle.neighbours().get().execute())?;
        let entry = messages.into_iter().find(|m| {
            m.header.ifindex == ifindex
                && m.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        IpAddr::V4(*v4) == ip
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        IpAddr::V6(*v6) == ip
                    }
                    _ => false,
                })
        });
        Ok(entry.and_then(|m| match m.header.state {
            NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Permanent
            | NeighbourState::Noarp => Some(true),
            NeighbourState::Failed => Some(false),
            _ => None,
        }))
    }

    /// `ip route del TO via VIA proto OWNER`: the kernel deletes only a route with that
    /// protocol, so another owner's equal route is never removed; a route already gone
    /// is success.
    pub fn del_route(&self, spec: &RouteSpec, owner: u8) -> Result<(), NetlinkError> {
        let result = self.runtime.block_on(
            self.handle
                .route()
                .del(route_message_with(spec, owner))
                .execute(),
        );
        match result {
            Err(e) if matches!(errno(&e), Some(Errno::ESRCH | Errno::ENOENT)) => Ok(()),
            other => other.map_err(|source| {
                request(
                    &format!("delete route {} via {}", spec.to, spec.via),
                    source,
                )
            }),
        }
    }
}

impl Netlink {
    /// `ip route add DEST [via GW] [dev DEV] metric M proto P`: puts back a route
    /// exactly as it was observed (a device-only default too); one already there is
    /// success.
    pub fn add_route_exact(&self, route: &Route) -> Result<(), NetlinkError> {
        let result = self
            .runtime
            .block_on(self.handle.route().add(exact_message(route)).execute());
        match result {
            Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
            other => {
                other.map_err(|source| request(&format!("add route {}", describe(route)), source))
            }
        }
    }

    /// `ip route del DEST [via GW] [dev DEV] metric M proto P`: deletes exactly that
    /// route and no other; one already gone is success.
    pub fn del_route_exact(&self, route: &Route) -> Result<(), NetlinkError> {
        let result = self
            .runtime
            .block_on(self.handle.route().del(exact_message(route)).execute());
        match result {
            Err(e) if matches!(errno(&e), Some(Errno::ESRCH | Errno::ENOENT)) => Ok(()),
            other => other
                .map_err(|source| request(&format!("delete route {}", describe(route)), source)),
        }
    }
}

/// `DEST via GW dev IFINDEX metric M proto P`, as `ip route` would print it.
fn describe(route: &Route) -> String {
    let mut text = route.destination.to_string();
    if let Some(gw) = route.gateway {
        text += &format!(" via {gw}");
    }
    if let Some(oif) = route.oif {
        text += &format!(" dev #{oif}");
    }
    text + &format!(" metric {} proto {}", route.metric, route.protocol)
}

fn exact_message(route: &Route) -> RouteMessage {
    use netlink_packet_route::route::RouteScope;
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.addr(), route.destination.prefix_len())
        .expect("an observed route's prefix fits its family");
    match route.gateway {
        Some(gw) => {
            builder = builder
                .gateway(gw)
                .expect("an observed route's gateway has its family")
        }
        // A route without a gateway reaches its destination on the link itself.
        None => builder = builder.scope(RouteScope::Link),
    }
    if let Some(oif) = route.oif {
        builder = builder.output_interface(oif);
    }
    builder
        .priority(route.metric)
        .protocol(RouteProtocol::from(route.protocol))
        .build()
}

fn request(what: &str, source: rtnetlink::Error) -> NetlinkError {
    NetlinkError::Request {
        what: what.to_string(),
        source,
    }
}

fn errno(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) => {
            message.to_io().raw_os_error().map(Errno::from_raw)
        }
        _ => None,
    }
}

fn route_message_with(spec: &RouteSpec, protocol: u8) -> RouteMessage {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(spec.to.addr(), spec.to.prefix_len())
        .expect("destination family checked by detection")
        .gateway(spec.via)
        .expect("gateway family checked by detection");
    builder.protocol(RouteProtocol::from(protocol)).build()
}

/// (output interface, MTU) of a route that sets an MTU: one pair per interface of a
/// multipath route, interface 0 for a route that names none (a nexthop object's).
fn route_mtus(m: &RouteMessage) -> Vec<(u32, u32)> {
    let mtu = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Metrics(metrics) => metrics.iter().find_map(|m| match m {
            netlink_packet_route::route::RouteMetric::Mtu(mtu) => Some(*mtu),
            _ => None,
        }),
        _ => None,
    });
    let Some(mtu) = mtu.filter(|mtu| *mtu > 0) else {
        return Vec::new();
    };
    let mut interfaces: Vec<u32> = m
        .attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(index) => vec![*index],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => Vec::new(),
        })
        .collect();
    if interfaces.is_empty() {
        interfaces.push(0);
    }
    interfaces.into_iter().map(|oif| (oif, mtu)).collect()
}

fn route_of(m: RouteMessage) -> Option<Route> {
    let main = m.header.table == RouteHeader::RT_TABLE_MAIN;
    let mut table_main = main;
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attribute in &m.attributes {
        match attribute {
            RouteAttribute::Destination(a) => destination = ip_of(a),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) => table_main = *t == u32::from(RouteHeader::RT_TABLE_MAIN),
            _ => {}
        }
    }
    if !table_main {
        return None;
    }
    let unspecified = match m.header.address_family {
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let destination = IpNet::new(
        destination.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    Some(Route {
        destination,
        gateway,
        oif,
        protocol: u8::from(m.header.protocol),
        metric,
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
