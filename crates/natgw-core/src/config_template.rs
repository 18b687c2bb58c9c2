//! The config file `natgw install` writes (and the package ships): every key of
//! `Config` with a line saying what it means. What the admin asked for (settings given
//! to `natgw install --config`) stays set; what natgw detected is commented out, so
//! detection keeps deciding until the admin pins a value by removing its `#`.
//!
//! Convention, so that pinning is a one-character edit: a setting is `key = value`,
//! commented out as `#key = value` (no space after the `#`); explanations are `# text`.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::Value;

use crate::config::{Ipv6Mode, Settings};
use crate::desired::{Desired, Ipv6Translation, SnatMode};

/// A key's value as a TOML literal, and whether it is set or only shown.
struct Shown {
    value: Value,
    set: bool,
}

/// The values one template shows.
struct Values {
    public: Shown,
    private: Shown,
    /// `None` with masquerade: a fixed address would contradict it.
    snat_to: Option<Shown>,
    masquerade: Shown,
    private_prefixes: Shown,
    routes: Shown,
    mss_clamp: Shown,
    port_selection: Shown,
    dataplane: Shown,
    /// The eBPF plane's keys, shown with it only.
    filtering: Option<Shown>,
    port_range: Option<Shown>,
    timeouts: Shown,
    /// Shown only when set (the kernel's default otherwise).
    max_flows: Option<Shown>,
    ipv6_mode: Shown,
    ipv6_private_prefixes: Shown,
    /// nat66's address, nptv6's public prefix: shown when the mode has one.
    ipv6_address: Option<Shown>,
    ipv6_public_prefix: Option<Shown>,
}

/// The resolved gateway: what `settings` asked for is set, what detection found is
/// commented out. Uncommented, the file pins exactly the gateway that was resolved.
pub fn from_desired(desired: &Desired, settings: &Settings) -> String {
    let snat_to = match &desired.snat {
        SnatMode::To(addr) => Some(Shown {
            value: string(addr),
            set: !settings.snat_to.is_empty(),
        }),
        SnatMode::Pool(_) | SnatMode::Blocks(_) => Some(Shown {
            value: Value::Array(desired.snat.addresses().iter().map(string).collect()),
            set: !settings.snat_to.is_empty(),
        }),
        SnatMode::Masquerade => None,
    };
    let values = Values {
        public: Shown {
            value: string(&desired.public.name),
            set: settings.public.is_some(),
        },
        private: Shown {
            value: Value::Array(desired.private.iter().map(|i| string(&i.name)).collect()),
            set: !settings.private.is_empty(),
        },
        snat_to,
        masquerade: Shown {
            value: Value::Boolean(desired.snat == SnatMode::Masquerade),
            set: settings.masquerade,
        },
        // Not detected: only ever what the admin configured.
        private_prefixes: Shown {
            value: Value::Array(
                settings
                    .private_prefixes
                    .iter()
                    .map(|(p, _)| string(p))
                    .collect(),
            ),
            set: !settings.private_prefixes.is_empty(),
        },
        routes: Shown {
            value: Value::Array(settings.routes.iter().map(|r| route(r.to, r.via)).collect()),
            set: !settings.routes.is_empty(),
        },
        mss_clamp: Shown {
            value: Value::Boolean(settings.mss_clamp),
            set: settings.mss_clamp,
        },
        port_selection: Shown {
            value: string(settings.port_selection),
            set: settings.port_selection != Default::default(),
        },
        dataplane: Shown {
            value: string(settings.dataplane),
            set: settings.dataplane != Default::default(),
        },
        filtering: desired.dataplane.ebpf().map(|e| Shown {
            value: string(e.filtering),
            set: settings.filtering.is_some(),
        }),
        port_range: desired.dataplane.ebpf().map(|e| Shown {
            value: string(e.ports),
            set: settings.port_range.is_some(),
        }),
        timeouts: Shown {
            value: timeouts(&settings.timeouts),
            set: settings.timeouts != Default::default(),
        },
        max_flows: settings.max_flows.map(|n| Shown {
            value: Value::Integer(n as i64),
            set: true,
        }),
        ipv6_mode: Shown {
            value: string(
                desired
                    .ipv6
                    .as_ref()
                    .map_or(Ipv6Mode::Off, |g| g.translation.mode()),
            ),
            set: settings.ipv6.mode.is_some(),
        },
        ipv6_private_prefixes: Shown {
            value: Value::Array(settings.ipv6.private_prefixes.iter().map(string).collect()),
            set: !settings.ipv6.private_prefixes.is_empty(),
        },
        ipv6_address: match desired.ipv6.as_ref().map(|g| &g.translation) {
            Some(Ipv6Translation::Nat66 { address }) => Some(Shown {
                value: string(address),
                set: settings.ipv6.address.is_some(),
            }),
            _ => None,
        },
        ipv6_public_prefix: match desired.ipv6.as_ref().map(|g| &g.translation) {
            Some(Ipv6Translation::Nptv6 { public, .. }) => Some(Shown {
                value: string(public),
                set: settings.ipv6.public_prefix.is_some(),
            }),
            _ => None,
        },
    };
    let mut text = String::from(
        "# natgw configuration, written by `natgw install` from the gateway it resolved.\n\
         # Settings natgw detected are commented out, so it detects them again at each\n\
         # start. To pin one (so that a new interface or address cannot change the\n\
         # gateway), remove the '#' in front of its key. See natgw(8).\n",
    );
    for warning in &desired.warnings {
        text.push_str(&format!("#\n# Detection warned: {}\n", one_line(warning)));
    }
    render(&mut text, &values);
    text
}

