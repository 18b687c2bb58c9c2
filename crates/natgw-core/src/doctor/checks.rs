//! The checks, one function each, in the order of the classic recipe.

use std::net::IpAddr;

use ipnet::IpNet;

use super::firewall::{snat_rules, Chain};
use super::{Finding, Inputs, Repair, Status};
use crate::detect::{is_private_v4, roles, DetectError, Roles, IP_FORWARD};
use crate::join;
use crate::observed::{Link, Observed};

pub fn all(inputs: &Inputs) -> Vec<Finding> {
    let o = inputs.observed;
    let roles = match roles(inputs.settings, o) {
        Ok(roles) => roles,
        Err(e) => {
            // Without roles most checks have nothing to look at: say why, once.
            let id = match e {
                DetectError::NoDefaultRoute | DetectError::SeveralDefaultRoutes(_) => {
                    "default-route"
                }
                DetectError::NoPrivateInterface | DetectError::PrivateWithoutIpv4(_) => {
                    "private-interface"
                }
                _ => "public-interface",
            };
            let fail = Finding::fail(
                id,
                e.to_string(),
                "name the interfaces with --public / --private (or fix what the message says)",
            );
            return vec![
                fail,
                netfilter(inputs),
                conntrack(inputs),
                dns(inputs.observed, &inputs.nameservers),
            ];
        }
    };
    let mut findings = vec![public_interface(o, roles.public)];
    findings.extend(roles.private.iter().map(|l| private_interface(o, l)));
    findings.extend([
        default_route(o, &roles),
        netfilter(inputs),
        ip_forward(o, &roles),
        snat(inputs, &roles),
        forward_policy(inputs, &roles),
        rp_filter(o, &roles),
        private_routes(o, &roles),
        conntrack(inputs),
        mtu(inputs, &roles),
        dns(inputs.observed, &inputs.nameservers),
    ]);
    findings
}

fn v4_addresses(o: &Observed, link: &Link) -> Vec<IpAddr> {
    o.addresses_of(link.index)
        .map(|a| a.address)
        .filter(IpAddr::is_ipv4)
        .collect()
}

fn link_state(id: &'static str, link: &Link) -> Option<Finding> {
    if !link.up {
        let f = Finding::fail(
            id,
            format!("{} is administratively down", link.name),
            format!("ip link set {} up", link.name),
        );
        return Some(f.repaired_by(Repair::LinkUp(link.name.clone())));
    }
    if !link.carrier {
        return Some(Finding::fail(
            id,
            format!(
                "{} is up but has no carrier (cable unplugged, switch port or peer down)",
                link.name
            ),
            format!("check the cable and the switch port of {}", link.name),
        ));
    }
    None
}

fn public_interface(o: &Observed, link: &Link) -> Finding {
    const ID: &str = "public-interface";
    if let Some(f) = link_state(ID, link) {
        return f;
    }
    let addrs = v4_addresses(o, link);
    if addrs.is_empty() {
        return Finding::fail(
            ID,
            format!("{} has no IPv4 address", link.name),
            format!("ip addr add ADDR/LEN dev {}", link.name),
        );
    }
    Finding::pass(
        ID,
        format!("{} is up with carrier, {}", link.name, join(&addrs)),
    )
}

fn private_interface(o: &Observed, link: &Link) -> Finding {
    const ID: &str = "private-interface";
    if let Some(f) = link_state(ID, link) {
        return f;
    }
    let private: Vec<IpAddr> = v4_addresses(o, link)
        .into_iter()
        .filter(|a| matches!(a, IpAddr::V4(v4) if is_private_v4(*v4)))
        .collect();
    if private.is_empty() {
        return Finding::fail(
            ID,
            format!("{} carries no RFC 1918 / RFC 6598 address", link.name),
            format!(
                "ip addr add 10.0.0.1/24 dev {} (your private network's gateway address)",
                link.name
            ),
        );
    }
    Finding::pass(
        ID,
        format!("{} is up with carrier, {}", link.name, join(&private)),
    )
}

