//! `iptables-save` text → the doctor's chains. Used for iptables-legacy (whose rules
//! nft cannot show) and to fill in iptables-nft rules whose `xt` statements nft's JSON
//! leaves opaque (an SNAT target's address, a conntrack match).

use std::net::IpAddr;

use ipnet::IpNet;

use super::firewall::{Action, Chain, Condition, Hook, Op, Policy, Rule};

/// Parses `iptables-save` output; tables are named `iptables-legacy NAME` when
/// `legacy`, else `ip NAME` as nft lists iptables-nft's tables.
pub fn parse_iptables_save(text: &str, legacy: bool) -> Vec<Chain> {
    let mut chains: Vec<Chain> = Vec::new();
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            table = if legacy {
                format!("iptables-legacy {name}")
            } else {
                format!("ip {name}")
            };
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let policy = match words.next() {
                Some("ACCEPT") => Some(Policy::Accept),
                Some("DROP") => Some(Policy::Drop),
                _ => None,
            };
            chains.push(Chain {
                table: table.clone(),
                hook: policy.map(|_| builtin_hook(&name)),
                name,
                policy,
                rules: Vec::new(),
                legacy,
            });
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            let declared: Vec<String> = chains
                .iter()
                .filter(|c| c.table == table)
                .map(|c| c.name.clone())
                .collect();
            if let Some(chain) = chains
                .iter_mut()
                .find(|c| c.table == table && c.name == name)
            {
                chain.rules.push(parse_rule(line, &declared));
            }
        }
    }
    chains
}

fn builtin_hook(name: &str) -> Hook {
    match name {
        "PREROUTING" => Hook::Prerouting,
        "INPUT" => Hook::Input,
        "FORWARD" => Hook::Forward,
        "OUTPUT" => Hook::Output,
        "POSTROUTING" => Hook::Postrouting,
        _ => Hook::Other,
    }
}

/// One `-A CHAIN ...` line; `chains` are the table's chain names (jump targets).
fn parse_rule(line: &str, chains: &[String]) -> Rule {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut rule = Rule {
        text: line.to_string(),
        conditions: Vec::new(),
        action: Action::None,
        opaque: false,
    };
    let mut negate = false;
    let mut after_target = false;
    let mut i = 2; // past `-A CHAIN`
    while i < words.len() {
        let word = words[i];
        // Options without a value (`--syn`, `--random`) are followed by another option.
        let value = words
            .get(i + 1)
            .copied()
            .filter(|v| !v.starts_with('-') && *v != "!");
        i += 1 + usize::from(value.is_some());
        let value = value.unwrap_or_default();
        if word == "!" {
            negate = true;
            continue;
        }
        let op = if std::mem::take(&mut negate) {
            Op::IsNot
        } else {
            Op::Is
        };
        match word {
            "-j" => {
                rule.action = target(value, &words[i..], chains);
                after_target = true;
            }
            "-g" => {
                rule.action = Action::Goto(value.to_string());
                after_target = true;
            }
            // The options of a target and the names of match modules are no conditions.
            _ if after_target => {}
            "-m" | "--comment" => {}
            // The rest of a quoted comment.
            w if !w.starts_with('-') => {}
            "-s" | "--source" => rule.conditions.push(Condition::Saddr(op, nets(value))),
            "-d" | "--destination" => rule.conditions.push(Condition::Daddr(op, nets(value))),
            "-i" | "--in-interface" => rule.conditions.push(Condition::Iif(op, names(value))),
            "-o" | "--out-interface" => rule.conditions.push(Condition::Oif(op, names(value))),
            "--ctstate" | "--state" => rule.conditions.push(Condition::CtState(
                op,
                value.split(',').map(str::to_lowercase).collect(),
            )),
            _ => rule.conditions.push(Condition::Other),
        }
    }
    rule
}

