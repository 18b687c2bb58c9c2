//! nftables' JSON ruleset (typed by the `nftables` crate) → the doctor's chains. Only
//! what decides a flow's fate is kept; everything else becomes `Condition::Other`
//! (matches some packets) or `Action::None` (no verdict).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::expr::{BinaryOperation, Expression, MetaKey, NamedExpression, Payload, SetItem};
use nftables::schema::{self, NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfFamily, NfHook};

use super::firewall::{Action, Chain, Condition, Hook, Op, Policy, Rule};

/// Elements of named sets by (table, set name), to resolve `@set` references.
type Sets = HashMap<(String, String), Vec<IpNet>>;

/// Chains of every table in the ruleset, with their rules.
pub fn chains(ruleset: &Nftables) -> Vec<Chain> {
    let objects: Vec<&NfListObject> = ruleset
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(o) => Some(o),
            NfObject::CmdObject(_) => None,
        })
        .collect();
    let sets = named_sets(&objects);
    let mut chains: Vec<Chain> = objects
        .iter()
        .filter_map(|o| match o {
            NfListObject::Chain(c) => Some(chain(c)),
            _ => None,
        })
        .collect();
    for object in &objects {
        if let NfListObject::Rule(r) = object {
            let table = table_name(r.family, &r.table);
            if let Some(chain) = chains
                .iter_mut()
                .find(|c| c.table == table && c.name == r.chain)
            {
                chain.rules.push(rule(r, &table, &sets));
            }
        }
    }
    chains
}

fn family(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

fn table_name(f: NfFamily, table: &str) -> String {
    format!("{} {table}", family(f))
}

fn named_sets(objects: &[&NfListObject]) -> Sets {
    objects
        .iter()
        .filter_map(|o| match o {
            NfListObject::Set(s) => Some(s),
            _ => None,
        })
        .map(|s| {
            let nets = s
                .elem
                .iter()
                .flat_map(|e| e.iter())
                .flat_map(networks)
                .collect();
            ((table_name(s.family, &s.table), s.name.to_string()), nets)
        })
        .collect()
}

fn chain(c: &schema::Chain) -> Chain {
    Chain {
        table: table_name(c.family, &c.table),
        name: c.name.to_string(),
        hook: c.hook.map(|h| match h {
            NfHook::Prerouting => Hook::Prerouting,
            NfHook::Input => Hook::Input,
            NfHook::Forward => Hook::Forward,
            NfHook::Output => Hook::Output,
            NfHook::Postrouting => Hook::Postrouting,
            NfHook::Ingress | NfHook::Egress => Hook::Other,
        }),
        policy: c.policy.map(|p| match p {
            NfChainPolicy::Accept => Policy::Accept,
            NfChainPolicy::Drop => Policy::Drop,
        }),
        rules: Vec::new(),
        legacy: false,
    }
}

fn rule(r: &schema::Rule, table: &str, sets: &Sets) -> Rule {
    let mut out = Rule {
        text: r
            .expr
            .iter()
            .map(statement_text)
            .collect::<Vec<_>>()
            .join(" "),
        conditions: Vec::new(),
        action: Action::None,
        opaque: false,
    };
    for statement in r.expr.iter() {
        match statement {
            Statement::Match(m) => {
                out.conditions.push(condition(m, table, sets));
                // `ip6 saddr != X` does not match an IPv4 packet at all.
                if let Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))) =
                    &m.left
                {
                    let family = match &*f.protocol {
                        "ip" => Some("ipv4"),
                        "ip6" => Some("ipv6"),
                        _ => None,
                    };
                    if let Some(family) = family {
                        out.conditions
                            .push(Condition::Family(Op::Is, vec![family.to_string()]));
                    }
                }
            }
            Statement::XT(xt) => {
                out.opaque = true;
                if let Some(action) = xt.as_ref().and_then(xt_target) {
                    out.action = action;
                }
            }
            other => {
                let action = action(other);
                if action != Action::None {
                    out.action = action;
                }
            }
        }
    }
    if let Some(comment) = &r.comment {
        out.text.push_str(&format!(" comment \"{comment}\""));
    }
    out
}