fn default_route(o: &Observed, roles: &Roles) -> Finding {
    const ID: &str = "default-route";
    let defaults: Vec<_> = o.ipv4_defaults().collect();
    let name = |oif: Option<u32>| {
        oif.and_then(|i| o.link_by_index(i))
            .map_or("?".to_string(), |l| l.name.clone())
    };
    let describe = |r: &&crate::observed::Route| {
        format!(
            "via {} dev {} metric {}",
            r.gateway.map_or("-".into(), |g| g.to_string()),
            name(r.oif),
            r.metric
        )
    };
    let public = &roles.public.name;
    match defaults.as_slice() {
        [] => Finding::fail(
            ID,
            "no IPv4 default route: the headnode cannot reach the outside",
            format!("ip route add default via UPSTREAM_ROUTER dev {public}"),
        ),
        [only] if only.oif == Some(roles.public.index) => {
            Finding::pass(ID, format!("default {}", describe(only)))
        }
        [only] => Finding::fail(
            ID,
            format!(
                "the default route leaves through {}, not the public interface {public}",
                name(only.oif)
            ),
            format!("ip route replace default via UPSTREAM_ROUTER dev {public}"),
        ),
        several => {
            let list: Vec<String> = several.iter().map(describe).collect();
            let best = several.iter().min_by_key(|r| r.metric).expect("non-empty");
            let detail = format!("{} IPv4 default routes: {}", several.len(), list.join("; "));
            if best.oif == Some(roles.public.index) {
                Finding::warn(ID, detail, "delete the extra default routes (ip route del default via GW dev IFACE) so traffic cannot leave unexpectedly")
            } else {
                Finding::fail(
                    ID,
                    format!("{detail}; the preferred one does not use {public}"),
                    format!("ip route del default dev {}", name(best.oif)),
                )
            }
        }
    }
}

fn netfilter(inputs: &Inputs) -> Finding {
    const ID: &str = "netfilter";
    if !inputs.observed.nft_present {
        return Finding::fail(
            ID,
            "the nft tool is not installed",
            "apt-get install nftables (Debian/Ubuntu) or dnf install nftables",
        );
    }
    if let Some(Err(e)) = &inputs.nat_check {
        return Finding::fail(ID, format!("the kernel rejected a NAT ruleset: {e}"), "use a kernel with nf_tables and nft_nat (CONFIG_NF_TABLES, CONFIG_NFT_NAT) or load the modules: modprobe nft_nat");
    }
    let legacy_rules = inputs
        .chains
        .iter()
        .any(|c| c.legacy && !c.rules.is_empty());
    // natgw's own table counts: its rules are invisible to iptables-legacy and vice versa.
    let nft_in_use = inputs.chains.iter().any(|c| !c.legacy);
    let checked = if inputs.nat_check.is_some() {
        "nftables NAT works (kernel accepted natgw's ruleset in a check-only transaction)"
    } else {
        "nft is installed"
    };
    if legacy_rules && nft_in_use {
        return Finding::warn(ID, format!("{checked}, but rules exist in both iptables-legacy and nftables: neither tool shows the other's rules"), "list both (iptables-legacy-save; nft list ruleset) and move the legacy rules to nftables (iptables-legacy-save | iptables-restore-translate)");
    }
    Finding::pass(ID, checked)
}

fn ip_forward(o: &Observed, roles: &Roles) -> Finding {
    const ID: &str = "ip-forward";
    let value = |key: &str| o.sysctls.get(key).map(String::as_str);
    if value(IP_FORWARD) != Some("1") {
        let f = Finding::fail(
            ID,
            format!("{IP_FORWARD} = {}", value(IP_FORWARD).unwrap_or("?")),
            format!("sysctl -w {IP_FORWARD}=1 (natgw up does this)"),
        );
        return f.repaired_by(Repair::ApplyGateway);
    }
    let off: Vec<&str> = std::iter::once(roles.public)
        .chain(roles.private.iter().copied())
        .map(|l| l.name.as_str())
        .filter(|name| value(&format!("net.ipv4.conf.{name}.forwarding")) == Some("0"))
        .collect();
    if !off.is_empty() {
        let fix = off
            .iter()
            .map(|n| format!("sysctl -w net.ipv4.conf.{n}.forwarding=1"))
            .collect::<Vec<_>>()
            .join("; ");
        return Finding::fail(
            ID,
            format!("forwarding is on globally but off on {}", off.join(", ")),
            fix,
        );
    }
    Finding::pass(
        ID,
        format!("{IP_FORWARD} = 1, and on for every gateway interface"),
    )
}