fn target(name: &str, rest: &[&str], chains: &[String]) -> Action {
    let option = |key: &str| {
        rest.iter()
            .position(|w| *w == key)
            .and_then(|i| rest.get(i + 1))
    };
    match name {
        "ACCEPT" => Action::Accept,
        "DROP" => Action::Drop,
        "REJECT" => Action::Reject,
        "RETURN" => Action::Return,
        "MASQUERADE" => Action::Masquerade,
        "TCPMSS" => Action::ClampMss,
        "SNAT" => Action::Snat(
            option("--to-source")
                .or_else(|| option("--to"))
                .and_then(|to| first_address(to)),
        ),
        chain if chains.iter().any(|c| c == chain) => Action::Jump(chain.to_string()),
        _ => Action::None,
    }
}

/// `198.51.100.4`, `198.51.100.4-198.51.100.7:1024-65535` → the first address.
fn first_address(to: &str) -> Option<IpAddr> {
    to.split([':', '-']).next()?.parse().ok()
}

fn nets(value: &str) -> Vec<IpNet> {
    value
        .split(',')
        .filter_map(|v| {
            v.parse::<IpNet>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

/// iptables writes a wildcard as `eth+`.
fn names(value: &str) -> Vec<String> {
    vec![match value.strip_suffix('+') {
        Some(prefix) => format!("{prefix}*"),
        None => value.to_string(),
    }]
}

/// Fills in iptables-nft rules that nft's JSON left opaque with the same rules as
/// `iptables-nft-save` prints them. Chains are matched by table and name, rules by
/// position, and only when both list the same number of rules.
pub fn resolve_opaque(chains: &mut [Chain], iptables_nft_save: &str) {
    let saved = parse_iptables_save(iptables_nft_save, false);
    for chain in chains
        .iter_mut()
        .filter(|c| c.rules.iter().any(|r| r.opaque))
    {
        let Some(twin) = saved
            .iter()
            .find(|s| s.table == chain.table && s.name == chain.name)
        else {
            continue;
        };
        if twin.rules.len() != chain.rules.len() {
            continue;
        }
        for (rule, saved) in chain.rules.iter_mut().zip(&twin.rules) {
            if rule.opaque {
                *rule = saved.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_legacy_save_output() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER\n-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 ! -o wan+ -j SNAT --to-source 198.51.100.4:1024-65535\nCOMMIT\n";
        let chains = parse_iptables_save(text, true);
        let forward = chains.iter().find(|c| c.name == "FORWARD").unwrap();
        assert_eq!(
            (forward.hook, forward.policy),
            (Some(Hook::Forward), Some(Policy::Drop))
        );
        assert_eq!(forward.rules[0].action, Action::Jump("DOCKER".into()));
        assert_eq!(
            forward.rules[1].conditions,
            vec![
                Condition::Iif(Op::Is, vec!["wan0".into()]),
                Condition::Oif(Op::Is, vec!["lan0".into()]),
                Condition::CtState(Op::Is, vec!["related".into(), "established".into()]),
            ]
        );
        let docker = chains.iter().find(|c| c.name == "DOCKER").unwrap();
        assert_eq!((docker.hook, docker.legacy), (None, true));
        let post = chains.iter().find(|c| c.name == "POSTROUTING").unwrap();
        assert_eq!(post.table, "iptables-legacy nat");
        assert_eq!(
            post.rules[0].action,
            Action::Snat(Some("198.51.100.4".parse().unwrap()))
        );
        assert_eq!(
            post.rules[0].conditions[1],
            Condition::Oif(Op::IsNot, vec!["wan*".into()])
        );
    }

    #[test]
    fn opaque_iptables_nft_rules_are_filled_in_from_iptables_nft_save() {
        let mut chains =
            crate::doctor::from_nft::tests::parse(crate::doctor::from_nft::tests::MIXED);
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -o wan0 -j SNAT --to-source 203.0.113.9\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n";
        resolve_opaque(&mut chains, save);
        let post = chains
            .iter()
            .find(|c| c.table == "ip nat" && c.name == "POSTROUTING")
            .unwrap();
        assert!(!post.rules[0].opaque);
        assert_eq!(
            post.rules[0].action,
            Action::Snat(Some("203.0.113.9".parse().unwrap()))
        );
        assert_eq!(post.rules[1].action, Action::Masquerade);
    }
}
