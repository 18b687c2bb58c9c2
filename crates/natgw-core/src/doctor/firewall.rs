//! Foreign firewall rules as the doctor needs them: base chains with their hook and
//! policy and rule lines, parsed from `nft list ruleset` (which also shows iptables-nft
//! rules) and from `iptables-legacy-save` (rules nft does not show).

/// One base or regular chain of some firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `inet natgw`, `ip filter`, or `iptables-legacy filter`.
    pub table: String,
    pub name: String,
    /// `forward`, `postrouting`, ... for base chains.
    pub hook: Option<String>,
    /// `accept` or `drop` for base chains.
    pub policy: Option<String>,
    pub rules: Vec<String>,
    /// True for iptables-legacy chains (fixed with iptables-legacy, not nft).
    pub legacy: bool,
}

impl Chain {
    pub fn is_natgw(&self) -> bool {
        self.table == "inet natgw"
    }
}

/// Parses `nft list ruleset` text.
pub fn parse_nft(text: &str) -> Vec<Chain> {
    let mut chains = Vec::new();
    let mut table = None::<String>;
    let mut current: Option<Chain> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = Some(rest.trim_end_matches('{').trim().to_string());
        } else if let (Some(rest), Some(t)) = (line.strip_prefix("chain "), &table) {
            current = Some(Chain {
                table: t.clone(),
                name: rest.trim_end_matches('{').trim().to_string(),
                hook: None,
                policy: None,
                rules: Vec::new(),
                legacy: false,
            });
        } else if line == "}" {
            if let Some(chain) = current.take() {
                chains.push(chain);
            }
        } else if let Some(chain) = current.as_mut() {
            if line.starts_with("type ") {
                chain.hook = word_after(line, "hook");
                chain.policy =
                    word_after(line, "policy").map(|p| p.trim_end_matches(';').to_string());
            } else if !line.is_empty() && !line.starts_with("comment ") {
                chain.rules.push(line.to_string());
            }
        }
    }
    chains
}

/// Parses `iptables-legacy-save` text (built-in chains get their hook).
pub fn parse_iptables_save(text: &str) -> Vec<Chain> {
    let mut chains: Vec<Chain> = Vec::new();
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            table = format!("iptables-legacy {name}");
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let policy = words.next().filter(|p| *p != "-").map(|p| p.to_lowercase());
            chains.push(Chain {
                table: table.clone(),
                hook: policy.as_ref().map(|_| name.to_lowercase()),
                name,
                policy,
                rules: Vec::new(),
                legacy: true,
            });
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let name = rule.split_whitespace().next().unwrap_or_default();
            if let Some(chain) = chains
                .iter_mut()
                .find(|c| c.table == table && c.name == name)
            {
                chain.rules.push(format!("-A {rule}"));
            }
        }
    }
    chains
}

fn word_after(line: &str, key: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(|w| w.trim_end_matches(';').to_string())
}

/// A source-NAT rule found in some firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatRule {
    pub chain: String,
    pub rule: String,
    /// Output interface it is restricted to, if any.
    pub oif: Option<String>,
    /// The address it translates to; `None` for masquerade.
    pub to: Option<std::net::IpAddr>,
}

/// Source-NAT rules in postrouting chains.
pub fn snat_rules(chains: &[Chain]) -> Vec<SnatRule> {
    chains
        .iter()
        .filter(|c| c.hook.as_deref() == Some("postrouting") || c.name == "POSTROUTING")
        .flat_map(|c| c.rules.iter().map(move |r| (c, r)))
        .filter(|(_, r)| {
            r.contains("snat")
                || r.contains("masquerade")
                || r.contains("-j SNAT")
                || r.contains("-j MASQUERADE")
        })
        .map(|(c, r)| SnatRule {
            chain: format!("{} {}", c.table, c.name),
            rule: r.clone(),
            oif: value_after(r, "oifname").or_else(|| value_after(r, "-o")),
            to: value_after(r, "to")
                .or_else(|| value_after(r, "--to-source"))
                .and_then(|a| a.split(':').next().and_then(|a| a.parse().ok())),
        })
        .collect()
}

fn value_after(rule: &str, key: &str) -> Option<String> {
    let mut words = rule.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(|w| w.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = r#"table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" ip saddr 10.0.0.0/24 counter snat to 203.0.113.9
		oifname "wan0" counter masquerade
	}
}
table ip filter {
	chain FORWARD {
		type filter hook forward priority filter; policy drop;
	}
}
"#;

    #[test]
    fn parses_iptables_nft_tables_as_nft_lists_them() {
        let chains = parse_nft(NFT);
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[1].table, "ip filter");
        assert_eq!(chains[1].hook.as_deref(), Some("forward"));
        assert_eq!(chains[1].policy.as_deref(), Some("drop"));
        let snat = snat_rules(&chains);
        assert_eq!(snat.len(), 2);
        assert_eq!(snat[0].oif.as_deref(), Some("wan0"));
        assert_eq!(snat[0].to, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(snat[1].to, None);
    }

    #[test]
    fn parses_legacy_save_output() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -o wan0 -j SNAT --to-source 198.51.100.4:1024-65535\nCOMMIT\n";
        let chains = parse_iptables_save(text);
        let forward = chains.iter().find(|c| c.name == "FORWARD").unwrap();
        assert_eq!(forward.policy.as_deref(), Some("drop"));
        assert_eq!(forward.rules, vec!["-A FORWARD -j DOCKER"]);
        assert!(chains
            .iter()
            .find(|c| c.name == "DOCKER")
            .unwrap()
            .hook
            .is_none());
        let snat = snat_rules(&chains);
        assert_eq!(snat[0].to, Some("198.51.100.4".parse().unwrap()));
        assert_eq!(snat[0].oif.as_deref(), Some("wan0"));
        assert!(snat[0].chain.starts_with("iptables-legacy nat"));
    }
}