fn action(statement: &Statement) -> Action {
    match statement {
        Statement::Accept(_) => Action::Accept,
        Statement::Drop(_) => Action::Drop,
        Statement::Reject(_) => Action::Reject,
        Statement::Return(_) => Action::Return,
        Statement::Jump(t) => Action::Jump(t.target.to_string()),
        Statement::Goto(t) => Action::Goto(t.target.to_string()),
        Statement::SNAT(nat) => Action::Snat(nat.as_ref().and_then(nat_address)),
        Statement::Masquerade(_) => Action::Masquerade,
        Statement::Mangle(m) if is_maxseg(&m.key) => Action::ClampMss,
        _ => Action::None,
    }
}

/// What an iptables-nft target is, by name; its options (an SNAT address) are not in
/// the JSON.
fn xt_target(xt: &serde_json::Value) -> Option<Action> {
    if xt["type"] != "target" {
        return None;
    }
    Some(match xt["name"].as_str()? {
        "SNAT" => Action::Snat(None),
        "MASQUERADE" => Action::Masquerade,
        "REJECT" => Action::Reject,
        "TCPMSS" => Action::ClampMss,
        _ => return None,
    })
}

fn is_maxseg(key: &Expression) -> bool {
    matches!(key, Expression::Named(NamedExpression::TcpOption(o)) if o.name == "maxseg")
}

