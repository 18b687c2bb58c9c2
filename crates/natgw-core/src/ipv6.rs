//! The IPv6 side of the gateway: which mode, which private prefixes, which public
//! address or prefix, and the sysctls IPv6 forwarding needs.
//!
//! Detection when `[ipv6] mode` is unset: no IPv6 prefix on the private interfaces, or
//! no IPv6 default route on the public one, means `off`; a global prefix on the private
//! side means `routed` (the upstream routes it here); a ULA private side behind a
//! public interface with exactly one global address means `nat66`. `public_prefix`
//! alone means `nptv6`, `address` alone `nat66`. Anything else is refused with the key
//! that settles it.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use crate::config::{Ipv6Config, Ipv6Mode};
use crate::desired::{Ipv6Gateway, Ipv6Translation};
use crate::detect::DetectError;
use crate::observed::{Link, Observed};
use crate::prefixes::normalise;
use crate::{join, validate};

/// Writing it turns forwarding on for every interface (and `default`).
pub const IPV6_FORWARD: &str = "net.ipv6.conf.all.forwarding";
/// `rtm_protocol` of routes the kernel learnt from router advertisements.
const RTPROT_RA: u8 = 9;

/// `net.ipv6.conf.IFACE.accept_ra`: with forwarding on, only the value 2 keeps
/// accepting router advertisements.
pub fn accept_ra(iface: &str) -> String {
    format!("net.ipv6.conf.{iface}.accept_ra")
}

/// Unique local addresses (fc00::/7, RFC 4193): private by definition, never routed
/// on the internet.
pub fn is_ula(addr: &Ipv6Addr) -> bool {
    addr.segments()[0] & 0xfe00 == 0xfc00
}

/// An address that names a network: not link-local, loopback, multicast, unspecified.
fn is_routable(addr: &Ipv6Addr) -> bool {
    let host = IpNet::V6(Ipv6Net::new(*addr, 128).expect("/128 is valid"));
    !validate::SPECIAL_V6.iter().any(|(_, range, len)| {
        IpNet::V6(Ipv6Net::new(*range, *len).expect("valid range")).contains(&host)
    })
}

fn err(reason: String) -> DetectError {
    DetectError::Ipv6(reason)
}

/// What the IPv6 side looks like on this host.
struct Seen {
    /// The private interfaces' ULA and global networks, with where each came from.
    connected: Vec<(Ipv6Net, String)>,
    /// The public interface's global (non-ULA) addresses, and whether each is dynamic.
    public_globals: Vec<(Ipv6Addr, bool)>,
    /// The public interface's networks (any routable address).
    public_networks: Vec<IpNet>,
    uplink_default: bool,
    /// The public side is configured by router advertisements.
    by_ra: bool,
}