fn snat(inputs: &Inputs, roles: &Roles) -> Finding {
    const ID: &str = "snat";
    let public = &roles.public.name;
    let current = v4_addresses(inputs.observed, roles.public);
    let rules: Vec<_> = snat_rules(&inputs.chains)
        .into_iter()
        .filter(|r| r.oif.as_deref().is_none_or(|oif| oif == public))
        .collect();
    let stale: Vec<_> = rules
        .iter()
        .filter(|r| r.to.is_some_and(|a| !current.contains(&a)))
        .collect();
    if let Some(rule) = stale.first() {
        let to = rule.to.expect("stale rules have an address");
        let fix = if rule.chain.starts_with("inet natgw") {
            "natgw up (re-renders natgw's rule with the current address)".to_string()
        } else {
            format!(
                "delete the stale rule in {} (`{}`), then natgw up",
                rule.chain, rule.rule
            )
        };
        let f = Finding::fail(
            ID,
            format!(
                "{} translates to {to}, but {public} has {}: replies to {to} never come back",
                rule.chain,
                join(&current)
            ),
            fix,
        );
        return if rule.chain.starts_with("inet natgw") {
            f.repaired_by(Repair::ApplyGateway)
        } else {
            f
        };
    }
    match rules.first() {
        None => Finding::fail(
            ID,
            format!("no rule source-translates the private prefixes out of {public}"),
            "natgw up",
        )
        .repaired_by(Repair::ApplyGateway),
        Some(_) => {
            let how: Vec<String> = rules
                .iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r.chain,
                        r.to.map_or("masquerade".into(), |a| a.to_string())
                    )
                })
                .collect();
            Finding::pass(
                ID,
                format!("translated out of {public} by {}", how.join(", ")),
            )
        }
    }
}

/// A foreign forward chain that drops what natgw accepts (an accept in one base chain
/// does not stop a drop in another at the same hook).
fn forward_policy(inputs: &Inputs, roles: &Roles) -> Finding {
    const ID: &str = "forward-policy";
    let private: Vec<&str> = roles.private.iter().map(|l| l.name.as_str()).collect();
    let mentions_private = |rule: &str| {
        private
            .iter()
            .any(|p| rule.contains(&format!("\"{p}\"")) || rule.contains(&format!("-i {p} ")))
    };
    let foreign = inputs
        .chains
        .iter()
        .filter(|c| !c.is_natgw() && c.hook.as_deref() == Some("forward"));
    for chain in foreign {
        let drops_by_policy = chain.policy.as_deref() == Some("drop")
            && !chain
                .rules
                .iter()
                .any(|r| mentions_private(r) && (r.contains("accept") || r.contains("ACCEPT")));
        let drop_rule = chain.rules.iter().find(|r| {
            mentions_private(r)
                && (r.ends_with("drop")
                    || r.ends_with("reject")
                    || r.contains("-j DROP")
                    || r.contains("-j REJECT"))
        });
        if drops_by_policy || drop_rule.is_some() {
            let what = drop_rule.map_or_else(
                || "has policy drop and no accept for the private side".to_string(),
                |r| format!("drops private traffic: `{r}`"),
            );
            let fix = forward_fix(chain, &private, &roles.public.name);
            return Finding::fail(
                ID,
                format!("forward chain {} {} {what}", chain.table, chain.name),
                fix,
            );
        }
    }
    Finding::pass(
        ID,
        "no foreign forward chain drops private-to-public traffic",
    )
}