/// A template with example values, all commented out, for when detection failed
/// (`problem` says why) and for the package's conffile. As shipped it asks for full
/// detection.
pub fn example(problem: Option<&str>) -> String {
    let shown = |value| Shown { value, set: false };
    let values = Values {
        public: shown(string("eth0")),
        private: shown(Value::Array(vec![string("eth1")])),
        snat_to: Some(shown(string("203.0.113.1"))),
        masquerade: shown(Value::Boolean(false)),
        private_prefixes: shown(Value::Array(Vec::new())),
        routes: shown(Value::Array(Vec::new())),
        mss_clamp: shown(Value::Boolean(false)),
        port_selection: shown(string(crate::pool::PortSelection::default())),
        dataplane: shown(string(crate::dataplane::DataplaneKind::default())),
        filtering: None,
        port_range: None,
        timeouts: shown(timeouts(&crate::pool::Timeouts::default())),
        max_flows: None,
        ipv6_mode: shown(string(Ipv6Mode::Nat66)),
        ipv6_private_prefixes: shown(Value::Array(Vec::new())),
        ipv6_address: None,
        ipv6_public_prefix: None,
    };
    let mut text = String::from(
        "# natgw configuration. Every setting is commented out, so natgw detects the gateway\n\
         # by itself (`natgw plan` shows what it finds). To set a value, replace the example\n\
         # and remove the '#' in front of its key. See natgw(8).\n",
    );
    if let Some(problem) = problem {
        text.push_str(&format!(
            "#\n# Detection failed when this file was written: {}\n\
             # Set at least `public` and `private` below, then check with `natgw plan`.\n",
            one_line(problem)
        ));
    }
    render(&mut text, &values);
    text
}

