//! The checks, one function each, in the order of the classic recipe.

use std::net::IpAddr;

use ipnet::IpNet;

use super::firewall::{self, clamps_mss, fate, snat_rules, Chain, Endpoint, Fate, Flow, Hook};
use super::fix::Fix;
use super::{Finding, Inputs, Repair, Status};
use crate::detect::{is_private_v4, roles, DetectError, Roles, IP_FORWARD};
use crate::join;
use crate::observed::{Link, Observed};
use crate::plan::{Change, TableReason};

/// Checks that need the interfaces' roles, in report order.
const ROLE_CHECKS: [&str; 11] = [
    "public-interface",
    "private-interface",
    "default-route",
    "ip-forward",
    "ipv6",
    "snat",
    "forward-policy",
    "rp-filter",
    "private-routes",
    "mtu",
    "natgw-table",
];

pub fn all(inputs: &Inputs) -> Vec<Finding> {
    let o = inputs.observed;
    let roles = match roles(inputs.settings, o) {
        Ok(roles) => roles,
        Err(e) => {
            let mut findings = vec![record(o)];
            findings.extend(without_roles(inputs, &e));
            return findings;
        }
    };
    let mut findings = vec![record(o), public_interface(o, roles.public)];
    findings.extend(roles.private.iter().map(|l| private_interface(o, l)));
    findings.extend([
        default_route(o, &roles),
        netfilter(inputs),
        natgw_table(inputs),
        ip_forward(o, &roles),
        super::ipv6::ipv6(inputs.settings, o, &roles),
        snat(inputs, &roles),
        forward_policy(inputs, &roles),
        rp_filter(o, &roles),
        private_routes(o, &roles),
        conntrack(inputs),
        port_use(inputs),
        mtu(inputs, &roles),
        dns(inputs.observed, &inputs.nameservers),
    ]);
    findings.extend(fast_path(inputs, &roles));
    findings
}

/// Failures of other firewalls that stop the gateway from working although natgw's own
/// rules are right (a foreign forward chain that drops its traffic): `up` reports them
/// rather than printing "verified" over a gateway that carries nothing.
pub fn foreign_blockers(inputs: &Inputs) -> Vec<Finding> {
    let Ok(roles) = roles(inputs.settings, inputs.observed) else {
        return Vec::new();
    };
    [forward_policy(inputs, &roles)]
        .into_iter()
        .filter(|f| f.status == Status::Fail)
        .collect()
}

/// Share of a public address's ports towards one destination above which port
/// exhaustion is near (new flows to that destination start to fail at 100 %).
const PORT_USE_WARN: f64 = 0.8;

/// Ports in use per (public address, destination, protocol) against what one address
/// allows, so exhaustion shows before it bites.
fn port_use(inputs: &Inputs) -> Finding {
    const ID: &str = "port-use";
    let Some(summary) = &inputs.translations else {
        return Finding::skip(ID, "natgw's translations could not be listed (ctnetlink)");
    };
    let busy: Vec<String> = summary
        .port_use
        .iter()
        .filter(|u| u.ports_used as f64 >= PORT_USE_WARN * f64::from(u.ports_allowed.max(1)))
        .map(|u| {
            format!(
                "{} uses {} of {} ports towards {} {}",
                u.public,
                u.ports_used,
                u.ports_allowed,
                u.protocol.name(),
                u.destination
            )
        })
        .collect();
    if busy.is_empty() {
        let top = summary.port_use.first().map_or(String::new(), |u| {
            format!(
                "; busiest: {} towards {} ({} of {})",
                u.public, u.destination, u.ports_used, u.ports_allowed
            )
        });
        return Finding::pass(
            ID,
            format!(
                "{} translations, no public address near port exhaustion{top}",
                summary.total
            ),
        );
    }
    Finding::warn(
        ID,
        format!("near port exhaustion (80 % or more): {}", busy.join("; ")),
        Fix::say("add SNAT addresses to snat_to in natgw.toml (paired pooling spreads hosts over them) and consider port_selection = \"random\"; then:")
            .then_run(&["natgw", "up"]),
    )
}

/// natgw's own record of what it changed: usable, and no apply left unfinished.
fn record(o: &Observed) -> Finding {
    const ID: &str = "record";
    if let Some(problem) = &o.state_problem {
        return Finding::fail(
            ID,
            format!("natgw's record is unusable: {problem}"),
            Fix::say("undo what can be undone (natgw's table and routes), see which sysctls to check, set the record aside, and start again:")
                .then_run(&["natgw", "down"])
                .then_run(&["natgw", "up"]),
        );
    }
    match &o.state {
        None => Finding::pass(ID, "natgw has no record here (not up)"),
        Some(state) => match state.applying {
            Some(applying) => Finding::fail(
                ID,
                format!("an apply by natgw (pid {}) stopped half-way", applying.pid),
                Fix::say("finish it (or undo it with natgw down):").then_run(&["natgw", "up"]),
            )
            .repaired_by(Repair::ApplyGateway),
            None => Finding::pass(ID, "natgw's record is complete"),
        },
    }
}

/// Without roles most checks have nothing to look at: the failure says why once, and
/// every check that needs roles is listed as skipped.
fn without_roles(inputs: &Inputs, e: &DetectError) -> Vec<Finding> {
    let id = match e {
        DetectError::NoDefaultRoute | DetectError::SeveralDefaultRoutes(_) => "default-route",
        DetectError::NoPrivateInterface | DetectError::PrivateWithoutIpv4(_) => "private-interface",
        _ => "public-interface",
    };
    let mut findings = vec![Finding::fail(
        id,
        e.to_string(),
        Fix::say("fix what the message says, or name the interfaces: natgw doctor --public IFACE --private IFACE"),
    )];
    let skipped = format!("needs the interfaces' roles, which are unknown ({id} failed)");
    for check in ROLE_CHECKS.iter().filter(|c| **c != id) {
        findings.push(match *check {
            // natgw's own table can be judged without roles when natgw is not up.
            "natgw-table" => natgw_table(inputs),
            other => Finding::skip(other, skipped.clone()),
        });
    }
    findings.extend([
        netfilter(inputs),
        conntrack(inputs),
        dns(inputs.observed, &inputs.nameservers),
    ]);
    findings
}

/// The foreign firewall, or the skip finding that says why it is unknown.
fn chains_or_skip<'i>(inputs: &'i Inputs, id: &'static str) -> Result<&'i [Chain], Finding> {
    inputs
        .firewall
        .as_deref()
        .map_err(|why| Finding::skip(id, format!("the firewall could not be read: {why}")))
}

/// Each private prefix with the private interface it lies behind: the one routed to
/// it, or the one whose network holds it; every private interface when neither.
fn private_sources<'r>(o: &Observed, roles: &'r Roles) -> Vec<(IpNet, &'r str)> {
    let mut sources = Vec::new();
    for prefix in roles.private_prefixes.iter().filter(|p| p.addr().is_ipv4()) {
        let behind = o
            .routes
            .iter()
            .filter(|r| r.destination.prefix_len() > 0 && r.destination.contains(prefix))
            .max_by_key(|r| r.destination.prefix_len())
            .and_then(|r| roles.private.iter().find(|l| Some(l.index) == r.oif));
        match behind {
            Some(link) => sources.push((*prefix, link.name.as_str())),
            None => sources.extend(roles.private.iter().map(|l| (*prefix, l.name.as_str()))),
        }
    }
    sources
}