fn forward_fix(chain: &Chain, private: &[&str], public: &str) -> String {
    let first = private.first().copied().unwrap_or("PRIVATE");
    if chain.legacy {
        format!("iptables-legacy -I {c} -i {first} -o {public} -j ACCEPT; iptables-legacy -I {c} -i {public} -o {first} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", c = chain.name)
    } else {
        format!("nft insert rule {t} {c} iifname \"{first}\" oifname \"{public}\" accept; nft insert rule {t} {c} iifname \"{public}\" oifname \"{first}\" ct state established,related accept", t = chain.table, c = chain.name)
    }
}

fn rp_filter(o: &Observed, roles: &Roles) -> Finding {
    const ID: &str = "rp-filter";
    let value = |key: String| {
        o.sysctls
            .get(&key)
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0)
    };
    let all = value("net.ipv4.conf.all.rp_filter".into());
    // The kernel uses the larger of conf.all and conf.IFACE.
    let strict: Vec<&str> = std::iter::once(roles.public)
        .chain(roles.private.iter().copied())
        .filter(|l| all.max(value(format!("net.ipv4.conf.{}.rp_filter", l.name))) == 1)
        .map(|l| l.name.as_str())
        .collect();
    if strict.is_empty() {
        return Finding::pass(
            ID,
            "no strict reverse-path filtering on the gateway interfaces",
        );
    }
    let fix = strict
        .iter()
        .map(|n| format!("sysctl -w net.ipv4.conf.{n}.rp_filter=2"))
        .chain((all == 1).then(|| "sysctl -w net.ipv4.conf.all.rp_filter=2".to_string()))
        .collect::<Vec<_>>()
        .join("; ");
    Finding::warn(ID, format!("strict rp_filter on {}: packets from networks routed elsewhere (behind routers, asymmetric paths) are dropped", strict.join(", ")), fix)
}

fn private_routes(o: &Observed, roles: &Roles) -> Finding {
    const ID: &str = "private-routes";
    let missing: Vec<IpNet> = roles
        .private_prefixes
        .iter()
        .filter(|p| {
            !o.routes.iter().any(|r| {
                r.destination.prefix_len() > 0
                    && r.destination.contains(*p)
                    && r.oif != Some(roles.public.index)
            })
        })
        .copied()
        .collect();
    if missing.is_empty() {
        return Finding::pass(
            ID,
            format!("a route back exists for {}", join(&roles.private_prefixes)),
        );
    }
    if let Some(down) = roles.private.iter().find(|l| !l.up) {
        return Finding::fail(
            ID,
            format!(
                "no route back to {}: {} is down, so its connected routes are gone",
                join(&missing),
                down.name
            ),
            format!("ip link set {} up", down.name),
        )
        .repaired_by(Repair::LinkUp(down.name.clone()));
    }
    Finding::fail(
        ID,
        format!(
            "no route back to {}: replies for them would leave by the default route",
            join(&missing)
        ),
        "add them to `routes` in natgw.toml ({ to = PREFIX, via = ROUTER }) and run natgw up",
    )
    .repaired_by(Repair::ApplyGateway)
}

fn conntrack(inputs: &Inputs) -> Finding {
    const ID: &str = "conntrack";
    let Some(ct) = inputs.observed.conntrack else {
        return Finding::warn(
            ID,
            "connection tracking is not loaded",
            "it loads with the first NAT rule (natgw up)",
        );
    };
    let percent = ct.count as f64 * 100.0 / ct.max.max(1) as f64;
    let usage = format!("{} of {} entries in use ({percent:.1} %)", ct.count, ct.max);
    let raise = format!(
        "raise net.netfilter.nf_conntrack_max (now {}) in the root namespace",
        ct.max
    );
    let stats = inputs.conntrack_stats.unwrap_or_default();
    let lost = stats.drop + stats.early_drop + stats.insert_failed;
    let (status, detail) = match percent {
        p if p > 95.0 => (Status::Fail, usage),
        p if p > 80.0 => (Status::Warn, usage),
        _ if lost > 0 => (Status::Warn, format!("{usage}; the kernel dropped {} / early-dropped {} / failed to insert {} new connections", stats.drop, stats.early_drop, stats.insert_failed)),
        _ => return Finding::pass(ID, usage),
    };
    Finding {
        id: ID,
        status,
        detail,
        fix: Some(raise),
        repair: None,
    }
}