/// The address of `snat to ADDR` (or the first of a range); `None` for maps and hashes.
fn nat_address(nat: &NAT) -> Option<IpAddr> {
    match nat.addr.as_ref()? {
        Expression::String(s) => s.parse().ok(),
        Expression::Range(r) => match &r.range[0] {
            Expression::String(s) => s.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn operator(op: Operator) -> Option<Op> {
    match op {
        Operator::EQ | Operator::IN => Some(Op::Is),
        Operator::NEQ => Some(Op::IsNot),
        _ => None,
    }
}

fn condition(m: &Match, table: &str, sets: &Sets) -> Condition {
    let Some(op) = operator(m.op) else {
        return Condition::Other;
    };
    let right = &m.right;
    let known = match &m.left {
        Expression::Named(NamedExpression::Meta(meta)) => match meta.key {
            MetaKey::Iifname | MetaKey::Iif => strings(right).map(|n| Condition::Iif(op, n)),
            MetaKey::Oifname | MetaKey::Oif => strings(right).map(|n| Condition::Oif(op, n)),
            MetaKey::Nfproto => strings(right).map(|f| Condition::Family(op, f)),
            MetaKey::Mark => number(right).map(|value| Condition::Mark(op, u32::MAX, value)),
            _ => None,
        },
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(f)))
            if f.protocol == "ip" =>
        {
            let nets = addresses(right, table, sets);
            match &*f.field {
                "saddr" => nets.map(|n| Condition::Saddr(op, n)),
                "daddr" => nets.map(|n| Condition::Daddr(op, n)),
                _ => None,
            }
        }
        Expression::Named(NamedExpression::CT(ct)) if ct.key == "state" && ct.dir.is_none() => {
            strings(right).map(|s| Condition::CtState(op, s))
        }
        Expression::BinaryOperation(b) => match &**b {
            BinaryOperation::AND(
                Expression::Named(NamedExpression::Meta(meta)),
                Expression::Number(mask),
            ) if meta.key == MetaKey::Mark => {
                number(right).map(|value| Condition::Mark(op, *mask, value))
            }
            _ => None,
        },
        _ => None,
    };
    known.unwrap_or(Condition::Other)
}

fn number(e: &Expression) -> Option<u32> {
    match e {
        Expression::Number(n) => Some(*n),
        _ => None,
    }
}

/// A string, a list of strings (`ct state` flags) or an anonymous set of strings.
fn strings(e: &Expression) -> Option<Vec<String>> {
    match e {
        Expression::String(s) => Some(vec![s.to_string()]),
        Expression::List(items) => items.iter().map(string).collect(),
        Expression::Named(NamedExpression::Set(items)) => items
            .iter()
            .map(|i| match i {
                SetItem::Element(e) => string(e),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn string(e: &Expression) -> Option<String> {
    match e {
        Expression::String(s) if !s.starts_with('@') => Some(s.to_string()),
        _ => None,
    }
}

/// An address, prefix, anonymous set of them, or `@set` of this table.
fn addresses(e: &Expression, table: &str, sets: &Sets) -> Option<Vec<IpNet>> {
    if let Expression::String(s) = e {
        if let Some(name) = s.strip_prefix('@') {
            return sets.get(&(table.to_string(), name.to_string())).cloned();
        }
    }
    let nets = networks(e);
    (!nets.is_empty()).then_some(nets)
}

fn networks(e: &Expression) -> Vec<IpNet> {
    match e {
        Expression::String(s) => s.parse::<IpAddr>().map(IpNet::from).into_iter().collect(),
        Expression::Named(NamedExpression::Prefix(p)) => match &*p.addr {
            Expression::String(a) => a
                .parse::<IpAddr>()
                .ok()
                .and_then(|a| IpNet::new(a, p.len as u8).ok())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        },
        Expression::Named(NamedExpression::Set(items)) => items
            .iter()
            .flat_map(|i| match i {
                SetItem::Element(e) => networks(e),
                _ => Vec::new(),
            })
            .collect(),
        Expression::List(items) => items.iter().flat_map(networks).collect(),
        // A range a-b is covered by the smallest prefix holding both ends: enough to
        // tell "inside the private prefixes" from "not".
        Expression::Range(r) => match (&r.range[0], &r.range[1]) {
            (Expression::String(a), Expression::String(b)) => {
                match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
                    (Ok(a), Ok(b)) => covering(a, b).into_iter().collect(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn covering(a: IpAddr, b: IpAddr) -> Option<IpNet> {
    let max = if a.is_ipv4() { 32 } else { 128 };
    (0..=max)
        .rev()
        .filter_map(|len| IpNet::new(a, len).ok().map(|n| n.trunc()))
        .find(|n| n.contains(&b))
}

/// The statement as nft would roughly print it, for messages.
fn statement_text(s: &Statement) -> String {
    match s {
        Statement::Match(m) => {
            let op = match m.op {
                Operator::EQ | Operator::IN => String::new(),
                other => format!(
                    "{} ",
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            };
            format!("{} {op}{}", expr_text(&m.left), expr_text(&m.right))
        }
        Statement::Accept(_) => "accept".into(),
        Statement::Drop(_) => "drop".into(),
        Statement::Reject(_) => "reject".into(),
        Statement::Return(_) => "return".into(),
        Statement::Jump(t) => format!("jump {}", t.target),
        Statement::Goto(t) => format!("goto {}", t.target),
        Statement::Counter(_) => "counter".into(),
        Statement::SNAT(nat) => match nat.as_ref().and_then(|n| n.addr.as_ref()) {
            Some(addr) => format!("snat to {}", expr_text(addr)),
            None => "snat".into(),
        },
        Statement::Masquerade(_) => "masquerade".into(),
        Statement::Mangle(m) => format!("{} set {}", expr_text(&m.key), expr_text(&m.value)),
        Statement::XT(Some(xt)) => format!(
            "xt {} {}",
            xt["type"].as_str().unwrap_or(""),
            xt["name"].as_str().unwrap_or("")
        ),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
            .unwrap_or_else(|| "?".into()),
    }
}

fn expr_text(e: &Expression) -> String {
    let list = |items: Vec<String>| format!("{{ {} }}", items.join(", "));
    match e {
        Expression::String(s) => s.to_string(),
        Expression::Number(n) => n.to_string(),
        Expression::Boolean(b) => b.to_string(),
        Expression::List(items) => items.iter().map(expr_text).collect::<Vec<_>>().join(","),
        Expression::Range(r) => format!("{}-{}", expr_text(&r.range[0]), expr_text(&r.range[1])),
        Expression::Named(named) => match named {
            NamedExpression::Set(items) => list(
                items
                    .iter()
                    .map(|i| match i {
                        SetItem::Element(e) => expr_text(e),
                        SetItem::Mapping(k, v) => format!("{} : {}", expr_text(k), expr_text(v)),
                        SetItem::MappingStatement(k, s) => {
                            format!("{} : {}", expr_text(k), statement_text(s))
                        }
                    })
                    .collect(),
            ),
            NamedExpression::Prefix(p) => format!("{}/{}", expr_text(&p.addr), p.len),
            NamedExpression::Payload(Payload::PayloadField(f)) => {
                format!("{} {}", f.protocol, f.field)
            }
            NamedExpression::Meta(m) => match m.key {
                MetaKey::Iifname | MetaKey::Oifname | MetaKey::Iif | MetaKey::Oif => {
                    format!("{:?}", m.key).to_lowercase()
                }
                key => format!("meta {}", format!("{key:?}").to_lowercase()),
            },
            NamedExpression::CT(ct) => format!("ct {}", ct.key),
            NamedExpression::TcpOption(o) => format!(
                "tcp option {} {}",
                o.name,
                o.field.as_deref().unwrap_or_default()
            ),
            NamedExpression::RT(rt) => format!("rt {}", format!("{:?}", rt.key).to_lowercase()),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
                .unwrap_or_else(|| "?".into()),
        },
        Expression::BinaryOperation(_) | Expression::Verdict(_) => "…".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::doctor::firewall::Hook;

    /// `nft -j list ruleset` of nft 1.0.6, from a namespace loaded with natgw's table,
    /// a foreign table and iptables-nft rules (scripts in the fixture's comment).
    pub(crate) const MIXED: &str = include_str!("fixtures/mixed.json");

    pub(crate) fn parse(json: &str) -> Vec<Chain> {
        let ruleset: Nftables = serde_json::from_str(json).expect("fixture parses");
        chains(&ruleset)
    }

    #[test]
    fn chains_keep_hook_policy_and_rules() {
        let chains = parse(MIXED);
        let fwd = chains
            .iter()
            .find(|c| c.table == "ip foreign" && c.name == "filter_fwd")
            .unwrap();
        assert_eq!(
            (fwd.hook, fwd.policy, fwd.rules.len()),
            (Some(Hook::Forward), Some(Policy::Drop), 5)
        );
        assert_eq!(
            fwd.rules[2].conditions,
            vec![
                Condition::Saddr(Op::Is, vec!["10.0.0.0/24".parse().unwrap()]),
                Condition::Family(Op::Is, vec!["ipv4".into()])
            ]
        );
        assert_eq!(fwd.rules[2].action, Action::Accept);
        assert_eq!(fwd.rules[2].text, "ip saddr 10.0.0.0/24 accept");
        assert_eq!(
            fwd.rules[0].conditions,
            vec![Condition::CtState(
                Op::Is,
                vec!["established".into(), "related".into()]
            )]
        );
    }

    #[test]
    fn marks_are_read_with_their_mask() {
        // `meta mark & 0x0f000000 == 0x0a000000 accept` and `meta mark != 7 drop`, as
        // nft 1.0.6 lists them.
        let json = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}}, {"chain": {"family": "ip", "table": "t", "name": "f", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "ip", "table": "t", "chain": "f", "handle": 2, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 251658240]}, "right": 167772160}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "t", "chain": "f", "handle": 3, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "mark"}}, "right": 7}}, {"drop": null}]}}]}"#;
        let chains = parse(json);
        assert_eq!(
            chains[0].rules[0].conditions,
            vec![Condition::Mark(Op::Is, 0x0f00_0000, 0x0a00_0000)]
        );
        assert_eq!(
            chains[0].rules[1].conditions,
            vec![Condition::Mark(Op::IsNot, u32::MAX, 7)]
        );
    }

    #[test]
    fn named_sets_are_resolved_and_snat_addresses_read() {
        let chains = parse(MIXED);
        let post = chains
            .iter()
            .find(|c| c.is_natgw() && c.name == "postrouting")
            .unwrap();
        let rule = &post.rules[0];
        assert!(rule.conditions.contains(&Condition::Saddr(
            Op::Is,
            vec!["10.0.0.0/24".parse().unwrap()]
        )));
        assert_eq!(
            rule.action,
            Action::Snat(Some("203.0.113.1".parse().unwrap()))
        );
    }

    #[test]
    fn jumps_counters_and_xt_targets_are_what_they_are() {
        let chains = parse(MIXED);
        let post = chains
            .iter()
            .find(|c| c.table == "ip foreign" && c.name == "post")
            .unwrap();
        assert_eq!(post.rules[0].action, Action::Jump("snat_x".into()));
        assert_eq!(
            post.rules[1].action,
            Action::None,
            "a counter commented snat"
        );
        assert!(post.rules[1].text.contains("comment \"snat for lan\""));
        let iptables = chains
            .iter()
            .find(|c| c.table == "ip nat" && c.name == "POSTROUTING")
            .unwrap();
        assert!(iptables.rules[0].opaque);
        assert_eq!(iptables.rules[0].action, Action::Snat(None));
        let clamp = chains.iter().find(|c| c.name == "clamp").unwrap();
        assert_eq!(clamp.rules[0].action, Action::ClampMss);
    }
}
