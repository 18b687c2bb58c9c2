//! Foreign firewall rules as the doctor needs them: chains with hook, policy and rules
//! reduced to what decides the fate of the gateway's traffic (interfaces, addresses,
//! conntrack state, verdict, NAT). Built from nftables' JSON (`from_nft`, which also
//! covers iptables-nft) and from `iptables-legacy-save` text (`iptables`), then
//! evaluated for concrete flows instead of matching words.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::dataplane::MARK_MASK;

/// One base or regular chain of some firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `inet natgw`, `ip filter`, or `iptables-legacy filter`.
    pub table: String,
    pub name: String,
    /// Set for base chains only.
    pub hook: Option<Hook>,
    /// Set for base chains only.
    pub policy: Option<Policy>,
    pub rules: Vec<Rule>,
    /// True for iptables-legacy chains (fixed with iptables-legacy, not nft).
    pub legacy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    /// ingress, egress: not on the forwarding path natgw cares about.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// A rule as a conjunction of conditions and one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// How the rule reads (nft or iptables syntax), for messages.
    pub text: String,
    pub conditions: Vec<Condition>,
    pub action: Action,
    /// Holds statements the JSON cannot describe (iptables-nft's `xt` matches and
    /// targets): its conditions or action may be incomplete.
    pub opaque: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Is,
    IsNot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Input interface among these names (`*` suffix: prefix wildcard).
    Iif(Op, Vec<String>),
    Oif(Op, Vec<String>),
    Saddr(Op, Vec<IpNet>),
    Daddr(Op, Vec<IpNet>),
    /// `ct state`: new, established, related, invalid, untracked.
    CtState(Op, Vec<String>),
    /// `meta nfproto` (`ipv4`, `ipv6`), also implied by an `ip` or `ip6` header match.
    Family(Op, Vec<String>),
    /// `meta mark & MASK == VALUE` (`meta mark == VALUE`: the whole mask).
    Mark(Op, u32, u32),
    /// Anything else (ports, protocols, marks, unresolved sets): true for some
    /// packets only, as far as the doctor can tell.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No verdict: counters, logs, marks.
    None,
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
    /// `snat to ADDR`; `None` when the address is not a plain one (map, hash).
    Snat(Option<IpAddr>),
    Masquerade,
    /// `tcp option maxseg size set ...` / `-j TCPMSS`.
    ClampMss,
}

impl Chain {
    pub fn is_natgw(&self) -> bool {
        self.table == format!("{} {}", crate::TABLE_FAMILY, crate::TABLE_NAME)
    }

    /// Whether this is Docker's FORWARD chain (or one of Docker's own chains), for
    /// which admin rules belong in DOCKER-USER.
    pub fn is_docker(&self, chains: &[Chain]) -> bool {
        self.name.starts_with("DOCKER")
            || (self.name == "FORWARD"
                && chains
                    .iter()
                    .any(|c| c.table == self.table && c.name == "DOCKER-USER"))
    }
}

/// Where a flow's address lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Some address inside this prefix.
    Net(IpNet),
    /// Any address on the internet (public unicast).
    Internet,
}

/// The packets of one kind of traffic through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<'a> {
    pub iif: &'a str,
    pub oif: &'a str,
    pub saddr: Endpoint,
    pub daddr: Endpoint,
    /// Conntrack state of the packets: `new`, `established` or `untracked`.
    pub state: &'a str,
    /// natgw's bits of the packets' mark (`MARK_MASK`), when natgw sets them (the
    /// eBPF plane); the other bits are never known.
    pub mark: Option<u32>,
}

impl Flow<'_> {
    /// The same packets, carrying natgw's `mark`.
    pub fn marked(self, mark: u32) -> Self {
        Flow {
            mark: Some(mark & MARK_MASK),
            ..self
        }
    }

    /// `ipv6` when either end is an IPv6 network, `ipv4` otherwise (the internet
    /// endpoint stands for either).
    pub fn family(&self) -> &'static str {
        let v6 = |e: Endpoint| matches!(e, Endpoint::Net(n) if n.addr().is_ipv6());
        if v6(self.saddr) || v6(self.daddr) {
            "ipv6"
        } else {
            "ipv4"
        }
    }
}

