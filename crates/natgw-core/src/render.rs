//! Desired gateway → the nftables table `inet natgw`, as nft(8) text. Pure, so the
//! exact ruleset is snapshot-tested; the adapter loads it in one atomic batch.

use std::fmt::Write;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::desired::{Desired, SnatMode};

/// Named counters in the table, with what each counts. `status` reads them back.
pub const COUNTERS: [(&str, &str); 6] = [
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
        "dropped_unsolicited",
        "new connections from the public side to the private side",
    ),
];

/// The rendered table and the digest that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub text: String,
    pub digest: String,
}

/// Marker in the table comment that carries the digest.
pub const DIGEST_MARK: &str = "natgw digest ";

/// Extracts the digest from a table listing (`comment "natgw digest ..."`).
pub fn listed_digest(listing: &str) -> Option<&str> {
    let start = listing.find(DIGEST_MARK)? + DIGEST_MARK.len();
    let rest = &listing[start..];
    let end = rest.find(|c: char| !c.is_ascii_hexdigit())?;
    Some(&rest[..end])
}

pub fn render(desired: &Desired) -> Ruleset {
    let body = render_body(desired);
    let digest: String = Sha256::digest(body.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!(
        "table inet natgw {{\n\tcomment \"{DIGEST_MARK}{digest}; managed by natgw, changes are overwritten\"\n{body}}}\n"
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
    let translate = match &d.snat {
        SnatMode::To(addr) => format!("snat ip to {addr}"),
        SnatMode::Masquerade => "masquerade".to_string(),
    };

    let mut out = String::new();
    for (name, what) in COUNTERS {
        writeln!(out, "\tcounter {name} {{\n\t\tcomment \"{what}\"\n\t}}").unwrap();
    }
    write!(
        out,
        "\tset private4 {{
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = {{ {prefixes} }}
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state invalid counter name \"dropped_invalid\" drop
\t\tiifname {private} ip saddr != @private4 counter name \"dropped_spoofed\" drop
\t\tiifname {private} oifname {public} ip saddr @private4 counter name \"outbound\" accept
\t\tiifname {public} oifname {private} ct state established,related counter name \"inbound_replies\" accept
\t\tiifname {public} oifname {private} counter name \"dropped_unsolicited\" drop
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname {public} ip saddr @private4 counter name \"translated_connections\" {translate}
\t}}
",
        prefixes = prefixes.join(", "),
    )
    .unwrap();
    out
}

/// Interface names go inside double quotes; the kernel forbids quotes and spaces in them.
fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Interface;
    use std::collections::BTreeMap;

    fn iface(name: &str) -> Interface {
        Interface {
            name: name.into(),
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
            warnings: vec![],
        }
    }

    #[test]
    fn snat_ruleset() {
        let r = render(&desired(SnatMode::To("203.0.113.1".parse().unwrap())));
        insta::assert_snapshot!(r.text);
        assert_eq!(listed_digest(&r.text), Some(r.digest.as_str()));
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