fn render(text: &mut String, v: &Values) {
    setting(
        text,
        &[
            "Public (uplink) interface.",
            "Detected: the interface holding the IPv4 default route.",
        ],
        ("public", &v.public),
    );
    setting(
        text,
        &[
            "Private interfaces, whose networks are translated.",
            "Detected: the other up interfaces with RFC 1918 / RFC 6598 addresses.",
        ],
        ("private", &v.private),
    );
    match &v.snat_to {
        Some(addr) => setting(
            text,
            &[
                "Address that translated packets leave with.",
                "Detected: the public interface's primary IPv4 address.",
            ],
            ("snat_to", addr),
        ),
        // Uncommented, the file must still be valid: no address beside masquerade.
        None => text.push_str(
            "\n# snat_to (a fixed address that translated packets leave with) is left out:\n\
             # it cannot be combined with masquerade. To use one, set masquerade = false\n\
             # and add a line: snat_to = \"ADDR\"\n",
        ),
    }
    setting(
        text,
        &[
            "Masquerade: follow the public interface's address as it changes (DHCP).",
            "Detected: true when the public address is dynamic.",
        ],
        ("masquerade", &v.masquerade),
    );
    setting(
        text,
        &[
            "Extra private networks to translate, beyond the private interfaces' own.",
            "Example: private_prefixes = [\"10.9.0.0/16\"]",
        ],
        ("private_prefixes", &v.private_prefixes),
    );
    setting(
        text,
        &[
            "Private networks behind routers on the private side; natgw adds these routes.",
            "Example: routes = [{ to = \"10.20.0.0/16\", via = \"10.0.0.254\" }]",
        ],
        ("routes", &v.routes),
    );
    setting(
        text,
        &["Clamp the TCP MSS of forwarded connections to the path MTU."],
        ("mss_clamp", &v.mss_clamp),
    );
    setting(
        text,
        &[
            "How public ports are picked: \"preserve\" (keep the private port when free)",
            "or \"random\" (no port-clash race between many hosts behind one address).",
        ],
        ("port_selection", &v.port_selection),
    );
    setting(
        text,
        &[
            "Data plane: \"nftables\" (the kernel's conntrack NAT) or \"ebpf\" (natgw's own",
            "translator: endpoint-independent mapping and selectable filtering; see natgw(8)).",
        ],
        ("dataplane", &v.dataplane),
    );
    if let Some(filtering) = &v.filtering {
        setting(
            text,
            &["eBPF plane: \"endpoint-independent\", \"address-dependent\" or \"address-and-port-dependent\"."],
            ("filtering", filtering),
        );
    }
    if let Some(range) = &v.port_range {
        setting(
            text,
            &["eBPF plane: the public ports handed out (outside the host's own ephemeral ports)."],
            ("port_range", range),
        );
    }
    setting(
        text,
        &[
            "Conntrack timeouts of natgw's flows, in seconds (RFC 4787 / RFC 5382 minimums:",
            "udp 120, tcp_established 7440, tcp_transitory 240).",
        ],
        ("timeouts", &v.timeouts),
    );
    match &v.max_flows {
        Some(max) => setting(
            text,
            &["Conntrack table size (settable from the host's initial namespace only)."],
            ("max_flows", max),
        ),
        None => text.push_str(
            "\n# Conntrack table size, e.g. max_flows = 1048576 (the kernel's default when unset).\n",
        ),
    }
    text.push_str(
        "\n# Deterministic port blocks per private host (RFC 7422), opt-in, e.g.\n\
         # port_blocks = { size = 1024 } (needs enough snat_to addresses; see natgw(8)).\n",
    );
    // A table comes after every top-level key; its header stays uncommented (an
    // empty table is the default), so that uncommented keys land inside it.
    text.push_str("\n# Outbound IPv6 for the private nodes.\n[ipv6]\n");
    setting(
        text,
        &[
            "\"routed\" (the upstream routes the private prefix here), \"nptv6\" (prefix",
            "translation), \"nat66\" (one public address) or \"off\".",
            "Detected: from the private interfaces' ULA / global networks and the public side.",
        ],
        ("mode", &v.ipv6_mode),
    );
    setting(
        text,
        &[
            "Extra private IPv6 networks, beyond the private interfaces' own.",
            "Example: private_prefixes = [\"fd00:77::/64\"]",
        ],
        ("private_prefixes", &v.ipv6_private_prefixes),
    );
    match &v.ipv6_address {
        Some(address) => setting(
            text,
            &["nat66: the public address to translate to."],
            ("address", address),
        ),
        None => text.push_str(
            "\n# nat66: the public address to translate to, e.g. address = \"2001:db8::1\"\n",
        ),
    }
    match &v.ipv6_public_prefix {
        Some(prefix) => setting(
            text,
            &["nptv6: the public prefix the upstream routes to this host."],
            ("public_prefix", prefix),
        ),
        None => text.push_str(
            "\n# nptv6: the public prefix the upstream routes to this host (as long as the\n\
             # private one), e.g. public_prefix = \"2001:db8:177::/64\"\n",
        ),
    }
}