/// Whether a rule matches the packets of a flow: all, some or none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    No,
    Maybe,
    Yes,
}

impl Level {
    fn not(self) -> Level {
        match self {
            Level::No => Level::Yes,
            Level::Maybe => Level::Maybe,
            Level::Yes => Level::No,
        }
    }

    fn from_bool(b: bool) -> Level {
        if b {
            Level::Yes
        } else {
            Level::No
        }
    }
}

fn apply_op(op: Op, level: Level) -> Level {
    match op {
        Op::Is => level,
        Op::IsNot => level.not(),
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Addresses that never appear as an internet host: a match on them only is not a
/// match on internet traffic.
fn never_internet(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            let a = n.network();
            n.prefix_len() >= 8
                && (crate::detect::is_private_v4(a)
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.is_link_local()
                    || a.is_broadcast()
                    || a.octets()[0] == 0)
        }
        IpNet::V6(_) => false,
    }
}

fn address_level(nets: &[IpNet], endpoint: Endpoint) -> Level {
    match endpoint {
        Endpoint::Net(p) => {
            if nets.iter().any(|n| n.contains(&p)) {
                Level::Yes
            } else if nets.iter().any(|n| p.contains(n)) {
                Level::Maybe
            } else {
                Level::No
            }
        }
        Endpoint::Internet => {
            if nets
                .iter()
                .any(|n| n.prefix_len() == 0 && n.addr().is_ipv4())
            {
                Level::Yes
            } else if nets.iter().all(never_internet) {
                Level::No
            } else {
                Level::Maybe
            }
        }
    }
}

impl Condition {
    pub fn level(&self, flow: &Flow) -> Level {
        match self {
            Condition::Iif(op, names) => apply_op(
                *op,
                Level::from_bool(names.iter().any(|n| name_matches(n, flow.iif))),
            ),
            Condition::Oif(op, names) => apply_op(
                *op,
                Level::from_bool(names.iter().any(|n| name_matches(n, flow.oif))),
            ),
            Condition::Saddr(op, nets) => apply_op(*op, address_level(nets, flow.saddr)),
            Condition::Daddr(op, nets) => apply_op(*op, address_level(nets, flow.daddr)),
            Condition::CtState(op, states) => apply_op(
                *op,
                Level::from_bool(states.iter().any(|s| s == flow.state)),
            ),
            Condition::Family(op, families) => apply_op(
                *op,
                Level::from_bool(families.iter().any(|f| f == flow.family())),
            ),
            // Only natgw's bits are known, and only when natgw sets them.
            Condition::Mark(op, mask, value) => match flow.mark {
                Some(mark) if mask & !MARK_MASK == 0 => {
                    apply_op(*op, Level::from_bool(mark & mask == *value))
                }
                _ => Level::Maybe,
            },
            Condition::Other => Level::Maybe,
        }
    }
}

impl Rule {
    /// All conditions must hold: the weakest one decides.
    pub fn level(&self, flow: &Flow) -> Level {
        let matched = self
            .conditions
            .iter()
            .map(|c| c.level(flow))
            .min()
            .unwrap_or(Level::Yes);
        // A rule with statements the JSON hides may match less than it shows.
        if self.opaque {
            matched.min(Level::Maybe)
        } else {
            matched
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self.action,
            Action::Accept | Action::Drop | Action::Reject | Action::Snat(_) | Action::Masquerade
        )
    }
}

/// A rule a flow reaches, and whether all or only some of its packets get there and
/// match it.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'c> {
    pub chain: &'c Chain,
    pub rule: &'c Rule,
    pub level: Level,
}

/// Every terminal rule (verdict or NAT) a flow may reach in a base chain, in order.
/// `decided` says whether the last hit takes all of the flow's packets; if not, the
/// rest falls through to the chain's policy.
#[derive(Debug, Clone)]
pub struct Trace<'c> {
    pub hits: Vec<Hit<'c>>,
    pub decided: bool,
}

/// Deep enough for any sane ruleset, bounded against jump loops.
const MAX_DEPTH: usize = 16;

pub fn trace<'c>(chains: &'c [Chain], base: &'c Chain, flow: &Flow) -> Trace<'c> {
    let mut hits = Vec::new();
    let decided = walk(chains, base, flow, Level::Yes, 0, &mut hits);
    Trace { hits, decided }
}