/// New connections from a private source out of the public interface.
fn outbound<'a>(prefix: IpNet, iif: &'a str, public: &'a str, state: &'a str) -> Flow<'a> {
    Flow {
        iif,
        oif: public,
        saddr: Endpoint::Net(prefix),
        daddr: Endpoint::Internet,
        state,
        mark: None,
    }
}

/// Replies from the internet to a private source.
fn replies<'a>(prefix: IpNet, oif: &'a str, public: &'a str, state: &'a str) -> Flow<'a> {
    Flow {
        iif: public,
        oif,
        saddr: Endpoint::Internet,
        daddr: Endpoint::Net(prefix),
        state,
        mark: None,
    }
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
            Fix::run(&["ip", "link", "set", &link.name, "up"]),
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
            Fix::say(format!(
                "check the cable and the switch port of {}",
                link.name
            )),
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
            Fix::say(format!(
                "give {0} its public address (from your provider): ip addr add ADDR/LEN dev {0}",
                link.name
            )),
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
            Fix::say(format!("give {0} the private network's gateway address, e.g. ip addr add 10.0.0.1/24 dev {0}", link.name)),
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
            Fix::say(format!("add a default route via your upstream router: ip route add default via ROUTER dev {public}")),
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
            Fix::say(format!("point the default route at your upstream router on {public}: ip route replace default via ROUTER dev {public}")),
        ),
        several => {
            let list: Vec<String> = several.iter().map(describe).collect();
            let best = several.iter().min_by_key(|r| r.metric).expect("non-empty");
            let detail = format!("{} IPv4 default routes: {}", several.len(), list.join("; "));
            if best.oif == Some(roles.public.index) {
                let extra = several.iter().filter(|r| r.oif != best.oif || r.metric != best.metric);
                let fix = extra.fold(
                    Fix::say("delete the extra default routes, so traffic cannot leave unexpectedly:"),
                    |fix, r| fix.then_run(&del_default(r, &name)),
                );
                Finding::warn(ID, detail, fix)
            } else {
                Finding::fail(
                    ID,
                    format!("{detail}; the preferred one does not use {public}"),
                    Fix::say(format!("delete the preferred default route, so the one through {public} is used (or give that one a lower metric):"))
                        .then_run(&del_default(best, &name)),
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
            Fix::say("Debian/Ubuntu (dnf install nftables on RHEL-like systems):")
                .then_run(&["apt-get", "install", "nftables"]),
        );
    }
    if let Some(Err(e)) = &inputs.nat_check {
        return Finding::fail(
            ID,
            format!("the kernel rejected a NAT ruleset: {e}"),
            Fix::say("load the module (or use a kernel with CONFIG_NF_TABLES and CONFIG_NFT_NAT):")
                .then_run(&["modprobe", "nft_nat"]),
        );
    }
    let chains = match &inputs.firewall {
        Ok(chains) => chains,
        Err(why) => {
            return Finding::warn(
                ID,
                format!("nft is installed, but the ruleset could not be read: {why}"),
                Fix::say("see the error:").then_run(&["nft", "-j", "list", "ruleset"]),
            )
        }
    };
    let legacy_rules = chains.iter().any(|c| c.legacy && !c.rules.is_empty());
    // natgw's own table counts: its rules are invisible to iptables-legacy and vice versa.
    let nft_in_use = chains.iter().any(|c| !c.legacy);
    let checked = if inputs.nat_check.is_some() {
        "nftables NAT works (kernel accepted natgw's ruleset in a check-only transaction)"
    } else {
        "nft is installed"
    };
    if legacy_rules && nft_in_use {
        return Finding::warn(ID, format!("{checked}, but rules exist in both iptables-legacy and nftables: neither tool shows the other's rules"), Fix::say("list both, then move the legacy rules to nftables (the last command prints them translated):")
            .then_run(&["iptables-legacy-save"])
            .then_run(&["nft", "list", "ruleset"])
            .then_shell("iptables-legacy-save | iptables-restore-translate"));
    }
    Finding::pass(ID, checked)
}

/// natgw's own table, judged by the plan: is it there when natgw is up, and is it still
/// exactly what natgw installed?
fn natgw_table(inputs: &Inputs) -> Finding {
    const ID: &str = "natgw-table";
    let o = inputs.observed;
    if !o.nft_present {
        return Finding::skip(
            ID,
            "the nft tool is not installed: natgw's table cannot be read",
        );
    }
    let table = format!("{} {}", crate::TABLE_FAMILY, crate::TABLE_NAME);
    match (&o.state, &o.table) {
        (None, None) => Finding::pass(ID, "natgw is not up here"),
        (None, Some(_)) => Finding::skip(
            ID,
            format!("table {table} exists, but natgw has no record of installing it here, so changes to it cannot be detected"),
        ),
        (Some(_), None) => missing_table(&table),
        (Some(_), Some(_)) => match crate::desired(inputs.settings, o) {
            Err(e) => Finding::skip(ID, format!("cannot tell what the table should be: {e}")),
            Ok(desired) => table_in_plan(&table, &crate::plan(&desired, o).changes),
        },
    }
}

fn missing_table(table: &str) -> Finding {
    Finding::fail(
        "natgw-table",
        format!("natgw is up here, but its table {table} is gone: nothing is translated or filtered (did something run `nft flush ruleset`, e.g. nftables.service?)"),
        Fix::say("reinstall the table:").then_run(&["natgw", "up"]),
    )
    .repaired_by(Repair::ApplyGateway)
}

fn table_in_plan(table: &str, changes: &[Change]) -> Finding {
    const ID: &str = "natgw-table";
    let reason = changes.iter().find_map(|c| match c {
        Change::ReplaceTable { reason, .. } => Some(*reason),
        _ => None,
    });
    match reason {
        None => Finding::pass(ID, format!("table {table} is exactly as natgw installed it")),
        Some(TableReason::Create) => missing_table(table),
        Some(TableReason::Drift) => Finding::fail(
            ID,
            format!("table {table} was changed outside natgw: it differs from what natgw installed (`nft list table {table}` shows it)"),
            Fix::say("reinstall natgw's table (keep your own rules in a table of your own):").then_run(&["natgw", "up"]),
        )
        .repaired_by(Repair::ApplyGateway),
        Some(TableReason::Update) => Finding::warn(
            ID,
            format!("table {table} does not match the configuration given (interfaces, prefixes or address changed since natgw up)"),
            Fix::say("update the table:").then_run(&["natgw", "up"]),
        )
        .repaired_by(Repair::ApplyGateway),
    }
}

/// A per-interface sysctl as `sysctl -w` takes it whatever the name: with slashes, so
/// that the dot in `eth0.100` stays part of the interface name.
fn conf_path(iface: &str, key: &str) -> String {
    format!("net/ipv4/conf/{iface}/{key}")
}