fn mtu(inputs: &Inputs, roles: &Roles) -> Finding {
    const ID: &str = "mtu";
    let public = roles.public;
    let bigger: Vec<String> = roles
        .private
        .iter()
        .filter(|l| l.mtu > public.mtu)
        .map(|l| format!("{} ({})", l.name, l.mtu))
        .collect();
    if bigger.is_empty() {
        return Finding::pass(
            ID,
            format!(
                "no private interface has a larger MTU than {} ({})",
                public.name, public.mtu
            ),
        );
    }
    let clamped = inputs
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.contains("maxseg size set") || r.contains("TCPMSS"));
    if clamped {
        return Finding::pass(
            ID,
            format!(
                "{} exceed {} ({}), and TCP MSS is clamped",
                bigger.join(", "),
                public.name,
                public.mtu
            ),
        );
    }
    Finding::warn(ID, format!("{} exceed the public MTU of {} ({}) and TCP MSS is not clamped: large TCP segments stall where PMTU discovery is blocked", bigger.join(", "), public.name, public.mtu), format!("nft add rule inet mangle forward oifname \"{}\" tcp flags syn tcp option maxseg size set rt mtu (or lower the private MTU)", public.name))
}

/// Looks only: no query leaves the machine. A nameserver must be configured and routable.
/// Shared with `natgw node check`.
pub fn dns(o: &Observed, nameservers: &[IpAddr]) -> Finding {
    const ID: &str = "dns";
    if nameservers.is_empty() {
        return Finding::warn(ID, "no nameserver in /etc/resolv.conf: this host cannot resolve names (private nodes often use the headnode as resolver)", "add `nameserver ADDR` to /etc/resolv.conf (or configure systemd-resolved)");
    }
    let routable = |ns: &IpAddr| {
        ns.is_loopback()
            || o.routes.iter().any(|r| r.destination.contains(ns))
            || o.addresses.iter().any(|a| a.address == *ns)
    };
    let unroutable: Vec<IpAddr> = nameservers
        .iter()
        .filter(|ns| !routable(ns))
        .copied()
        .collect();
    if unroutable.len() == nameservers.len() {
        return Finding::warn(
            ID,
            format!("no route to any nameserver ({})", join(&unroutable)),
            "fix the default route, or point /etc/resolv.conf at a reachable resolver",
        );
    }
    Finding::pass(
        ID,
        format!(
            "nameservers {} are routable (not queried: doctor sends no traffic)",
            join(nameservers)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::doctor::firewall::{parse_iptables_save, parse_nft};
    use crate::fixtures::{addr, link, route};
    use crate::observed::{Conntrack, Route};
    use std::collections::BTreeMap;

    const NATGW: &str = "table inet natgw {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"wan0\" ip saddr @private4 counter name \"translated_connections\" snat ip to 203.0.113.1\n\t}\n}\n";

    fn healthy() -> Observed {
        Observed {
            links: vec![link(1, "lo"), link(2, "wan0"), link(3, "lan0")],
            addresses: vec![addr(2, "203.0.113.1/24"), addr(3, "10.0.0.1/24")],
            routes: vec![
                route("0.0.0.0/0", Some("203.0.113.254"), 2),
                route("10.0.0.0/24", None, 3),
                route("203.0.113.0/24", None, 2),
            ],
            sysctls: BTreeMap::from([(IP_FORWARD.to_string(), "1".to_string())]),
            nft_present: true,
            conntrack: Some(Conntrack {
                count: 10,
                max: 1000,
            }),
            ..Observed::default()
        }
    }

    fn run(o: &Observed, ruleset: &str, legacy: &str) -> Vec<Finding> {
        let settings = Settings {
            public: Some("wan0".into()),
            ..Settings::default()
        };
        let mut chains = parse_nft(ruleset);
        chains.extend(parse_iptables_save(legacy));
        all(&Inputs {
            settings: &settings,
            observed: o,
            chains,
            nat_check: Some(Ok(())),
            nameservers: vec!["203.0.113.53".parse().unwrap()],
            conntrack_stats: None,
        })
    }

    fn find<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no {id} in {findings:?}"))
    }

    #[test]
    fn healthy_gateway_passes_everything() {
        let findings = run(&healthy(), NATGW, "");
        let ids: Vec<_> = findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "public-interface",
                "private-interface",
                "default-route",
                "netfilter",
                "ip-forward",
                "snat",
                "forward-policy",
                "rp-filter",
                "private-routes",
                "conntrack",
                "mtu",
                "dns"
            ]
        );
        for f in &findings {
            assert_eq!(f.status, Status::Pass, "{f:?}");
        }
    }

    #[test]
    fn down_interface_and_forwarding_off_are_repairable_failures() {
        let mut o = healthy();
        o.links[2].up = false;
        o.sysctls.insert(IP_FORWARD.into(), "0".into());
        let findings = run(&o, NATGW, "");
        let lan = find(&findings, "private-interface");
        assert_eq!(
            (lan.status, lan.repair.clone()),
            (Status::Fail, Some(Repair::LinkUp("lan0".into())))
        );
        assert_eq!(
            find(&findings, "ip-forward").repair,
            Some(Repair::ApplyGateway)
        );
    }

    #[test]
    fn stale_foreign_snat_address_fails_without_repair() {
        let legacy = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o wan0 -j SNAT --to-source 198.51.100.4\nCOMMIT\n";
        let f = run(&healthy(), NATGW, legacy)
            .into_iter()
            .find(|f| f.id == "snat")
            .unwrap();
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("198.51.100.4") && f.repair.is_none(),
            "{f:?}"
        );
        let none = run(&healthy(), "", "");
        assert_eq!(find(&none, "snat").status, Status::Fail);
    }

    #[test]
    fn foreign_forward_drop_policy_fails_with_command() {
        let ruleset = format!("{NATGW}table ip filter {{\n\tchain FORWARD {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t}}\n}}\n");
        let findings = run(&healthy(), &ruleset, "");
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .starts_with("nft insert rule ip filter FORWARD iifname \"lan0\""),
            "{f:?}"
        );
    }

    #[test]
    fn several_defaults_warn_and_strict_rp_filter_warns() {
        let mut o = healthy();
        o.routes.push(Route {
            metric: 100,
            ..route("0.0.0.0/0", Some("10.0.0.254"), 3)
        });
        o.sysctls
            .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        let findings = run(&o, NATGW, "");
        assert_eq!(find(&findings, "default-route").status, Status::Warn);
        assert_eq!(find(&findings, "rp-filter").status, Status::Warn);
        // Autodetection cannot pick between them: the finding says so under its id.
        let auto = all(&Inputs {
            settings: &Settings::default(),
            observed: &o,
            chains: vec![],
            nat_check: None,
            nameservers: vec![],
            conntrack_stats: None,
        });
        assert_eq!(find(&auto, "default-route").status, Status::Fail);
    }

    #[test]
    fn conntrack_thresholds_mtu_and_dns() {
        let mut o = healthy();
        o.conntrack = Some(Conntrack {
            count: 960,
            max: 1000,
        });
        o.links[2].mtu = 9000;
        let findings = run(&o, NATGW, "");
        assert_eq!(find(&findings, "conntrack").status, Status::Fail);
        assert_eq!(find(&findings, "mtu").status, Status::Warn);
        o.conntrack = Some(Conntrack {
            count: 850,
            max: 1000,
        });
        assert_eq!(find(&run(&o, NATGW, ""), "conntrack").status, Status::Warn);
        o.routes.retain(|r| r.oif != Some(2));
        assert_eq!(find(&run(&o, NATGW, ""), "dns").status, Status::Warn);
    }
}