/// Walks `chain`; true when a terminal rule took every packet that got this far with
/// `cap` (the level at which the flow entered the chain).
fn walk<'c>(
    chains: &'c [Chain],
    chain: &'c Chain,
    flow: &Flow,
    cap: Level,
    depth: usize,
    hits: &mut Vec<Hit<'c>>,
) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let find = |name: &str| {
        chains
            .iter()
            .find(|c| c.table == chain.table && c.name == name)
    };
    for rule in &chain.rules {
        let level = rule.level(flow).min(cap);
        if level == Level::No {
            continue;
        }
        let all = level == Level::Yes;
        match &rule.action {
            _ if rule.is_terminal() => {
                hits.push(Hit { chain, rule, level });
                if all {
                    return true;
                }
            }
            Action::Jump(target) => {
                if let Some(target) = find(target) {
                    if walk(chains, target, flow, level, depth + 1, hits) && all {
                        return true;
                    }
                }
            }
            // Falling off the end of a goto target returns to this chain's caller.
            Action::Goto(target) => {
                let decided =
                    find(target).is_some_and(|t| walk(chains, t, flow, level, depth + 1, hits));
                if all {
                    return decided;
                }
            }
            Action::Return if all => return false,
            _ => {}
        }
    }
    false
}

/// What a base chain does with a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate<'c> {
    Accepted,
    /// Dropped or rejected by this rule (`None`: by the chain's policy).
    Dropped(Option<&'c Rule>),
}

/// The fate of all of a flow's packets in `base`, and the rules that drop some of them
/// before that.
pub fn fate<'c>(chains: &'c [Chain], base: &'c Chain, flow: &Flow) -> (Fate<'c>, Vec<&'c Rule>) {
    let trace = trace(chains, base, flow);
    let drops = |h: &Hit<'c>| matches!(h.rule.action, Action::Drop | Action::Reject);
    let some_dropped = trace
        .hits
        .iter()
        .filter(|h| h.level == Level::Maybe && drops(h))
        .map(|h| h.rule)
        .collect();
    let fate = match trace.hits.last().filter(|_| trace.decided) {
        Some(h) if drops(h) => Fate::Dropped(Some(h.rule)),
        Some(_) => Fate::Accepted,
        None if base.policy == Some(Policy::Drop) => Fate::Dropped(None),
        None => Fate::Accepted,
    };
    (fate, some_dropped)
}

/// A source-NAT rule a flow reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatRule {
    /// `table chain`, e.g. `ip nat POSTROUTING`.
    pub chain: String,
    pub rule: String,
    /// The address it translates to; `None` for masquerade or an address not known.
    pub to: Option<IpAddr>,
    pub masquerade: bool,
    pub natgw: bool,
}

/// Source-NAT statements (snat, masquerade) that translate some of `flow`'s packets,
/// followed through jumps from every postrouting base chain.
pub fn snat_rules(chains: &[Chain], flow: &Flow) -> Vec<SnatRule> {
    let mut found: Vec<SnatRule> = Vec::new();
    for base in chains.iter().filter(|c| c.hook == Some(Hook::Postrouting)) {
        for hit in trace(chains, base, flow).hits {
            let (to, masquerade) = match hit.rule.action {
                Action::Snat(to) => (to, false),
                Action::Masquerade => (None, true),
                _ => continue,
            };
            let rule = SnatRule {
                chain: format!("{} {}", hit.chain.table, hit.chain.name),
                rule: hit.rule.text.clone(),
                to,
                masquerade,
                natgw: hit.chain.is_natgw(),
            };
            if !found.contains(&rule) {
                found.push(rule);
            }
        }
    }
    found
}