fn ip_forward(o: &Observed, roles: &Roles) -> Finding {
    const ID: &str = "ip-forward";
    let value = |key: &str| o.sysctls.get(key).map(String::as_str);
    if value(IP_FORWARD) != Some("1") {
        let f = Finding::fail(
            ID,
            format!("{IP_FORWARD} = {}", value(IP_FORWARD).unwrap_or("?")),
            Fix::run(&["sysctl", "-w", &format!("{IP_FORWARD}=1")]),
        );
        return f.repaired_by(Repair::ApplyGateway);
    }
    let off: Vec<&str> = std::iter::once(roles.public)
        .chain(roles.private.iter().copied())
        .map(|l| l.name.as_str())
        .filter(|name| value(&format!("net.ipv4.conf.{name}.forwarding")) == Some("0"))
        .collect();
    if !off.is_empty() {
        let fix = off.iter().fold(Fix::default(), |fix, n| {
            fix.then_run(&["sysctl", "-w", &format!("{}=1", conf_path(n, "forwarding"))])
        });
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
    let chains = match chains_or_skip(inputs, ID) {
        Ok(chains) => chains,
        Err(skip) => return skip,
    };
    let public = &roles.public.name;
    let current = v4_addresses(inputs.observed, roles.public);
    let mut rules: Vec<firewall::SnatRule> = Vec::new();
    for (prefix, iif) in private_sources(inputs.observed, roles) {
        for rule in snat_rules(chains, &outbound(prefix, iif, public, "new")) {
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    if inputs.settings.dataplane == crate::dataplane::DataplaneKind::Ebpf {
        // IPv4 only (IPv6 stays with natgw's table), and natgw's own rules are its
        // IPv6 translation.
        let mut v4 = Vec::new();
        for (prefix, iif) in private_sources(inputs.observed, roles) {
            if !prefix.addr().is_ipv4() {
                continue;
            }
            v4.extend(
                snat_rules(chains, &outbound(prefix, iif, public, "new"))
                    .into_iter()
                    .filter(|r| !r.natgw),
            );
        }
        return ebpf_snat(
            &v4,
            public,
            &current,
            &inputs.settings.snat_to,
            inputs.settings.bypass_conntrack,
        );
    }
    if let Some(rule) = rules
        .iter()
        .find(|r| r.to.is_some_and(|a| !current.contains(&a)))
    {
        return stale_snat(rule, public, &current, &inputs.settings.snat_to);
    }
    if rules.is_empty() {
        return Finding::fail(
            ID,
            format!("no rule source-translates the private prefixes out of {public}"),
            Fix::run(&["natgw", "up"]),
        )
        .repaired_by(Repair::ApplyGateway);
    }
    let how: Vec<String> = rules
        .iter()
        .map(|r| match (r.to, r.masquerade) {
            (Some(to), _) => format!("{} ({to})", r.chain),
            (None, true) => format!("{} (masquerade)", r.chain),
            (None, false) => format!("{} (snat, address not shown)", r.chain),
        })
        .collect();
    Finding::pass(
        ID,
        format!("translated out of {public} by {}", how.join(", ")),
    )
}

/// With the eBPF plane no netfilter rule should translate natgw's flows: the
/// programs translate after netfilter, and a packet some rule already translated is
/// no longer from a private source, so it bypasses them (its mapping is conntrack's,
/// with conntrack's filtering and timeouts). With `bypass`, the flows the programs
/// translate are untracked, and netfilter's NAT never sees them: such a rule then only
/// translates what the programs leave alone.
fn ebpf_snat(
    rules: &[firewall::SnatRule],
    public: &str,
    current: &[IpAddr],
    configured: &[IpAddr],
    bypass: bool,
) -> Finding {
    const ID: &str = "snat";
    // The programs translate to the configured pool as the table does: an address the
    // public interface does not carry is worth the same look.
    let uncarried = configured
        .iter()
        .find(|a| a.is_ipv4() && !current.contains(a));
    match (rules.first(), uncarried) {
        (None, Some(to)) => configured_but_not_carried(*to, public, current),
        (None, None) => Finding::pass(
            ID,
            format!("translated by natgw's eBPF programs on {public} (see ebpf_attached); no netfilter rule translates first"),
        ),
        (Some(rule), None) if bypass => Finding::pass(
            ID,
            format!(
                "translated by natgw's eBPF programs on {public}; {} ({}) would source-translate the private prefixes too, but with bypass_conntrack the flows the programs translate are untracked and never meet it",
                rule.chain, rule.rule
            ),
        ),
        (Some(rule), _) => Finding::warn(
            ID,
            format!(
                "{} ({}) source-translates the private prefixes out of {public} before natgw's eBPF programs, which then leave those packets alone",
                rule.chain, rule.rule
            ),
            Fix::say(format!(
                "remove that rule of {} from its owner's configuration (natgw does not touch foreign rules)",
                rule.chain
            )),
        ),
    }
}

/// natgw translates to `to` as asked, but `public` does not carry it. Asked for
/// explicitly: a virtual or routed address is legitimate (pools, HA), so this is worth a
/// look, not a failure.
fn configured_but_not_carried(to: IpAddr, public: &str, current: &[IpAddr]) -> Finding {
    Finding::warn(
        "snat",
        format!("natgw translates to {to} as configured, but {public} does not carry it ({}): replies come back only if the upstream routes {to} to this host", join(current)),
        Fix::say(format!("add the address to {public}, or make sure the upstream routes {to} here:"))
            .then_run(&["ip", "addr", "add", &format!("{to}/32"), "dev", public]),
    )
}

fn stale_snat(
    rule: &firewall::SnatRule,
    public: &str,
    current: &[IpAddr],
    configured: &[IpAddr],
) -> Finding {
    let to = rule.to.expect("stale rules have an address");
    if rule.natgw && configured.contains(&to) {
        return configured_but_not_carried(to, public, current);
    }
    let detail = format!(
        "{} translates to {to}, but {public} has {}: replies to {to} never come back",
        rule.chain,
        join(current)
    );
    if rule.natgw {
        return Finding::fail(
            "snat",
            detail,
            Fix::say("re-render natgw's rule with the current address:").then_run(&["natgw", "up"]),
        )
        .repaired_by(Repair::ApplyGateway);
    }
    Finding::fail(
        "snat",
        detail,
        Fix::say(format!(
            "delete the stale rule in {}: {}\nthen:",
            rule.chain, rule.rule
        ))
        .then_run(&["natgw", "up"]),
    )
}

/// Foreign forward chains, evaluated for the gateway's traffic: new connections out,
/// their later packets, and the replies. An accept in one base chain does not stop a
/// drop in another at the same hook, so every foreign chain must let them through.
fn forward_policy(inputs: &Inputs, roles: &Roles) -> Finding {
    const ID: &str = "forward-policy";
    let chains = match chains_or_skip(inputs, ID) {
        Ok(chains) => chains,
        Err(skip) => return skip,
    };
    let public = roles.public.name.as_str();
    let sources = private_sources(inputs.observed, roles);
    // With bypass_conntrack the eBPF plane takes the IPv4 flows it translates out of
    // conntrack: a foreign chain sees them untracked, both ways, and its
    // `ct state established` rules do not let them through.
    let ebpf = inputs.settings.dataplane == crate::dataplane::DataplaneKind::Ebpf
        && inputs.settings.bypass_conntrack;
    let foreign = chains
        .iter()
        .filter(|c| !c.is_natgw() && c.hook == Some(Hook::Forward));
    let mut partial: Option<(&Chain, String)> = None;
    for chain in foreign {
        // The first drop explains; the fix covers every private interface cut off.
        let mut first_drop: Option<String> = None;
        let mut cut_off: Vec<&str> = Vec::new();
        for &(prefix, iif) in &sources {
            let flows = if ebpf {
                vec![
                    (
                        outbound(prefix, iif, public, "untracked")
                            .marked(crate::dataplane::OUTBOUND_MARK),
                        format!("traffic from {prefix} ({iif}) to {public}, untracked on the eBPF plane"),
                    ),
                    (
                        replies(prefix, iif, public, "untracked").marked(crate::dataplane::MARK),
                        format!("replies from {public} to {prefix} ({iif}), untracked on the eBPF plane"),
                    ),
                ]
            } else {
                vec![
                    (
                        outbound(prefix, iif, public, "new"),
                        format!("new connections from {prefix} ({iif}) to {public}"),
                    ),
                    (
                        outbound(prefix, iif, public, "established"),
                        format!("established traffic from {prefix} ({iif}) to {public}"),
                    ),
                    (
                        replies(prefix, iif, public, "established"),
                        format!("replies from {public} to {prefix} ({iif})"),
                    ),
                ]
            };
            for (flow, what) in &flows {
                let (fate, some_dropped) = fate(chains, chain, flow);
                let why = match fate {
                    Fate::Accepted => {
                        if let (None, Some(rule)) = (&partial, some_dropped.first()) {
                            partial = Some((chain, format!("drops some {what}: `{}`", rule.text)));
                        }
                        continue;
                    }
                    Fate::Dropped(None) => {
                        format!("has policy drop and no rule accepts all {what}")
                    }
                    Fate::Dropped(Some(rule)) => format!("drops {what}: `{}`", rule.text),
                };
                first_drop.get_or_insert(why);
                if !cut_off.contains(&iif) {
                    cut_off.push(iif);
                }
            }
        }
        if let Some(why) = first_drop {
            return Finding::fail(
                ID,
                format!("forward chain {} {} {why}", chain.table, chain.name),
                forward_fix(chain, chains, &cut_off, public, ebpf),
            );
        }
    }
    if let Some((chain, why)) = partial {
        let first = sources.first().map_or("PRIVATE", |s| s.1);
        return Finding::warn(
            ID,
            format!("forward chain {} {} {why}", chain.table, chain.name),
            Fix::say("if that is not intended:").then(forward_fix(
                chain,
                chains,
                &[first],
                public,
                ebpf,
            )),
        );
    }
    Finding::pass(
        ID,
        "no foreign forward chain drops private-to-public traffic or its replies",
    )
}

/// With `fast_path`, the packets of a flow after the forward path has carried it skip
/// every forward chain, as with a flowtable: a foreign chain sees each flow's first
/// packets only. Worth knowing where its rules count, limit or drop later packets, or
/// change while flows keep going. None without the fast path.
fn fast_path(inputs: &Inputs, roles: &Roles) -> Option<Finding> {
    const ID: &str = "fast-path";
    if inputs.settings.dataplane != crate::dataplane::DataplaneKind::Ebpf
        || !inputs.settings.fast_path
    {
        return None;
    }
    let chains = match chains_or_skip(inputs, ID) {
        Ok(chains) => chains,
        Err(skip) => return Some(skip),
    };
    // Routing's hooks: a fast packet meets none of them (and no netdev ingress chain of
    // the public interface either, which the programs run before).
    let foreign: Vec<String> = chains
        .iter()
        .filter(|c| !c.is_natgw() && !c.rules.is_empty())
        .filter_map(|c| {
            let hook = match c.hook? {
                Hook::Prerouting => "prerouting",
                Hook::Forward => "forward",
                Hook::Postrouting => "postrouting",
                _ => return None,
            };
            Some(format!("{} {} ({hook})", c.table, c.name))
        })
        .collect();
    let public = roles.public.name.as_str();
    Some(if foreign.is_empty() {
        Finding::pass(
            ID,
            format!("no foreign prerouting, forward or postrouting rules: for flows the forward path has carried, the fast path skips only natgw's own between the private side and {public}"),
        )
    } else {
        Finding::warn(
            ID,
            format!(
                "fast_path = true: chain(s) {} see only the first packets of each flow between the private side and {public}; rules that count, limit or drop later packets, or that change while a flow keeps going, do not apply to the rest of it (a flow leaves the fast path after {} s without traffic)",
                foreign.join(", "),
                crate::dataplane::FAST_IDLE_SECS
            ),
            Fix::say("if those rules must see every packet, remove fast_path = true from natgw.toml, then:")
                .then_run(&["natgw", "up"]),
        )
    })
}

/// Accept rules for both directions and every private interface given, where the
/// chain's owner expects them: Docker's DOCKER-USER (Docker rewrites its other
/// chains), else the chain itself.
/// On the eBPF plane, replies are what the programs admitted: natgw's mark, not a
/// conntrack state, identifies them.
fn forward_fix(
    chain: &Chain,
    chains: &[Chain],
    privates: &[&str],
    public: &str,
    ebpf: bool,
) -> Fix {
    use crate::dataplane::{MARK, MARK_MASK};
    let iptables_replies: Vec<String> = if ebpf {
        [
            "-m",
            "mark",
            "--mark",
            &format!("{MARK:#010x}/{MARK_MASK:#010x}"),
        ]
        .map(String::from)
        .into()
    } else {
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
            .map(String::from)
            .into()
    };
    let nft_replies = if ebpf {
        format!("meta mark & {MARK_MASK:#010x} == {MARK:#010x}")
    } else {
        "ct state established,related".to_string()
    };
    let docker = chain.is_docker(chains);
    let tool = if chain.legacy {
        "iptables-legacy"
    } else {
        "iptables"
    };
    let mut fix = Fix::default();
    for private in privates {
        fix = if docker || chain.legacy {
            let target = if docker {
                "DOCKER-USER"
            } else {
                chain.name.as_str()
            };
            fix.then_run(&[
                tool, "-I", target, "-i", private, "-o", public, "-j", "ACCEPT",
            ])
            .then_run(
                &[tool, "-I", target, "-i", public, "-o", private]
                    .into_iter()
                    .chain(iptables_replies.iter().map(String::as_str))
                    .chain(["-j", "ACCEPT"])
                    .collect::<Vec<_>>(),
            )
        } else {
            let (t, c) = (&chain.table, &chain.name);
            fix.then_run(&[
                "nft",
                &format!(
                    "insert rule {t} {c} iifname {} oifname {} accept",
                    nft_string(private),
                    nft_string(public)
                ),
            ])
            .then_run(&[
                "nft",
                &format!(
                    "insert rule {t} {c} iifname {} oifname {} {nft_replies} accept",
                    nft_string(public),
                    nft_string(private)
                ),
            ])
        };
    }
    fix
}

/// `ip route del` of exactly this default route.
fn del_default(r: &crate::observed::Route, name: &dyn Fn(Option<u32>) -> String) -> Vec<String> {
    let mut words: Vec<String> = ["ip", "route", "del", "default"].map(String::from).into();
    if let Some(gw) = r.gateway {
        words.extend(["via".into(), gw.to_string()]);
    }
    words.extend([
        "dev".into(),
        name(r.oif),
        "metric".into(),
        r.metric.to_string(),
    ]);
    words
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
        .map(|n| conf_path(n, "rp_filter"))
        .chain((all == 1).then(|| "net.ipv4.conf.all.rp_filter".to_string()))
        .fold(
            Fix::say("loose mode (2) still drops packets from nowhere routable:"),
            |fix, key| fix.then_run(&["sysctl", "-w", &format!("{key}=2")]),
        );
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
            Fix::run(&["ip", "link", "set", &down.name, "up"]),
        )
        .repaired_by(Repair::LinkUp(down.name.clone()));
    }
    Finding::fail(
        ID,
        format!(
            "no route back to {}: replies for them would leave by the default route",
            join(&missing)
        ),
        Fix::say("add them to `routes` in natgw.toml ({ to = PREFIX, via = ROUTER }), then:")
            .then_run(&["natgw", "up"]),
    )
    .repaired_by(Repair::ApplyGateway)
}

fn conntrack(inputs: &Inputs) -> Finding {
    const ID: &str = "conntrack";
    let Some(ct) = inputs.observed.conntrack else {
        return Finding::skip(
            ID,
            "connection tracking is not loaded here (it loads with the first NAT rule, e.g. natgw up)",
        );
    };
    let percent = ct.count as f64 * 100.0 / ct.max.max(1) as f64;
    let usage = format!("{} of {} entries in use ({percent:.1} %)", ct.count, ct.max);
    if percent > 80.0 {
        let status = if percent > 95.0 {
            Status::Fail
        } else {
            Status::Warn
        };
        return Finding {
            id: ID,
            status,
            detail: format!("{usage}: new connections are dropped when the table is full"),
            fix: Some(raise_max(ct.max).to_string()),
            repair: None,
        };
    }
    let Some(now) = inputs.conntrack_stats else {
        return Finding::pass(ID, format!("{usage} (drop counters unavailable)"));
    };
    let since_last = inputs
        .last_run
        .and_then(|last| Some((now.since(&last.stats)?, last.taken_at)));
    let (lost, when) = match since_last {
        Some((lost, taken_at)) => (
            lost,
            format!(
                "since the last doctor run {} ago",
                age(inputs.now.saturating_sub(taken_at))
            ),
        ),
        None => (
            now,
            "since boot (totals: they may be old; the next doctor run reports only new ones)"
                .to_string(),
        ),
    };
    if lost.lost() == 0 {
        let when = if since_last.is_some() {
            &when
        } else {
            "since boot"
        };
        return Finding::pass(ID, format!("{usage}; no connection lost {when}"));
    }
    Finding::warn(
        ID,
        format!(
            "{usage}; {when} the kernel dropped {} / early-dropped {} / failed to insert {} new connections",
            lost.drop, lost.early_drop, lost.insert_failed
        ),
        lost_fix(&lost, ct.max),
    )
}

/// The table is global: only the root namespace may resize it (natgw's `max_flows`
/// does so when it runs there).
fn raise_max(max: u64) -> Fix {
    Fix::say(format!(
        "raise the conntrack maximum (now {max}; max_flows in natgw.toml), in the root namespace:"
    ))
    .then_run(&[
        "sysctl",
        "-w",
        &format!("net.netfilter.nf_conntrack_max={}", max.saturating_mul(2)),
    ])
}

/// Insert failures are clashes of translated tuples (ports exhausted towards one
/// destination), not a full table: more addresses or random ports help, a bigger
/// table does not. The kernel counts each clash as a drop too, so only drops beyond
/// the insert failures, and early drops, point at a full table.
fn lost_fix(lost: &super::ConntrackStats, max: u64) -> Fix {
    let clashes = Fix::say("give natgw more SNAT addresses (each carries about 64k flows per destination address and port) or fully random ports (port_selection = \"random\" in natgw.toml)");
    let full = lost.drop.saturating_sub(lost.insert_failed) + lost.early_drop > 0;
    match (lost.insert_failed > 0, full) {
        (true, true) => clashes.then(raise_max(max)),
        (true, false) => clashes,
        _ => raise_max(max),
    }
}

/// `45 s`, `12 min`, `3 h`, `2 d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
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
    let chains = match chains_or_skip(inputs, ID) {
        Ok(chains) => chains,
        Err(skip) => return skip,
    };
    if clamps_mss(chains) {
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
    Finding::warn(ID, format!("{} exceed the public MTU of {} ({}) and TCP MSS is not clamped: large TCP segments stall where PMTU discovery is blocked", bigger.join(", "), public.name, public.mtu), Fix::say("set mss_clamp = true in natgw.toml and run natgw up, or lower the private MTU, or clamp by hand:").then(clamp_commands(&public.name)))
}

/// A clamping rule in a table of its own, so it works on a host with no firewall yet.
pub fn clamp_commands(public: &str) -> Fix {
    Fix::run(&["nft", "add table inet mssclamp"])
        .then_run(&[
            "nft",
            "add chain inet mssclamp forward { type filter hook forward priority mangle; policy accept; }",
        ])
        .then_run(&[
            "nft",
            &format!(
                "add rule inet mssclamp forward oifname {} tcp flags syn tcp option maxseg size set rt mtu",
                nft_string(public)
            ),
        ])
}

/// An interface name as an nft string literal.
fn nft_string(name: &str) -> String {
    format!("\"{name}\"")
}

/// Looks only: no query leaves the machine. A nameserver must be configured and routable.
/// Shared with `natgw node check`.
pub fn dns(o: &Observed, nameservers: &[IpAddr]) -> Finding {
    const ID: &str = "dns";
    if nameservers.is_empty() {
        return Finding::warn(ID, "no nameserver in /etc/resolv.conf: this host cannot resolve names (private nodes often use the headnode as resolver)", Fix::say("add `nameserver ADDR` to /etc/resolv.conf (or configure systemd-resolved)"));
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
            Fix::say("fix the default route, or point /etc/resolv.conf at a reachable resolver"),
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
    use crate::doctor::iptables::parse_iptables_save;
    use crate::doctor::{ConntrackStats, CounterRecord};
    use crate::fixtures::{addr, link, route};
    use crate::observed::{Conntrack, Route};
    use crate::state::RecordedState;
    use std::collections::BTreeMap;

    /// `nft -j list ruleset` fixtures (see fixtures/generate.sh).
    const NATGW: &str = include_str!("fixtures/natgw.json");
    const GUARDED: &str = include_str!("fixtures/guarded.json");
    const DROPPER: &str = include_str!("fixtures/dropper.json");
    const JUMP_SNAT: &str = include_str!("fixtures/jump_snat.json");
    const MIXED: &str = include_str!("fixtures/mixed.json");

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

    fn settings() -> Settings {
        Settings {
            public: Some("wan0".into()),
            ..Settings::default()
        }
    }

    /// Chains of several `nft -j list ruleset` documents, each loaded alone.
    fn chains(rulesets: &[&str]) -> Vec<Chain> {
        rulesets
            .iter()
            .flat_map(|json| {
                let ruleset: nftables::schema::Nftables =
                    serde_json::from_str(json).expect("fixture parses");
                crate::doctor::from_nft::chains(&ruleset)
            })
            .collect()
    }

    fn inputs<'a>(settings: &'a Settings, o: &'a Observed, chains: Vec<Chain>) -> Inputs<'a> {
        Inputs {
            settings,
            observed: o,
            firewall: Ok(chains),
            nat_check: Some(Ok(())),
            nameservers: vec!["203.0.113.53".parse().unwrap()],
            conntrack_stats: None,
            last_run: None,
            now: 1_000_000,
            translations: Some(crate::mapping::TranslationView::new().summary(5, 64_512)),
        }
    }

    fn run(o: &Observed, rulesets: &[&str], legacy: &str) -> Vec<Finding> {
        let mut chains = chains(rulesets);
        chains.extend(parse_iptables_save(legacy, true));
        let findings = all(&inputs(&settings(), o, chains));
        findings.iter().for_each(assert_pasteable);
        findings
    }

    /// Every fix pastes into a shell as it is printed: prose lines are comments, every
    /// other line starts with a command a stock host has, and no placeholder is left
    /// in a command.
    fn assert_pasteable(f: &Finding) {
        const COMMANDS: &[&str] = &[
            "ip",
            "nft",
            "sysctl",
            "natgw",
            "iptables",
            "iptables-legacy",
            "iptables-legacy-save",
            "apt-get",
            "modprobe",
        ];
        const PLACEHOLDERS: &[&str] =
            &["ADDR", "LEN", "IFACE", "ROUTER", "GW", "PREFIX", "PRIVATE"];
        for line in f.fix.iter().flat_map(|fix| fix.lines()) {
            if line.starts_with("# ") {
                continue;
            }
            let command = line.split_whitespace().next().unwrap_or_default();
            assert!(
                COMMANDS.contains(&command),
                "{}: `{line}` is neither a command nor prose",
                f.id
            );
            let words = line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            assert!(
                !words.clone().any(|w| PLACEHOLDERS.contains(&w)),
                "{}: placeholder in `{line}`",
                f.id
            );
            // Outside single quotes, a `;` or `&&` would chain a second command.
            let unquoted: String = line.split('\'').step_by(2).collect();
            assert!(
                !unquoted.contains(';') && !unquoted.contains("&&"),
                "{}: two commands on one line: `{line}`",
                f.id
            );
        }
    }

    fn find<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no {id} in {findings:?}"))
    }

    #[test]
    fn healthy_gateway_passes_everything() {
        let findings = run(&healthy(), &[NATGW], "");
        let ids: Vec<_> = findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "record",
                "public-interface",
                "private-interface",
                "default-route",
                "netfilter",
                "natgw-table",
                "ip-forward",
                "ipv6",
                "snat",
                "forward-policy",
                "rp-filter",
                "private-routes",
                "conntrack",
                "port-use",
                "mtu",
                "dns"
            ]
        );
        for f in &findings {
            assert_eq!(f.status, Status::Pass, "{f:?}");
        }
        assert_eq!(
            find(&findings, "natgw-table").detail,
            "natgw is not up here"
        );
    }

    #[test]
    fn down_interface_and_forwarding_off_are_repairable_failures() {
        let mut o = healthy();
        o.links[2].up = false;
        o.sysctls.insert(IP_FORWARD.into(), "0".into());
        let findings = run(&o, &[NATGW], "");
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
        let findings = run(&healthy(), &[NATGW], legacy);
        let f = find(&findings, "snat");
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("198.51.100.4") && f.repair.is_none(),
            "{f:?}"
        );
        let none = run(&healthy(), &[], "");
        assert_eq!(find(&none, "snat").status, Status::Fail);
    }

    #[test]
    fn a_jump_to_a_chain_named_snat_or_a_comment_is_no_translation() {
        let findings = run(&healthy(), &[JUMP_SNAT], "");
        let f = find(&findings, "snat");
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.detail.starts_with("no rule source-translates"), "{f:?}");
    }

    #[test]
    fn with_the_ebpf_plane_a_netfilter_snat_is_the_problem_not_its_absence() {
        let settings = Settings {
            dataplane: crate::dataplane::DataplaneKind::Ebpf,
            ..settings()
        };
        let o = healthy();
        let check = |chains| {
            snat(
                &inputs(&settings, &o, chains),
                &roles(&settings, &o).unwrap(),
            )
        };
        let none = check(Vec::new());
        assert_eq!(none.status, Status::Pass, "{none:?}");
        assert!(
            none.detail
                .starts_with("translated by natgw's eBPF programs"),
            "{none:?}"
        );
        // MIXED has iptables-nft's SNAT for 10.0.0.0/24 out of wan0 (see below).
        let mut foreign_chains = chains(&[MIXED]);
        foreign_chains.retain(|c| !c.is_natgw());
        let foreign = check(foreign_chains.clone());
        assert_eq!(foreign.status, Status::Warn, "{foreign:?}");
        assert!(
            foreign.detail.contains("before natgw's eBPF programs"),
            "{foreign:?}"
        );
        // With bypass_conntrack the programs' flows never meet that rule.
        let bypass = Settings {
            bypass_conntrack: true,
            ..settings.clone()
        };
        let moot = snat(
            &inputs(&bypass, &o, foreign_chains),
            &roles(&bypass, &o).unwrap(),
        );
        assert_eq!(moot.status, Status::Pass, "{moot:?}");
        assert!(moot.detail.contains("never meet it"), "{moot:?}");
        // The programs translate to a configured address wan0 does not carry.
        let elsewhere = Settings {
            snat_to: vec!["203.0.113.9".parse().unwrap()],
            ..settings.clone()
        };
        let f = snat(
            &inputs(&elsewhere, &o, Vec::new()),
            &roles(&elsewhere, &o).unwrap(),
        );
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.detail
                .contains("translates to 203.0.113.9 as configured, but wan0 does not carry it"),
            "{f:?}"
        );
    }

    #[test]
    fn snat_for_another_interface_or_source_does_not_count() {
        // MIXED: iptables-nft's SNAT is opaque in JSON (no address), its masquerade is
        // for 172.17.0.0/16 only, the foreign masquerade is for eth9.
        let mut chains = chains(&[MIXED]);
        chains.retain(|c| !c.is_natgw());
        let settings = settings();
        let o = healthy();
        let found = snat(
            &inputs(&settings, &o, chains),
            &roles(&settings, &o).unwrap(),
        );
        // Only iptables-nft's SNAT may translate 10.0.0.0/24 out of wan0.
        assert_eq!(found.status, Status::Pass, "{found:?}");
        assert_eq!(
            found.detail,
            "translated out of wan0 by ip nat POSTROUTING (snat, address not shown)"
        );
    }

    #[test]
    fn a_foreign_drop_chain_that_accepts_the_private_prefix_passes() {
        let findings = run(&healthy(), &[NATGW, GUARDED], "");
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Pass, "{f:?}");
    }

    /// The same chain cuts off the eBPF plane's replies with bypass_conntrack: they are untracked, and
    /// its `ct state established,related` does not take them; the fix matches the
    /// programs' mark instead.
    #[test]
    fn with_bypass_conntrack_a_chain_that_only_accepts_established_replies_fails() {
        let settings = Settings {
            dataplane: crate::dataplane::DataplaneKind::Ebpf,
            bypass_conntrack: true,
            ..settings()
        };
        let o = healthy();
        let findings = all(&inputs(&settings, &o, chains(&[NATGW, GUARDED])));
        findings.iter().for_each(assert_pasteable);
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.detail.contains(
                "has policy drop and no rule accepts all replies from wan0 to 10.0.0.0/24 (lan0), untracked on the eBPF plane"
            ),
            "{f:?}"
        );
        let fix = f.fix.clone().unwrap();
        assert!(
            fix.contains(
                "iifname \"wan0\" oifname \"lan0\" meta mark & 0x0f000000 == 0x0a000000 accept"
            ),
            "{fix}"
        );
    }

    /// The fast path takes later packets past every forward chain: doctor names the
    /// foreign ones that have rules, and says nothing without the fast path.
    #[test]
    fn with_the_fast_path_foreign_forward_rules_are_named() {
        let fast = Settings {
            dataplane: crate::dataplane::DataplaneKind::Ebpf,
            bypass_conntrack: true,
            fast_path: true,
            ..settings()
        };
        let o = healthy();
        let findings = all(&inputs(&fast, &o, chains(&[NATGW, GUARDED])));
        findings.iter().for_each(assert_pasteable);
        let f = find(&findings, "fast-path");
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.detail
                .contains("chain(s) ip guard forward (forward) see only the first packets"),
            "{f:?}"
        );
        let alone = all(&inputs(&fast, &o, chains(&[NATGW])));
        assert_eq!(find(&alone, "fast-path").status, Status::Pass);
        let without = Settings {
            fast_path: false,
            ..fast
        };
        let findings = all(&inputs(&without, &o, chains(&[NATGW, GUARDED])));
        assert!(findings.iter().all(|f| f.id != "fast-path"));
    }

    #[test]
    fn a_foreign_rule_dropping_private_traffic_fails_naming_it() {
        let findings = run(&healthy(), &[NATGW, DROPPER], "");
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.detail.contains("drops new connections from 10.0.0.0/24 (lan0) to wan0: `iifname lan0 counter drop`"),
            "{f:?}"
        );
    }

    #[test]
    fn foreign_forward_drop_policy_fails_with_command() {
        let policy_drop = r#"{"nftables": [{"table": {"family": "ip", "name": "filter", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
        let findings = run(&healthy(), &[NATGW, policy_drop], "");
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.fix.as_deref().unwrap().starts_with(
                r#"nft 'insert rule ip filter FORWARD iifname "lan0" oifname "wan0" accept'"#
            ),
            "{f:?}"
        );
    }

    #[test]
    fn forward_fix_covers_every_private_interface_cut_off() {
        let mut o = healthy();
        o.links.push(link(4, "lan.100"));
        o.addresses.push(addr(4, "192.168.7.1/24"));
        o.routes.push(route("192.168.7.0/24", None, 4));
        let policy_drop = r#"{"nftables": [{"table": {"family": "ip", "name": "filter", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
        let f = find(&run(&o, &[NATGW, policy_drop], ""), "forward-policy").clone();
        assert_eq!(f.status, Status::Fail, "{f:?}");
        let fix = f.fix.unwrap();
        for iface in ["lan0", "lan.100"] {
            assert!(
                fix.contains(&format!("iifname \"{iface}\" oifname \"wan0\" accept")),
                "{fix}"
            );
            assert!(
                fix.contains(&format!("iifname \"wan0\" oifname \"{iface}\" ct state")),
                "{fix}"
            );
        }
        assert_eq!(fix.lines().count(), 4, "{fix}");
        // A dotted name keeps its dot in a sysctl path written with slashes.
        o.sysctls
            .insert("net.ipv4.conf.lan.100.rp_filter".into(), "1".into());
        let f = find(&run(&o, &[NATGW], ""), "rp-filter").clone();
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .ends_with("\nsysctl -w net/ipv4/conf/lan.100/rp_filter=2"),
            "{f:?}"
        );
    }

    #[test]
    fn docker_forward_chain_is_fixed_in_docker_user() {
        let findings = run(&healthy(), &[MIXED], "");
        let f = find(&findings, "forward-policy");
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.detail.contains("ip filter FORWARD has policy drop"),
            "{f:?}"
        );
        assert_eq!(
            f.fix.as_deref().unwrap(),
            "iptables -I DOCKER-USER -i lan0 -o wan0 -j ACCEPT\niptables -I DOCKER-USER -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
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
        let findings = run(&o, &[NATGW], "");
        assert_eq!(find(&findings, "default-route").status, Status::Warn);
        assert_eq!(find(&findings, "rp-filter").status, Status::Warn);
        // Autodetection cannot pick between them: the finding says so under its id,
        // and every check that needs roles says it was skipped.
        let settings = Settings::default();
        let auto = all(&inputs(&settings, &o, vec![]));
        assert_eq!(find(&auto, "default-route").status, Status::Fail);
        for id in [
            "snat",
            "forward-policy",
            "mtu",
            "ip-forward",
            "public-interface",
        ] {
            let f = find(&auto, id);
            assert_eq!(f.status, Status::Skip, "{f:?}");
            assert!(f.detail.contains("roles"), "{f:?}");
        }
        assert_eq!(find(&auto, "natgw-table").status, Status::Pass);
    }

    #[test]
    fn checks_that_cannot_run_are_skipped_with_the_reason() {
        let mut o = healthy();
        o.nft_present = false;
        o.conntrack = None;
        o.links[2].mtu = 9000;
        let settings = settings();
        let findings = all(&Inputs {
            firewall: Err("the nft tool is not installed".into()),
            nat_check: None,
            ..inputs(&settings, &o, vec![])
        });
        assert_eq!(find(&findings, "netfilter").status, Status::Fail);
        for id in ["snat", "forward-policy", "mtu", "natgw-table", "conntrack"] {
            let f = find(&findings, id);
            assert_eq!(f.status, Status::Skip, "{f:?}");
            assert!(!f.detail.is_empty());
        }
        assert!(find(&findings, "snat")
            .detail
            .contains("nft tool is not installed"));
    }

    /// natgw up, its table read back with fingerprint `live`, installed as `recorded`.
    fn up_with_table(live: &str, recorded: &str) -> Observed {
        let desired = crate::desired(&settings(), &healthy()).unwrap();
        Observed {
            table: Some(crate::observed::LiveTable {
                fingerprint: live.to_string(),
            }),
            state: Some(RecordedState {
                table: Some(crate::state::InstalledTable {
                    digest: crate::render::render(&desired).digest,
                    fingerprint: recorded.to_string(),
                }),
                ..RecordedState::default()
            }),
            ..healthy()
        }
    }

    #[test]
    fn natgw_table_edited_outside_natgw_fails_and_natgw_up_repairs_it() {
        let installed = "as-installed";
        let intact = run(&up_with_table(installed, installed), &[NATGW], "");
        assert_eq!(find(&intact, "natgw-table").status, Status::Pass);

        let findings = run(&up_with_table("edited", installed), &[NATGW], "");
        let f = find(&findings, "natgw-table");
        assert_eq!(
            (f.status, f.repair.clone()),
            (Status::Fail, Some(Repair::ApplyGateway)),
            "{f:?}"
        );
        assert!(f.detail.contains("changed outside natgw"), "{f:?}");

        let mut gone = up_with_table(installed, installed);
        gone.table = None;
        let f = run(&gone, &[], "")
            .into_iter()
            .find(|f| f.id == "natgw-table")
            .unwrap();
        assert_eq!(
            (f.status, f.repair),
            (Status::Fail, Some(Repair::ApplyGateway))
        );
        assert!(f.detail.contains("is gone"));
    }

    fn conntrack_with(stats: ConntrackStats, last_run: Option<CounterRecord>) -> Finding {
        let settings = settings();
        let o = healthy();
        conntrack(&Inputs {
            conntrack_stats: Some(stats),
            last_run,
            ..inputs(&settings, &o, vec![])
        })
    }

    #[test]
    fn conntrack_reports_new_losses_since_the_last_run_and_old_ones_as_old() {
        let old = ConntrackStats {
            drop: 0,
            early_drop: 0,
            insert_failed: 7,
        };
        let first = conntrack_with(old, None);
        assert_eq!(first.status, Status::Warn);
        assert!(
            first.detail.contains("since boot") && first.detail.contains("may be old"),
            "{first:?}"
        );
        let record = CounterRecord {
            stats: old,
            taken_at: 1_000_000 - 300,
        };
        assert_eq!(conntrack_with(old, Some(record)).status, Status::Pass);

        // The kernel counts a clash as a drop and an insert failure.
        let more = ConntrackStats {
            drop: 2,
            insert_failed: 9,
            ..old
        };
        let f = conntrack_with(more, Some(record));
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail
                .contains("since the last doctor run 5 min ago the kernel dropped 2 / early-dropped 0 / failed to insert 2"),
            "{f:?}"
        );
        let fix = f.fix.unwrap();
        assert!(fix.contains("more SNAT addresses") && fix.contains("port_selection = \"random\""));
        assert!(!fix.contains("nf_conntrack_max"), "{fix}");
    }

    #[test]
    fn conntrack_table_full_and_not_loaded() {
        let mut o = healthy();
        o.conntrack = Some(Conntrack {
            count: 960,
            max: 1000,
        });
        let f = find(&run(&o, &[NATGW], ""), "conntrack").clone();
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("nf_conntrack_max"));
        o.conntrack = Some(Conntrack {
            count: 850,
            max: 1000,
        });
        assert_eq!(
            find(&run(&o, &[NATGW], ""), "conntrack").status,
            Status::Warn
        );
        o.conntrack = None;
        assert_eq!(
            find(&run(&o, &[NATGW], ""), "conntrack").status,
            Status::Skip
        );
    }

    #[test]
    fn mtu_fix_creates_its_own_table_and_offers_mss_clamp() {
        let mut o = healthy();
        o.links[2].mtu = 9000;
        let f = find(&run(&o, &[NATGW], ""), "mtu").clone();
        assert_eq!(f.status, Status::Warn);
        let fix = f.fix.unwrap();
        assert!(
            fix.starts_with("# set mss_clamp = true in natgw.toml"),
            "{fix}"
        );
        assert!(fix.ends_with(&clamp_commands("wan0").to_string()), "{fix}");
        assert_eq!(
            clamp_commands("wan0").to_string(),
            "nft 'add table inet mssclamp'\nnft 'add chain inet mssclamp forward { type filter hook forward priority mangle; policy accept; }'\nnft 'add rule inet mssclamp forward oifname \"wan0\" tcp flags syn tcp option maxseg size set rt mtu'"
        );
        // MIXED clamps in a foreign chain.
        assert_eq!(find(&run(&o, &[MIXED], ""), "mtu").status, Status::Pass);
    }

    #[test]
    fn dns_warns_without_a_route_to_the_nameserver() {
        let mut o = healthy();
        o.routes.retain(|r| r.oif != Some(2));
        assert_eq!(find(&run(&o, &[NATGW], ""), "dns").status, Status::Warn);
    }

    #[test]
    fn an_unusable_record_or_an_unfinished_apply_is_reported() {
        let mut o = healthy();
        o.state_problem = Some("state.json is corrupt".into());
        let f = find(&run(&o, &[NATGW], ""), "record").clone();
        assert_eq!((f.status, f.repair), (Status::Fail, None));
        assert!(f.fix.unwrap().contains("\nnatgw down\nnatgw up"));
        let mut o = healthy();
        o.state = Some(crate::state::RecordedState {
            applying: Some(crate::state::Applying { pid: 7, started: 0 }),
            ..Default::default()
        });
        let f = find(&run(&o, &[NATGW], ""), "record").clone();
        assert_eq!(
            (f.status, f.repair),
            (Status::Fail, Some(Repair::ApplyGateway))
        );
    }

    #[test]
    fn port_use_warns_at_80_percent_of_what_one_address_allows() {
        use crate::mapping::{Protocol, Translation, TranslationView};
        let settings = settings();
        let o = healthy();
        let with = |ports: u16| {
            let mut view = TranslationView::new();
            for port in 0..ports {
                view.insert(Translation {
                    protocol: Protocol::Udp,
                    private: format!("10.0.0.11:{}", 10_000 + port).parse().unwrap(),
                    destination: "198.51.100.10:7000".parse().unwrap(),
                    public: format!("203.0.113.1:{}", 10_000 + port).parse().unwrap(),
                });
            }
            let findings = all(&Inputs {
                translations: Some(view.summary(5, 100)),
                ..inputs(&settings, &o, chains(&[NATGW]))
            });
            find(&findings, "port-use").clone()
        };
        assert_eq!(with(79).status, Status::Pass);
        let f = with(80);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.detail
                .contains("203.0.113.1 uses 80 of 100 ports towards udp 198.51.100.10:7000"),
            "{f:?}"
        );
    }
}