fn timeouts(t: &crate::pool::Timeouts) -> Value {
    let mut table = toml::map::Map::new();
    table.insert("udp".into(), Value::Integer(t.udp.into()));
    table.insert(
        "tcp_established".into(),
        Value::Integer(t.tcp_established.into()),
    );
    table.insert(
        "tcp_transitory".into(),
        Value::Integer(t.tcp_transitory.into()),
    );
    Value::Table(table)
}

/// One key: its explanation, then the setting, commented out unless it is set.
fn setting(text: &mut String, explain: &[&str], (key, shown): (&str, &Shown)) {
    text.push('\n');
    for l in explain {
        text.push_str(&format!("# {l}\n"));
    }
    let hash = if shown.set { "" } else { "#" };
    text.push_str(&format!("{hash}{key} = {}\n", shown.value));
}

fn string(value: impl ToString) -> Value {
    Value::String(value.to_string())
}

fn route(to: IpNet, via: IpAddr) -> Value {
    let mut table = toml::map::Map::new();
    table.insert("to".into(), string(to));
    table.insert("via".into(), string(via));
    Value::Table(table)
}

/// An error as a single comment line: a newline must not end the comment.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Flags, Settings};
    use crate::fixtures::headnode;

    fn settings(text: &str) -> Settings {
        let path = Path::new("natgw.toml");
        Config::parse(text, path)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .merge(&Flags::default(), text, path)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// What an admin does to pin everything: remove the `#` before each key.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn keys(text: &str) -> Vec<String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        table.keys().cloned().collect()
    }

    /// Every key of `Config` the template writes as a setting, sorted (`max_flows` when
    /// set; `port_blocks` is explained only: uncommented blindly it would need a pool;
    /// `ipv6` is a table, always there).
    const ALL_KEYS: [&str; 11] = [
        "dataplane",
        "ipv6",
        "masquerade",
        "mss_clamp",
        "port_selection",
        "private",
        "private_prefixes",
        "public",
        "routes",
        "snat_to",
        "timeouts",
    ];

    /// Settings without where each value was written (line numbers differ).
    fn essence(s: &Settings) -> Settings {
        let mut s = s.clone();
        s.private_prefixes.iter_mut().for_each(|(_, o)| o.clear());
        s.routes.iter_mut().for_each(|r| r.origin.clear());
        s
    }

    const GIVEN: &str =
        "public = \"wan0\"\nprivate_prefixes = [\"10.9.0.0/16\"]\nmss_clamp = true\n\
                         routes = [{ to = \"10.20.0.0/16\", via = \"10.0.0.254\" }]\n";

    #[test]
    fn detected_values_are_commented_out_so_detection_keeps_deciding() {
        let detected = crate::desired(&Settings::default(), &headnode()).unwrap();
        let text = from_desired(&detected, &Settings::default());
        assert!(text.contains("\n#public = \"wan0\"\n"), "{text}");
        assert!(
            text.contains("\n#private = [\"lan0\", \"lan1\"]\n"),
            "{text}"
        );
        assert_eq!(settings(&text), Settings::default());
        assert_eq!(settings(&example(None)), Settings::default());
        assert_eq!(
            settings(&example(Some("no default route"))),
            Settings::default()
        );
    }

    #[test]
    fn what_the_admin_gave_stays_set() {
        let given = settings(GIVEN);
        let detected = crate::desired(&given, &headnode()).unwrap();
        let written = from_desired(&detected, &given);
        insta::assert_snapshot!(written);
        assert_eq!(essence(&settings(&written)), essence(&given));
    }

    #[test]
    fn uncommented_it_pins_exactly_the_resolved_gateway() {
        let observed = headnode();
        let given = settings(GIVEN);
        let detected = crate::desired(&given, &observed).unwrap();
        let pinned_text = uncomment(&from_desired(&detected, &given));
        assert_eq!(keys(&pinned_text), ALL_KEYS);
        let pinned = settings(&pinned_text);
        assert_eq!(pinned.public.as_deref(), Some("wan0"));
        assert_eq!(pinned.private, vec!["lan0", "lan1"]);
        assert_eq!(
            pinned.snat_to,
            vec!["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
        assert!(!pinned.masquerade && pinned.mss_clamp);
        // Resolved again on the same system, the pinned file is the same gateway
        // (only the line each route was written on differs).
        let mut again = crate::desired(&pinned, &observed).unwrap();
        again.routes[0]
            .origin
            .clone_from(&detected.routes[0].origin);
        assert_eq!(again, detected);
    }

    #[test]
    fn detected_ipv6_is_shown_and_pins_the_same_ipv6_gateway() {
        let mut observed = headnode();
        observed
            .addresses
            .push(crate::fixtures::addr(2, "2001:db8:1::1/64"));
        observed
            .addresses
            .push(crate::fixtures::addr(3, "fd00:77::1/64"));
        observed
            .routes
            .push(crate::fixtures::route("::/0", Some("2001:db8:1::fe"), 2));
        let detected = crate::desired(&Settings::default(), &observed).unwrap();
        let text = from_desired(&detected, &Settings::default());
        assert!(text.contains("\n[ipv6]\n"), "{text}");
        assert!(text.contains("\n#mode = \"nat66\"\n"), "{text}");
        assert!(text.contains("\n#address = \"2001:db8:1::1\"\n"), "{text}");
        assert_eq!(settings(&text), Settings::default());
        let pinned = settings(&uncomment(&text));
        assert_eq!(pinned.ipv6.mode, Some(Ipv6Mode::Nat66));
        let again = crate::desired(&pinned, &observed).unwrap();
        assert_eq!(again.ipv6, detected.ipv6);
    }

    #[test]
    fn masquerade_is_pinned_without_a_contradicting_address() {
        let mut observed = headnode();
        observed.addresses[1].dynamic = true;
        let detected = crate::desired(&Settings::default(), &observed).unwrap();
        assert_eq!(detected.snat, SnatMode::Masquerade);
        let text = from_desired(&detected, &Settings::default());
        assert!(text.contains("\n#masquerade = true\n"), "{text}");
        let pinned = settings(&uncomment(&text));
        assert!(pinned.masquerade && pinned.snat_to.is_empty());
        assert_eq!(
            crate::desired(&pinned, &observed).unwrap().snat,
            SnatMode::Masquerade
        );
    }

    #[test]
    fn the_ebpf_plane_and_its_keys_stay_set() {
        let given = settings("dataplane = \"ebpf\"\nfiltering = \"address-dependent\"\n");
        let detected = crate::desired(&given, &headnode()).unwrap();
        let written = from_desired(&detected, &given);
        assert!(written.contains("\ndataplane = \"ebpf\"\n"), "{written}");
        assert!(
            written.contains("\nfiltering = \"address-dependent\"\n"),
            "{written}"
        );
        // The resolved range is shown, not pinned.
        assert!(
            written.contains("\n#port_range = \"61000-65535\"\n"),
            "{written}"
        );
        assert_eq!(essence(&settings(&written)), essence(&given));
        let pinned = settings(&uncomment(&written));
        assert_eq!(pinned.port_range.unwrap().to_string(), "61000-65535");
    }

    #[test]
    fn the_example_uncommented_sets_every_key() {
        let text = example(Some("no IPv4 default route"));
        assert!(
            text.contains("# Detection failed when this file was written: no IPv4 default route\n")
        );
        let pinned = uncomment(&text);
        assert_eq!(keys(&pinned), ALL_KEYS);
        let s = settings(&pinned);
        assert_eq!(s.public.as_deref(), Some("eth0"));
        assert_eq!(s.snat_to, vec!["203.0.113.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_problem_with_newlines_stays_inside_its_comment() {
        let text = example(Some("line one\npublic = \"evil\"\n"));
        assert_eq!(settings(&text), Settings::default(), "{text}");
    }
}
