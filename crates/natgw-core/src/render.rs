//! Desired gateway → the nftables table `inet natgw`, as nft(8) text. Pure, so the
//! exact ruleset is snapshot-tested; the adapter loads it in one atomic batch.

use std::fmt::Write;

use ipnet::{IpNet, Ipv4Net};
use sha2::{Digest, Sha256};

use crate::dataplane::{MARK, MARK_MASK, OUTBOUND_MARK};
use crate::desired::{Desired, Ipv6Gateway, Ipv6Translation, SnatMode};
use crate::ifname::IfName;
use crate::pool::{PortSelection, Timeouts};
use crate::validate::SPECIAL_V4;
use crate::{TABLE_FAMILY, TABLE_NAME};

/// Named counters in the table, with what each counts. `status` reads them back.
pub const COUNTERS: [(&str, &str); 7] = [
    (
        "translated_connections",
        "new connections source-translated",
    ),
    ("outbound", "packets forwarded from private to public"),
    (
        "inbound_replies",
        "reply packets forwarded from public to private",
    ),
    (
        "dropped_invalid",
        "forwarded packets dropped as conntrack-invalid",
    ),
    (
        "dropped_spoofed",
        "packets from a private interface with a source outside the private prefixes",
    ),
    (
        "dropped_spoofed_public",
        "packets from the public side with a private or impossible source",
    ),
    (
        "dropped_unsolicited",
        "new connections from the public side to the private side",
    ),
];

/// With `bypass_conntrack`: untracked packets with natgw's outbound mark that the kernel
/// routed elsewhere than the programs predicted.
const MISROUTED: &str = "dropped_misrouted";
const MISROUTED_WHAT: &str =
    "untracked private packets the kernel routed elsewhere than the eBPF programs predicted";

/// The eBPF data plane's extra counter: inbound packets its programs admitted for a
/// binding (endpoint-independent or address-dependent filtering) that conntrack did
/// not know.
const ADMITTED: &str = "packets the eBPF data plane admitted from the public side for a binding";

/// The rendered table and the digest that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub text: String,
    pub digest: String,
}

/// Marker in the table comment that carries the digest.
pub const DIGEST_MARK: &str = "natgw digest ";

/// Extracts the digest from the table comment (`natgw digest ...; managed by natgw`).
pub fn listed_digest(comment: &str) -> Option<&str> {
    let start = comment.find(DIGEST_MARK)? + DIGEST_MARK.len();
    let rest = &comment[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|d| !d.is_empty())
}