fn seen(observed: &Observed, public: &Link, private: &[&Link]) -> Seen {
    let v6 = |index: u32| {
        observed
            .addresses_of(index)
            .filter_map(|a| match a.address {
                IpAddr::V6(v6) if is_routable(&v6) => Some((v6, a)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let connected = private
        .iter()
        .flat_map(|link| {
            v6(link.index).into_iter().map(|(addr, a)| {
                let net = Ipv6Net::new(addr, a.prefix_len)
                    .expect("kernel prefix length fits")
                    .trunc();
                (
                    net,
                    format!("address {addr}/{} on {}", a.prefix_len, link.name),
                )
            })
        })
        .collect();
    let public_addresses = v6(public.index);
    let defaults: Vec<_> = observed
        .ipv6_defaults()
        .filter(|r| r.oif == Some(public.index))
        .collect();
    Seen {
        connected,
        public_globals: public_addresses
            .iter()
            .filter(|(addr, _)| !is_ula(addr))
            .map(|(addr, a)| (*addr, a.dynamic))
            .collect(),
        public_networks: public_addresses.iter().map(|(_, a)| a.network()).collect(),
        uplink_default: !defaults.is_empty(),
        by_ra: defaults.iter().any(|r| r.protocol == RTPROT_RA)
            || public_addresses
                .iter()
                .any(|(addr, a)| a.dynamic && !is_ula(addr)),
    }
}

/// The IPv6 gateway, or `None` for mode `off`; warnings for what does not stop `up`.
pub fn resolve(
    config: &Ipv6Config,
    observed: &Observed,
    public: &Link,
    private: &[&Link],
    warnings: &mut Vec<String>,
) -> Result<Option<Ipv6Gateway>, DetectError> {
    let seen = seen(observed, public, private);
    for prefix in &config.private_prefixes {
        validate::private_prefix(
            &IpNet::V6(*prefix),
            "[ipv6] private_prefixes",
            &seen.public_networks,
        )?;
    }
    for (net, origin) in &seen.connected {
        validate::private_prefix(&IpNet::V6(*net), origin, &seen.public_networks)?;
    }
    let all: Vec<Ipv6Net> = normalise(
        seen.connected
            .iter()
            .map(|(n, _)| IpNet::V6(*n))
            .chain(config.private_prefixes.iter().map(|p| IpNet::V6(*p))),
    )
    .into_iter()
    .filter_map(|n| match n {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    })
    .collect();

    let mode = match config.mode {
        Some(mode) => mode,
        None => match detect_mode(config, &seen, &all, public)? {
            Some(mode) => mode,
            None => {
                if !all.is_empty() {
                    warnings.push(format!(
                        "the private side has IPv6 ({}) but {} has no IPv6 default route, so IPv6 stays off; set [ipv6] mode to forward it anyway",
                        join(&all),
                        public.name
                    ));
                }
                return Ok(None);
            }
        },
    };
    if mode == Ipv6Mode::Off {
        return Ok(None);
    }
    if config.public_prefix.is_some() && mode != Ipv6Mode::Nptv6 {
        return Err(err(format!(
            "[ipv6] public_prefix is only used by mode \"nptv6\", and the mode is \"{mode}\"; remove the key or set mode = \"nptv6\""
        )));
    }
    if config.address.is_some() && mode != Ipv6Mode::Nat66 {
        return Err(err(format!(
            "[ipv6] address is only used by mode \"nat66\", and the mode is \"{mode}\"; remove the key or set mode = \"nat66\""
        )));
    }
    if all.is_empty() {
        return Err(err(format!(
            "[ipv6] mode \"{mode}\": the private interfaces have no ULA or global IPv6 network; add one to them or list it in [ipv6] private_prefixes"
        )));
    }
    if !seen.uplink_default {
        warnings.push(format!(
            "{} has no IPv6 default route: private nodes reach only what its IPv6 routes cover",
            public.name
        ));
    }
    let private_nets: Vec<IpNet> = all.iter().map(|n| IpNet::V6(*n)).collect();
    let (translation, outbound) = match mode {
        Ipv6Mode::Routed => {
            let routed: Vec<Ipv6Net> = all
                .iter()
                .copied()
                .filter(|n| !is_ula(&n.network()))
                .collect();
            if routed.is_empty() {
                return Err(err(format!(
                    "[ipv6] mode \"routed\": the private IPv6 prefixes ({}) are all ULA (fc00::/7), which no upstream routes; use mode \"nat66\" or \"nptv6\"",
                    join(&all)
                )));
            }
            (Ipv6Translation::Routed, routed)
        }
        Ipv6Mode::Nat66 => {
            let address = match config.address {
                Some(address) => address,
                None => match seen.public_globals.as_slice() {
                    [(address, dynamic)] => {
                        if *dynamic {
                            warnings.push(format!(
                                "nat66 address {address} is dynamic (SLAAC or DHCPv6); when it changes, run natgw up again or pin it with [ipv6] address"
                            ));
                        }
                        *address
                    }
                    [] => {
                        return Err(err(format!(
                            "[ipv6] mode \"nat66\": {} has no global IPv6 address to translate to; assign one or name it with [ipv6] address",
                            public.name
                        )))
                    }
                    several => {
                        return Err(err(format!(
                            "[ipv6] mode \"nat66\": {} has several global IPv6 addresses ({}); name the one to translate to with [ipv6] address",
                            public.name,
                            join(&several.iter().map(|(a, _)| *a).collect::<Vec<_>>())
                        )))
                    }
                },
            };
            validate::snat_address(IpAddr::V6(address), &private_nets, &seen.public_networks)?;
            (Ipv6Translation::Nat66 { address }, all.clone())
        }
        Ipv6Mode::Nptv6 => {
            let public_prefix = config.public_prefix.ok_or_else(|| {
                err("[ipv6] mode \"nptv6\" needs the public prefix the upstream routes to this host: set [ipv6] public_prefix".into())
            })?;
            let [private_prefix] = all.as_slice() else {
                return Err(err(format!(
                    "[ipv6] mode \"nptv6\" maps one private prefix, and the private side has {} ({}); give the private interfaces one IPv6 network, or use mode \"nat66\"",
                    all.len(),
                    join(&all)
                )));
            };
            nptv6_prefixes(*private_prefix, public_prefix, &seen.public_networks)?;
            (
                Ipv6Translation::Nptv6 {
                    private: *private_prefix,
                    public: public_prefix,
                },
                all.clone(),
            )
        }
        Ipv6Mode::Off => unreachable!("handled above"),
    };
    Ok(Some(Ipv6Gateway {
        translation,
        private_prefixes: all,
        outbound_prefixes: outbound,
        uplink_default: seen.uplink_default,
        accept_ra: seen.by_ra,
    }))
}

/// The mode when `[ipv6] mode` is unset; `None` for off.
fn detect_mode(
    config: &Ipv6Config,
    seen: &Seen,
    all: &[Ipv6Net],
    public: &Link,
) -> Result<Option<Ipv6Mode>, DetectError> {
    match (config.public_prefix, config.address) {
        (Some(_), Some(_)) => {
            return Err(err(
                "[ipv6] public_prefix (nptv6) and address (nat66) are both set; choose the mode with [ipv6] mode".into(),
            ))
        }
        (Some(_), None) => return Ok(Some(Ipv6Mode::Nptv6)),
        (None, Some(_)) => return Ok(Some(Ipv6Mode::Nat66)),
        (None, None) => {}
    }
    if all.is_empty() || !seen.uplink_default {
        return Ok(None);
    }
    if all.iter().any(|n| !is_ula(&n.network())) {
        return Ok(Some(Ipv6Mode::Routed));
    }
    match seen.public_globals.len() {
        1 => Ok(Some(Ipv6Mode::Nat66)),
        0 => Err(err(format!(
            "the private side uses ULA ({}) and {} has no global IPv6 address to translate to; set [ipv6] mode (\"nptv6\" with public_prefix, or \"off\")",
            join(all),
            public.name
        ))),
        _ => Err(err(format!(
            "the private side uses ULA ({}) and {} has several global IPv6 addresses ({}); set [ipv6] mode: \"nat66\" with address = ADDR, or \"nptv6\" with public_prefix",
            join(all),
            public.name,
            join(&seen.public_globals.iter().map(|(a, _)| *a).collect::<Vec<_>>())
        ))),
    }
}

/// RFC 6296 maps prefixes of one length; the public one must be the upstream's route
/// to this host, not the public link's own network (nodes would collide with it).
fn nptv6_prefixes(
    private: Ipv6Net,
    public: Ipv6Net,
    public_networks: &[IpNet],
) -> Result<(), DetectError> {
    if private.prefix_len() != public.prefix_len() {
        return Err(err(format!(
            "[ipv6] public_prefix {public} must have the length of the private prefix {private} (/{}): prefix translation maps host bits one to one",
            private.prefix_len()
        )));
    }
    let public_net = IpNet::V6(public);
    if validate::overlap(&public_net, &IpNet::V6(private)) {
        return Err(err(format!(
            "[ipv6] public_prefix {public} overlaps the private prefix {private}"
        )));
    }
    validate::private_prefix(&public_net, "[ipv6] public_prefix", public_networks).map_err(
        |e| match e {
            DetectError::BadPrivatePrefix { reason, .. } => err(format!(
                "[ipv6] public_prefix {public} {reason}; give the prefix the upstream routes to this host"
            )),
            other => other,
        },
    )
}

/// The sysctls the IPv6 side needs: forwarding, and router advertisements kept on a
/// public interface configured by them (forwarding alone makes the kernel ignore them).
pub fn sysctls(gateway: &Ipv6Gateway, public: &str) -> Vec<(String, String)> {
    let mut out = vec![(IPV6_FORWARD.to_string(), "1".to_string())];
    if gateway.accept_ra {
        out.push((accept_ra(public), "2".to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{addr, headnode, route};

    /// `headnode()` with IPv6: wan0 2001:db8:1::1/64 and a default route, lan0 fd00:77::1/64.
    fn dual_stack() -> Observed {
        let mut o = headnode();
        o.addresses.push(addr(2, "2001:db8:1::1/64"));
        o.addresses.push(addr(2, "fe80::1/64"));
        o.addresses.push(addr(3, "fd00:77::1/64"));
        o.addresses.push(addr(3, "fe80::2/64"));
        o.routes.push(route("::/0", Some("2001:db8:1::fe"), 2));
        o
    }

    fn resolve_with(
        config: &Ipv6Config,
        o: &Observed,
    ) -> Result<(Option<Ipv6Gateway>, Vec<String>), DetectError> {
        let public = o.link("wan0").unwrap();
        let private: Vec<&Link> = ["lan0", "lan1"].iter().filter_map(|n| o.link(n)).collect();
        let mut warnings = Vec::new();
        resolve(config, o, public, &private, &mut warnings).map(|g| (g, warnings))
    }

    fn config(mode: Option<Ipv6Mode>) -> Ipv6Config {
        Ipv6Config {
            mode,
            ..Ipv6Config::default()
        }
    }

    #[test]
    fn no_ipv6_on_the_private_side_is_off_silently() {
        let (g, warnings) = resolve_with(&config(None), &headnode()).unwrap();
        assert_eq!(g, None);
        assert!(warnings.is_empty());
    }

    #[test]
    fn ula_behind_one_global_address_is_nat66() {
        let (g, warnings) = resolve_with(&config(None), &dual_stack()).unwrap();
        let g = g.unwrap();
        assert_eq!(
            g.translation,
            Ipv6Translation::Nat66 {
                address: "2001:db8:1::1".parse().unwrap()
            }
        );
        assert_eq!(g.private_prefixes, vec!["fd00:77::/64".parse().unwrap()]);
        assert_eq!(g.outbound_prefixes, g.private_prefixes);
        assert!(g.uplink_default && !g.accept_ra);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_global_private_prefix_is_routed_and_its_ula_stays_inside() {
        let mut o = dual_stack();
        o.addresses.push(addr(4, "2001:db8:77::1/64"));
        let g = resolve_with(&config(None), &o).unwrap().0.unwrap();
        assert_eq!(g.translation, Ipv6Translation::Routed);
        assert_eq!(
            g.private_prefixes,
            vec![
                "2001:db8:77::/64".parse().unwrap(),
                "fd00:77::/64".parse().unwrap()
            ]
        );
        assert_eq!(
            g.outbound_prefixes,
            vec!["2001:db8:77::/64".parse().unwrap()]
        );
    }

    #[test]
    fn no_ipv6_default_route_is_off_with_a_warning() {
        let mut o = dual_stack();
        o.routes.retain(|r| r.destination.addr().is_ipv4());
        let (g, warnings) = resolve_with(&config(None), &o).unwrap();
        assert_eq!(g, None);
        assert!(
            warnings[0].contains("no IPv6 default route"),
            "{warnings:?}"
        );
        // Asked for explicitly, it is on, with the same warning.
        let (g, warnings) = resolve_with(&config(Some(Ipv6Mode::Nat66)), &o).unwrap();
        assert!(g.is_some());
        assert!(
            warnings[0].contains("no IPv6 default route"),
            "{warnings:?}"
        );
    }

    #[test]
    fn ambiguous_public_addresses_name_the_key() {
        let mut o = dual_stack();
        o.addresses.push(addr(2, "2001:db8:1::2/64"));
        let e = resolve_with(&config(None), &o).unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("set [ipv6] mode"), "{e}");
        let e = resolve_with(&config(Some(Ipv6Mode::Nat66)), &o).unwrap_err();
        assert!(e.to_string().contains("[ipv6] address"), "{e}");
        let pinned = Ipv6Config {
            address: Some("2001:db8:1::2".parse().unwrap()),
            ..config(None)
        };
        let g = resolve_with(&pinned, &o).unwrap().0.unwrap();
        assert_eq!(g.translation.mode(), Ipv6Mode::Nat66);

        let mut o = dual_stack();
        o.addresses
            .retain(|a| a.address != "2001:db8:1::1".parse::<IpAddr>().unwrap());
        let e = resolve_with(&config(None), &o).unwrap_err();
        assert!(e.to_string().contains("no global IPv6 address"), "{e}");
    }

    #[test]
    fn nptv6_needs_one_private_prefix_and_a_public_one_of_its_length() {
        let nptv6 = |public: &str| Ipv6Config {
            public_prefix: Some(public.parse().unwrap()),
            ..config(None)
        };
        let g = resolve_with(&nptv6("2001:db8:177::/64"), &dual_stack())
            .unwrap()
            .0
            .unwrap();
        assert_eq!(
            g.translation,
            Ipv6Translation::Nptv6 {
                private: "fd00:77::/64".parse().unwrap(),
                public: "2001:db8:177::/64".parse().unwrap()
            }
        );
        for (public, why) in [
            ("2001:db8:177::/56", "must have the length"),
            ("2001:db8:1::/64", "overlaps the public network"),
            ("fd00:77::/64", "overlaps the private prefix"),
        ] {
            let e = resolve_with(&nptv6(public), &dual_stack()).unwrap_err();
            assert!(e.to_string().contains(why), "{public}: {e}");
        }
        let e = resolve_with(&config(Some(Ipv6Mode::Nptv6)), &dual_stack()).unwrap_err();
        assert!(e.to_string().contains("set [ipv6] public_prefix"), "{e}");
        let mut o = dual_stack();
        o.addresses.push(addr(4, "fd00:78::1/64"));
        let e = resolve_with(&nptv6("2001:db8:177::/64"), &o).unwrap_err();
        assert!(e.to_string().contains("maps one private prefix"), "{e}");
    }

    #[test]
    fn routed_ula_only_and_keys_of_other_modes_are_refused() {
        let e = resolve_with(&config(Some(Ipv6Mode::Routed)), &dual_stack()).unwrap_err();
        assert!(e.to_string().contains("all ULA"), "{e}");
        let mut c = config(Some(Ipv6Mode::Nat66));
        c.public_prefix = Some("2001:db8:177::/64".parse().unwrap());
        let e = resolve_with(&c, &dual_stack()).unwrap_err();
        assert!(e.to_string().contains("only used by mode \"nptv6\""), "{e}");
        let e = resolve_with(&config(Some(Ipv6Mode::Nat66)), &headnode()).unwrap_err();
        assert!(e.to_string().contains("[ipv6] private_prefixes"), "{e}");
        let (g, _) = resolve_with(&config(Some(Ipv6Mode::Off)), &dual_stack()).unwrap();
        assert_eq!(g, None);
    }

    #[test]
    fn bad_private_prefixes_are_refused() {
        let mut c = config(None);
        c.private_prefixes = vec!["fe80::/64".parse().unwrap()];
        let e = resolve_with(&c, &dual_stack()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("[ipv6] private_prefixes: private prefix fe80::/64"),
            "{e}"
        );
    }

    #[test]
    fn a_public_side_configured_by_ra_keeps_accepting_them() {
        let mut o = dual_stack();
        o.routes.last_mut().unwrap().protocol = RTPROT_RA;
        let g = resolve_with(&config(None), &o).unwrap().0.unwrap();
        assert!(g.accept_ra);
        assert_eq!(
            sysctls(&g, "wan0"),
            vec![
                (IPV6_FORWARD.to_string(), "1".to_string()),
                ("net.ipv6.conf.wan0.accept_ra".to_string(), "2".to_string())
            ]
        );
        let g = resolve_with(&config(None), &dual_stack())
            .unwrap()
            .0
            .unwrap();
        assert_eq!(
            sysctls(&g, "wan0").len(),
            1,
            "static public side: forwarding only"
        );
    }
}