/// Whether some rule clamps the TCP MSS.
pub fn clamps_mss(chains: &[Chain]) -> bool {
    chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.action == Action::ClampMss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(conditions: Vec<Condition>, action: Action) -> Rule {
        Rule {
            text: String::new(),
            conditions,
            action,
            opaque: false,
        }
    }

    fn base(name: &str, hook: Hook, policy: Policy, rules: Vec<Rule>) -> Chain {
        Chain {
            table: "ip f".into(),
            name: name.into(),
            hook: Some(hook),
            policy: Some(policy),
            rules,
            legacy: false,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    const OUT: Flow = Flow {
        iif: "lan0",
        oif: "wan0",
        saddr: Endpoint::Net(IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(10, 0, 0, 0),
            24,
        ))),
        daddr: Endpoint::Internet,
        state: "new",
        mark: None,
    };

    #[test]
    fn only_natgws_own_mark_bits_are_known() {
        let marked = OUT.marked(0x0b00_0000);
        let mark = |mask, value| Condition::Mark(Op::Is, mask, value);
        assert_eq!(mark(0x0f00_0000, 0x0b00_0000).level(&marked), Level::Yes);
        assert_eq!(mark(0x0f00_0000, 0x0a00_0000).level(&marked), Level::No);
        // Bits outside natgw's, or a flow natgw does not mark: unknown.
        assert_eq!(mark(u32::MAX, 0x0b00_0000).level(&marked), Level::Maybe);
        assert_eq!(mark(0x0f00_0000, 0x0b00_0000).level(&OUT), Level::Maybe);
        let not = Condition::Mark(Op::IsNot, 0x0f00_0000, 0x0b00_0000);
        assert_eq!(not.level(&marked), Level::No);
    }

    #[test]
    fn address_matches_are_all_some_or_none() {
        let saddr = |n: &str| Condition::Saddr(Op::Is, vec![net(n)]);
        assert_eq!(saddr("10.0.0.0/8").level(&OUT), Level::Yes);
        assert_eq!(saddr("10.0.0.128/25").level(&OUT), Level::Maybe);
        assert_eq!(saddr("192.168.0.0/16").level(&OUT), Level::No);
        let daddr = |n: &str| Condition::Daddr(Op::Is, vec![net(n)]);
        assert_eq!(daddr("172.17.0.0/16").level(&OUT), Level::No);
        assert_eq!(daddr("0.0.0.0/0").level(&OUT), Level::Yes);
        assert_eq!(daddr("198.51.100.0/24").level(&OUT), Level::Maybe);
        let not_lan = Condition::Iif(Op::IsNot, vec!["lan*".into()]);
        assert_eq!(not_lan.level(&OUT), Level::No);
    }

    #[test]
    fn an_ipv6_only_rule_never_takes_an_ipv4_flow() {
        let family = |f: &str| Condition::Family(Op::Is, vec![f.into()]);
        assert_eq!(family("ipv4").level(&OUT), Level::Yes);
        assert_eq!(family("ipv6").level(&OUT), Level::No);
        // A translate chain with an IPv4 rule and an IPv6 rule after it: an IPv4 flow
        // is translated by the first, all of it.
        let chains = vec![base(
            "post",
            Hook::Postrouting,
            Policy::Accept,
            vec![
                rule(
                    vec![family("ipv4")],
                    Action::Snat(Some("203.0.113.1".parse().unwrap())),
                ),
                rule(
                    vec![family("ipv6"), Condition::Other],
                    Action::Snat(Some("2001:db8::1".parse().unwrap())),
                ),
            ],
        )];
        let found = snat_rules(&chains, &OUT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].to, Some("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn a_jump_that_returns_falls_through_to_the_policy() {
        let chains = vec![
            base(
                "FORWARD",
                Hook::Forward,
                Policy::Drop,
                vec![rule(vec![], Action::Jump("USER".into()))],
            ),
            Chain {
                hook: None,
                policy: None,
                ..base(
                    "USER",
                    Hook::Forward,
                    Policy::Accept,
                    vec![rule(vec![], Action::Return)],
                )
            },
        ];
        assert_eq!(fate(&chains, &chains[0], &OUT).0, Fate::Dropped(None));
    }

    #[test]
    fn partial_accept_then_policy_drop_is_a_drop() {
        let chains = vec![base(
            "fwd",
            Hook::Forward,
            Policy::Drop,
            vec![
                rule(vec![Condition::Other], Action::Accept),
                rule(vec![Condition::Other], Action::Drop),
            ],
        )];
        let (fate, some) = fate(&chains, &chains[0], &OUT);
        assert_eq!(fate, Fate::Dropped(None));
        assert_eq!(some.len(), 1);
    }
}