pub fn render(desired: &Desired) -> Ruleset {
    let body = render_body(desired);
    let digest: String = Sha256::digest(body.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!(
        "table {TABLE_FAMILY} {TABLE_NAME} {{\n\tcomment \"{DIGEST_MARK}{digest}; managed by natgw, changes are overwritten\"\n{body}}}\n"
    );
    Ruleset { text, digest }
}

fn render_body(d: &Desired) -> String {
    let public = quote(&d.public.name);
    let private = format!(
        "{{ {} }}",
        d.private
            .iter()
            .map(|i| quote(&i.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let prefixes: Vec<String> = d
        .private_prefixes
        .iter()
        .filter(|p| matches!(p, IpNet::V4(_)))
        .map(|p| p.to_string())
        .collect();
    // What no packet from the public side may claim as source: the private prefixes
    // and the special ranges, merged into one set so that the check is one lookup.
    let public_spoofs: Vec<String> = Ipv4Net::aggregate(
        &d.private_prefixes
            .iter()
            .filter_map(|p| match p {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            })
            .chain(
                SPECIAL_V4
                    .iter()
                    .map(|(_, addr, len)| Ipv4Net::new(*addr, *len).expect("valid prefix")),
            )
            .collect::<Vec<_>>(),
    )
    .iter()
    .map(|p| p.to_string())
    .collect();
    // Established packets between a private interface and the public one, by direction.
    let directions: Vec<String> = d
        .private
        .iter()
        .flat_map(|i| {
            let private = quote(&i.name);
            [
                format!("{private} . {public} : \"outbound\""),
                format!("{public} . {private} : \"inbound_replies\""),
            ]
        })
        .collect();
    // A new flow's first packet goes to the rules for the side it came from after one
    // lookup, instead of testing every rule's interface match in turn.
    let sides: Vec<String> = d
        .private
        .iter()
        .map(|i| format!("{} : jump from_private", quote(&i.name)))
        .chain([format!("{public} : jump from_public")])
        .collect();
    let random = match d.port_selection {
        PortSelection::Preserve => "",
        PortSelection::Random => " fully-random",
    };
    // Rules in the `translate` chain, which only sees packets from a private interface
    // leaving through the public one. Their IPv4 sources are in `private4`: natgw's own
    // forward chain, in the same table and the same transaction, dropped every other.
    let matched = "meta nfproto ipv4";
    let counted = "counter name \"translated_connections\"";
    let (maps, translate) = match &d.snat {
        SnatMode::To(addr) => (
            String::new(),
            format!("\t\t{matched} {counted} snat ip to {addr}{random}\n"),
        ),
        SnatMode::Masquerade => (
            String::new(),
            format!("\t\t{matched} {counted} masquerade{random}\n"),
        ),
        // A fixed seed: the same host maps to the same address after every reload.
        SnatMode::Pool(pool) => {
            let entries: Vec<String> = pool
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i} : {a}"))
                .collect();
            (
                String::new(),
                format!(
                    "\t\t{matched} {counted} snat ip to jhash ip saddr mod {} seed 0x6e617467 map {{ {} }}{random}\n",
                    pool.len(),
                    entries.join(", ")
                ),
            )
        }
        SnatMode::Blocks(blocks) => {
            let all = blocks.all();
            let ports: Vec<String> = all
                .iter()
                .map(|b| format!("{} : {} . {}-{}", b.private, b.public, b.first, b.last))
                .collect();
            let addresses: Vec<String> = all
                .iter()
                .map(|b| format!("{} : {}", b.private, b.public))
                .collect();
            (
                format!(
                    "\tmap port_blocks {{\n\t\ttype ipv4_addr : interval ipv4_addr . inet_service\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\tmap block_addresses {{\n\t\ttype ipv4_addr : ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
                    ports.join(", "),
                    addresses.join(", ")
                ),
                // Ports only exist for TCP and UDP; ICMP and the rest keep the address.
                format!(
                    "\t\t{matched} meta l4proto {{ tcp, udp }} {counted} snat ip to ip saddr map @port_blocks\n\t\t{matched} {counted} snat ip to ip saddr map @block_addresses\n"
                ),
            )
        }
    };
    // eBPF data plane: its programs translate IPv4 on the public interface, outside
    // netfilter, so the table has no IPv4 NAT rule; the filter sees private addresses
    // both ways and accepts, from the public side, what the programs admitted for a
    // binding (their mark) besides conntrack's replies. IPv6 stays here.
    let (maps, translate, admitted, plane, untrack, untracked) = match d.dataplane.ebpf() {
        None => (
            maps,
            translate,
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Some(e) => {
            let admitted = format!("meta mark & {MARK_MASK:#010x} == {MARK:#010x}");
            let outbound = format!("meta mark & {MARK_MASK:#010x} == {OUTBOUND_MARK:#010x}");
            let mut objects = format!(
                "\t# data plane ebpf: IPv4 translated to {} by natgw's eBPF programs on {public}, ports {}, filtering {}{}\n\tcounter inbound_admitted {{\n\t\tcomment \"{ADMITTED}\"\n\t}}\n",
                crate::join(&d.snat.addresses()),
                e.ports,
                e.filtering,
                match (e.bypass_conntrack, e.fast_path, e.route_mtu) {
                    (true, true, Some(mtu)) =>
                        format!(", conntrack bypassed, fast path up to a route MTU of {mtu}"),
                    (true, true, None) => ", conntrack bypassed, fast path".to_string(),
                    (true, false, _) => ", conntrack bypassed".to_string(),
                    _ => String::new(),
                },
            );
            // bypass_conntrack: the programs keep the state (bindings, filtering, TCP),
            // so the IPv4 flows they translate skip conntrack, which would cost a second
            // table entry per flow: what the ingress program admitted on the public
            // interface, and what the hairpin program marked on a private one (a
            // private source the kernel routes out of the public interface). The
            // forward chain accepts each in one rule, towards its side only, and drops
            // a marked packet the kernel routed elsewhere than predicted (policy
            // routing on marks set later) instead of letting it out untracked.
            // Everything else (the host's own traffic, other interfaces, IPv6) stays
            // tracked.
            let (untrack, untracked) = if e.bypass_conntrack {
                objects.push_str(&format!(
                    "\tcounter {MISROUTED} {{\n\t\tcomment \"{MISROUTED_WHAT}\"\n\t}}\n"
                ));
                // Every packet of a translated flow meets these rules: the mark (a
                // register test) comes first, and the interfaces are matched by index
                // (`iif`/`oif`, resolved when the table loads; the programs are attached
                // to those very interfaces) rather than by name (a 16-byte copy each).
                (
                    format!(
                        "\tchain untrack {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\t{admitted} iif {public} meta nfproto ipv4 notrack\n\t\t{outbound} iif {private} meta nfproto ipv4 notrack\n\t}}\n"
                    ),
                    format!(
                        "\t\tct state untracked {outbound} iif {private} oif {public} meta nfproto ipv4 counter name \"outbound\" accept\n\t\tct state untracked {admitted} iif {public} oif {private} meta nfproto ipv4 counter name \"inbound_admitted\" accept\n\t\tct state untracked {outbound} counter name \"{MISROUTED}\" drop\n"
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            (
                String::new(),
                String::new(),
                format!(
                    "\t\toifname {private} {admitted} counter name \"inbound_admitted\" accept\n"
                ),
                objects,
                untrack,
                untracked,
            )
        }
    };
    let t = d.timeouts;
    // Before the accept rules: an accepted SYN leaves the chain unclamped.
    let clamp = if d.mss_clamp {
        format!("\t\tiifname {private} oifname {public} tcp flags syn tcp option maxseg size set rt mtu\n\t\tiifname {public} oifname {private} tcp flags syn tcp option maxseg size set rt mtu\n")
    } else {
        String::new()
    };

    let spoof = SpoofCheck::new(d.public_ingress_hook, &public);
    let v6 = d
        .ipv6
        .as_ref()
        .map(|g| render_v6(g, d.timeouts, &private, &public, &spoof.only_public, random));

    let mut out = String::new();
    for (name, what) in COUNTERS {
        writeln!(out, "\tcounter {name} {{\n\t\tcomment \"{what}\"\n\t}}").unwrap();
    }
    out.push_str(&plane);
    // Timeouts for natgw's flows only (RFC 4787 REQ-5, RFC 5382 REQ-5), never the
    // global sysctls. `ct timeout set` acts on the new, not yet confirmed conntrack
    // entry: it is set in the NAT chain, which sees exactly natgw's flows, once, on
    // their first packet, before conntrack confirms the entry (at raw there is no entry
    // yet and the kernel ignores it, seen on 6.18).
    out.push_str(&ct_timeouts("", "ip", t));
    if let Some(v6) = &v6 {
        out.push_str(&v6.objects);
    }
    out.push_str(&maps);
    // Forwarding is on for every interface once natgw turns it on, so the forward
    // chain also closes what natgw would otherwise open: new connections from the public
    // side to any interface (not only the private ones), and untranslated private-range
    // sources from interfaces natgw does not manage leaving through the public one.
    // The spoof chain runs before conntrack and routing: a packet from outside that
    // claims a private source never creates a translation (a pinhole to that private
    // address), whatever rp_filter says. Only packets that entered through a private
    // interface are translated.
    //
    // Cost (measured with `natgw bench --profile`): nearly every forwarded packet
    // belongs to an established flow, and the first forward rule accepts it after one
    // conntrack-state match and one lookup of its interface indexes (counted by
    // direction). That skips no guarantee: conntrack matched the packet to a flow whose
    // first packet passed the rules below (anti-spoofing, no unsolicited inbound), and
    // invalid packets are not established. Indexes are cheaper than names; if an
    // interface is recreated under a new index, its packets miss this rule and get the
    // same verdict and counter from the rules below. A new flow's first packet goes to
    // its side's chain after one lookup, and the NAT chain tests its interfaces once.
    write!(
        out,
        "\tset private4 {{
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = {{ {prefixes} }}
\t}}
\tset public_spoofs4 {{
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = {{ {public_spoofs} }}
\t}}
{sets6}\tchain {spoof_chain} {{
\t\t{spoof_hook}
\t\t{spoof_match}ip saddr @public_spoofs4 counter name \"dropped_spoofed_public\" drop
{prerouting6}\t}}
{untrack}\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
{clamp}{untracked}\t\tct state established counter name iif . oif map {{ {directions} }} accept
{forward6_first}\t\tct state invalid counter name \"dropped_invalid\" drop
\t\tiifname vmap {{ {sides} }}
\t\toifname {public} ip saddr {{ 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16 }} counter name \"dropped_spoofed\" drop
{forward6_last}\t}}
\tchain from_private {{
\t\toifname {public} ip saddr @private4 counter name \"outbound\" accept
{forward6_out}\t\tip saddr != @private4 counter name \"dropped_spoofed\" drop
{forward6_spoof}\t}}
\tchain from_public {{
\t\toifname {private} ct state established,related counter name \"inbound_replies\" accept
{admitted}\t\toifname {private} counter name \"dropped_unsolicited\" drop
\t\toifname {public} ip daddr @private4 counter name \"dropped_unsolicited\" drop
\t\tct state established,related accept
\t\tcounter name \"dropped_unsolicited\" drop
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname {public} iifname {private} jump translate
\t}}
\tchain translate {{
\t\t{matched} ct timeout set meta l4proto map {{ tcp : \"natgw_tcp\", udp : \"natgw_udp\" }}
{translate}{timeouts6}{translate6}\t}}
",
        prefixes = prefixes.join(", "),
        public_spoofs = public_spoofs.join(", "),
        directions = directions.join(", "),
        sides = sides.join(", "),
        spoof_chain = spoof.chain,
        spoof_hook = spoof.hook,
        spoof_match = spoof.only_public,
        sets6 = v6.as_ref().map_or("", |v| &v.sets),
        prerouting6 = v6.as_ref().map_or("", |v| &v.prerouting),
        timeouts6 = v6.as_ref().map_or("", |v| &v.timeouts),
        forward6_first = v6.as_ref().map_or("", |v| &v.forward_first),
        forward6_spoof = v6.as_ref().map_or("", |v| &v.forward_spoof),
        forward6_out = v6.as_ref().map_or("", |v| &v.forward_out),
        forward6_last = v6.as_ref().map_or("", |v| &v.forward_last),
        translate6 = v6.as_ref().map_or("", |v| &v.translate),
    )
    .unwrap();
    if let Some(vip) = d.ha_public_vip {
        // HA: keepalived adds the address before natgw's notify hook has committed the
        // replicated connections; a reply arriving in between would find no entry and
        // be answered with a reset, killing the moved connection. Dropped instead, it is
        // retransmitted and then finds the committed entry. Nothing of the headnode's
        // own listens on the shared address.
        write!(
            out,
            "\tchain ha_input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname {public} ip daddr {vip} ct state new counter drop
\t}}
"
        )
        .unwrap();
    }
    out
}

/// Where packets from the public side that claim a private or impossible source are
/// dropped: before conntrack and routing, so that they never create a translation.
struct SpoofCheck {
    chain: &'static str,
    hook: String,
    /// What a rule must match first to see only the public side's packets.
    only_public: String,
}

impl SpoofCheck {
    fn new(at_ingress: bool, public: &str) -> Self {
        if at_ingress {
            // A chain on the public device's ingress sees only that device's packets,
            // so private-side packets (nearly all of them on a busy gateway) never pay
            // for it.
            SpoofCheck {
                chain: "public_ingress",
                hook: format!(
                    "type filter hook ingress device {public} priority filter; policy accept;"
                ),
                only_public: String::new(),
            }
        } else {
            SpoofCheck {
                chain: "prerouting",
                hook: "type filter hook prerouting priority raw; policy accept;".into(),
                only_public: format!("iifname {public} "),
            }
        }
    }
}

/// The timeout objects `natgw_udpSUFFIX` and `natgw_tcpSUFFIX` for one family.
fn ct_timeouts(suffix: &str, l3proto: &str, t: Timeouts) -> String {
    format!(
        "\tct timeout natgw_udp{suffix} {{
\t\tprotocol udp
\t\tl3proto {l3proto}
\t\tpolicy = {{ unreplied : {udp}, replied : {udp} }}
\t}}
\tct timeout natgw_tcp{suffix} {{
\t\tprotocol tcp
\t\tl3proto {l3proto}
\t\tpolicy = {{ syn_sent : {tr}, syn_recv : {tr}, established : {est}, fin_wait : {tr}, close_wait : {tr}, last_ack : {tr}, time_wait : {tr} }}
\t}}
",
        udp = t.udp,
        tr = t.tcp_transitory,
        est = t.tcp_established,
    )
}

/// The IPv6 lines, each slotted into the chain next to its IPv4 counterpart.
struct V6Rules {
    objects: String,
    sets: String,
    prerouting: String,
    timeouts: String,
    forward_first: String,
    forward_spoof: String,
    forward_out: String,
    forward_last: String,
    translate: String,
}

/// IPv6 keeps the IPv4 promises: sources from private interfaces must be in
/// `private6`, only `outbound6` leaves, private sources arriving on the public side
/// are dropped before conntrack, and unsolicited inbound is dropped by the
/// family-independent rules already in the forward chain. Neighbour discovery is
/// never forwarded (link-local, hop limit 255) and natgw does not filter input, so it
/// needs no rule; ICMPv6 errors about allowed flows (packet-too-big, unreachable, time
/// exceeded) are conntrack `related` and pass with their flow's replies.
fn render_v6(
    g: &Ipv6Gateway,
    t: Timeouts,
    private: &str,
    public: &str,
    only_public: &str,
    random: &str,
) -> V6Rules {
    let join = |nets: &[ipnet::Ipv6Net]| {
        nets.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let counted = "counter name \"translated_connections\"";
    let translate = match &g.translation {
        Ipv6Translation::Routed => String::new(),
        Ipv6Translation::Nat66 { address } => {
            format!("\t\tip6 saddr @outbound6 {counted} snat ip6 to {address}{random}\n")
        }
        // nft's prefix NAT (NF_NAT_RANGE_NETMAP) keeps the host bits: node fd00::11
        // always leaves as PUBLIC::11. It goes through conntrack like every other flow.
        Ipv6Translation::Nptv6 {
            private: from,
            public: to,
        } => format!("\t\tip6 saddr {from} {counted} snat ip6 prefix to {to}\n"),
    };
    // Routed nodes keep their own addresses, so a packet-too-big about a flow
    // conntrack no longer knows (flushed, failed over) still reaches them.
    let forward_first = match g.translation {
        Ipv6Translation::Routed => format!(
            "\t\tiifname {public} oifname {private} ip6 daddr @outbound6 icmpv6 type packet-too-big counter name \"inbound_replies\" accept\n"
        ),
        _ => String::new(),
    };
    V6Rules {
        objects: ct_timeouts("6", "ip6", t),
        sets: format!(
            "\tset private6 {{\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\tset outbound6 {{\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
            join(&g.private_prefixes),
            join(&g.outbound_prefixes)
        ),
        prerouting: format!(
            "\t\t{only_public}ip6 saddr @private6 counter name \"dropped_spoofed_public\" drop\n\t\t{only_public}ip6 saddr {{ ::1, ::ffff:0:0/96, ff00::/8 }} counter name \"dropped_spoofed_public\" drop\n"
        ),
        // In the NAT chain like IPv4's: once per flow, also in `routed` mode, where
        // nothing is translated but the NAT chain still sees each new flow.
        timeouts: "\t\tip6 saddr @outbound6 ct timeout set meta l4proto map { tcp : \"natgw_tcp6\", udp : \"natgw_udp6\" }\n"
            .into(),
        forward_first,
        forward_spoof: "\t\tip6 saddr != @private6 counter name \"dropped_spoofed\" drop\n".into(),
        forward_out: format!(
            "\t\toifname {public} ip6 saddr @outbound6 counter name \"outbound\" accept\n"
        ),
        // ULA never leaves untranslated, whichever interface it came from.
        forward_last: format!(
            "\t\toifname {public} ip6 saddr fc00::/7 counter name \"dropped_spoofed\" drop\n"
        ),
        translate,
    }
}

/// A name between double quotes. `IfName` holds only characters that are plain data
/// to nft (no quote, backslash or `*` wildcard), so this cannot change a rule's meaning.
fn quote(name: &IfName) -> String {
    format!("\"{}\"", name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Interface;
    use std::collections::BTreeMap;

    fn iface(name: &str) -> Interface {
        Interface {
            name: IfName::new(name).unwrap(),
            addresses: vec![],
        }
    }

    fn desired(snat: SnatMode) -> Desired {
        Desired {
            public: iface("wan0"),
            private: vec![iface("lan0"), iface("lan1")],
            private_prefixes: vec![
                "10.0.0.0/24".parse().unwrap(),
                "192.168.5.0/24".parse().unwrap(),
            ],
            snat,
            routes: vec![],
            sysctls: BTreeMap::new(),
            uplink_default: None,
            mss_clamp: false,
            port_selection: Default::default(),
            timeouts: Default::default(),
            warnings: vec![],
            ha_public_vip: None,
            dataplane: Default::default(),
            ipv6: None,
            public_ingress_hook: true,
        }
    }

    #[test]
    fn snat_ruleset() {
        let r = render(&desired(SnatMode::To("203.0.113.1".parse().unwrap())));
        insta::assert_snapshot!(r.text);
        assert_eq!(listed_digest(&r.text), Some(r.digest.as_str()));
    }

    #[test]
    fn ebpf_ruleset_has_no_ipv4_nat_and_accepts_the_mark() {
        use crate::dataplane::{DataplaneSpec, EbpfPlane, Filtering, PortRange};
        let plane = |filtering, bypass_conntrack| {
            DataplaneSpec::Ebpf(EbpfPlane {
                filtering,
                ports: PortRange {
                    first: 61000,
                    last: 65535,
                },
                bypass_conntrack,
                fast_path: false,
                route_mtu: None,
            })
        };
        let mut d = desired(SnatMode::To("203.0.113.1".parse().unwrap()));
        d.dataplane = plane(Filtering::EndpointIndependent, false);
        let r = render(&d);
        insta::assert_snapshot!("ebpf_ruleset", r.text);
        assert!(!r.text.contains("snat ip to"), "{}", r.text);
        let at = |needle: &str| r.text.find(needle).unwrap_or_else(|| panic!("{needle}"));
        // Admitted inbound is accepted before the unsolicited drop.
        assert!(
            at("meta mark & 0x0f000000 == 0x0a000000")
                < at("counter name \"dropped_unsolicited\" drop")
        );
        // Without bypass_conntrack, conntrack sees every flow.
        assert!(!r.text.contains("notrack"));
        assert!(!r.text.contains("untracked"));
        // Another filtering mode is another table (up reloads the programs).
        let mut other = d.clone();
        other.dataplane = plane(Filtering::AddressAndPortDependent, false);
        assert_ne!(render(&other).digest, r.digest);
        assert_ne!(
            render(&desired(SnatMode::To("203.0.113.1".parse().unwrap()))).digest,
            r.digest
        );
    }

    #[test]
    fn bypass_conntrack_untracks_only_what_the_programs_marked_on_their_side() {
        use crate::dataplane::{DataplaneSpec, EbpfPlane, Filtering, PortRange};
        let mut d = desired(SnatMode::To("203.0.113.1".parse().unwrap()));
        d.dataplane = DataplaneSpec::Ebpf(EbpfPlane {
            filtering: Filtering::EndpointIndependent,
            ports: PortRange {
                first: 61000,
                last: 65535,
            },
            bypass_conntrack: true,
            fast_path: false,
            route_mtu: None,
        });
        let r = render(&d);
        insta::assert_snapshot!("ebpf_ruleset_bypass", r.text);
        let at = |needle: &str| r.text.find(needle).unwrap_or_else(|| panic!("{needle}"));
        // IPv4 only, each mark only from the interface whose program sets it.
        let notrack: Vec<&str> = r.text.lines().filter(|l| l.contains("notrack")).collect();
        assert_eq!(
            notrack,
            [
                "\t\tmeta mark & 0x0f000000 == 0x0a000000 iif \"wan0\" meta nfproto ipv4 notrack",
                "\t\tmeta mark & 0x0f000000 == 0x0b000000 iif { \"lan0\", \"lan1\" } meta nfproto ipv4 notrack",
            ]
        );
        assert!(r.text.contains("type filter hook prerouting priority raw;"));
        // The forward chain accepts them first, each only from and towards its side,
        // and drops an outbound-marked packet routed anywhere else.
        let forward = &r.text[at("chain forward {")..at("chain from_private {")];
        let first: Vec<&str> = forward.lines().skip(2).take(3).collect();
        assert_eq!(
            first,
            [
                "\t\tct state untracked meta mark & 0x0f000000 == 0x0b000000 iif { \"lan0\", \"lan1\" } oif \"wan0\" meta nfproto ipv4 counter name \"outbound\" accept",
                "\t\tct state untracked meta mark & 0x0f000000 == 0x0a000000 iif \"wan0\" oif { \"lan0\", \"lan1\" } meta nfproto ipv4 counter name \"inbound_admitted\" accept",
                "\t\tct state untracked meta mark & 0x0f000000 == 0x0b000000 counter name \"dropped_misrouted\" drop",
            ]
        );
        let tracked = render(&desired(SnatMode::To("203.0.113.1".parse().unwrap())));
        assert!(!tracked.text.contains("notrack"));
    }

    #[test]
    fn ha_drops_new_connections_to_the_shared_address_instead_of_resetting() {
        let plain = render(&desired(SnatMode::To("203.0.113.10".parse().unwrap())));
        assert!(!plain.text.contains("ha_input"));
        let mut d = desired(SnatMode::To("203.0.113.10".parse().unwrap()));
        d.ha_public_vip = Some("203.0.113.10".parse().unwrap());
        let ha = render(&d);
        assert!(ha.text.contains(
            "\tchain ha_input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"wan0\" ip daddr 203.0.113.10 ct state new counter drop\n\t}\n"
        ), "{}", ha.text);
        assert_ne!(plain.digest, ha.digest);
    }

    #[test]
    fn mss_clamp_comes_before_the_accepts() {
        let mut d = desired(SnatMode::Masquerade);
        d.mss_clamp = true;
        let text = render(&d).text;
        let clamp = text.find("tcp option maxseg size set rt mtu").unwrap();
        assert!(clamp < text.find("counter name \"outbound\" accept").unwrap());
        assert_ne!(
            render(&d).digest,
            render(&desired(SnatMode::Masquerade)).digest
        );
    }

    #[test]
    fn only_private_ingress_is_translated_and_public_spoofs_drop_first() {
        let text = render(&desired(SnatMode::Masquerade)).text;
        // The only way into `translate`: from a private interface out of the public one.
        assert_eq!(text.matches("jump translate").count(), 1, "{text}");
        assert!(
            text.contains("oifname \"wan0\" iifname { \"lan0\", \"lan1\" } jump translate"),
            "{text}"
        );
        let translate = &text[text.find("chain translate").unwrap()..];
        assert!(
            translate
                .contains("meta nfproto ipv4 counter name \"translated_connections\" masquerade"),
            "{text}"
        );
        // ... and `private4` holds every IPv4 source that got that far.
        assert!(text.contains(
            "chain from_private {\n\t\toifname \"wan0\" ip saddr @private4 counter name \"outbound\" accept\n\t\tip saddr != @private4 counter name \"dropped_spoofed\" drop\n"
        ), "{text}");
        assert!(text.contains("iifname vmap { \"lan0\" : jump from_private, \"lan1\" : jump from_private, \"wan0\" : jump from_public }"), "{text}");
        // Before conntrack: on the public device's ingress where the kernel keeps such a
        // chain across the device's removal, at raw prerouting otherwise.
        assert!(text.contains(
            "chain public_ingress {\n\t\ttype filter hook ingress device \"wan0\" priority filter; policy accept;\n\t\tip saddr @public_spoofs4 counter name \"dropped_spoofed_public\" drop\n\t}"
        ), "{text}");
        assert!(!text.contains("hook prerouting"));
        let mut older = desired(SnatMode::Masquerade);
        older.public_ingress_hook = false;
        let older = render(&older).text;
        assert!(older.contains(
            "chain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tiifname \"wan0\" ip saddr @public_spoofs4 counter name \"dropped_spoofed_public\" drop\n\t}"
        ), "{older}");
        assert!(!older.contains("hook ingress"));
        // One lookup: the private prefixes and the special ranges, merged.
        assert!(
            text.contains(
                "elements = { 0.0.0.0/8, 10.0.0.0/24, 127.0.0.0/8, 192.168.5.0/24, 224.0.0.0/3 }"
            ),
            "{text}"
        );
    }

    #[test]
    fn masquerade_ruleset_differs_only_in_translation() {
        let snat = render(&desired(SnatMode::To("203.0.113.1".parse().unwrap())));
        let masq = render(&desired(SnatMode::Masquerade));
        assert_ne!(snat.digest, masq.digest);
        assert!(masq
            .text
            .contains("counter name \"translated_connections\" masquerade\n"));
        assert!(!masq.text.contains("snat ip to"));
    }

    fn dual_stack(translation: Ipv6Translation) -> Desired {
        let mut d = desired(SnatMode::To("203.0.113.1".parse().unwrap()));
        let private: Vec<ipnet::Ipv6Net> = vec!["fd00:77::/64".parse().unwrap()];
        d.ipv6 = Some(Ipv6Gateway {
            outbound_prefixes: match translation {
                Ipv6Translation::Routed => vec!["2001:db8:77::/64".parse().unwrap()],
                _ => private.clone(),
            },
            private_prefixes: match translation {
                Ipv6Translation::Routed => vec![
                    "2001:db8:77::/64".parse().unwrap(),
                    "fd00:77::/64".parse().unwrap(),
                ],
                _ => private,
            },
            translation,
            uplink_default: true,
            accept_ra: false,
        });
        d
    }

    #[test]
    fn ipv6_rulesets() {
        insta::assert_snapshot!(
            "ipv6_nat66",
            render(&dual_stack(Ipv6Translation::Nat66 {
                address: "2001:db8:1::1".parse().unwrap()
            }))
            .text
        );
        insta::assert_snapshot!(
            "ipv6_nptv6",
            render(&dual_stack(Ipv6Translation::Nptv6 {
                private: "fd00:77::/64".parse().unwrap(),
                public: "2001:db8:177::/64".parse().unwrap()
            }))
            .text
        );
        insta::assert_snapshot!(
            "ipv6_routed",
            render(&dual_stack(Ipv6Translation::Routed)).text
        );
    }

    #[test]
    fn ipv6_keeps_the_ipv4_rules_and_orders_its_own() {
        let v4 = render(&desired(SnatMode::To("203.0.113.1".parse().unwrap()))).text;
        let routed = render(&dual_stack(Ipv6Translation::Routed)).text;
        for line in v4.lines().filter(|l| !l.contains(DIGEST_MARK)) {
            assert!(routed.contains(line), "IPv4 line lost: {line}");
        }
        let at = |needle: &str| routed.find(needle).unwrap_or_else(|| panic!("{needle}"));
        // Spoofed sources drop before the accept, ULA never leaves untranslated, and
        // routed mode translates nothing.
        // From a private interface: what may leave is accepted first (outbound6 is a
        // subset of private6), then every other source outside private6 is dropped.
        let from_private = &routed[at("chain from_private")..at("chain from_public")];
        assert!(
            from_private.find("ip6 saddr @outbound6 counter name \"outbound\" accept")
                < from_private.find("ip6 saddr != @private6 counter name \"dropped_spoofed\" drop"),
            "{routed}"
        );
        // (`from_private` is jumped to before the forward chain's last rules.)
        assert!(at("iifname vmap") < at("ip6 saddr fc00::/7"));
        assert!(at("icmpv6 type packet-too-big") < at("ct state invalid"));
        assert!(!routed.contains("snat ip6"));
    }

    #[test]
    fn digest_follows_content() {
        let a = render(&desired(SnatMode::Masquerade));
        let mut d = desired(SnatMode::Masquerade);
        d.private_prefixes.push("10.20.0.0/16".parse().unwrap());
        let b = render(&d);
        assert_ne!(a.digest, b.digest);
        assert_eq!(
            a,
            render(&desired(SnatMode::Masquerade)),
            "rendering is deterministic"
        );
    }
}
