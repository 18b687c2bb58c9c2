//! systemd-networkd: the first `.network` file, by file name across all its
//! directories, whose `[Match]` fits the interface is the one networkd applies; a file
//! in an earlier directory masks one of the same name in a later one, and the
//! `NAME.network.d/*.conf` drop-ins are read after it. Every IPv4 `Gateway=` in
//! `[Network]` adds a default route, so natgw keeps exactly one, its own, and leaves
//! IPv6 gateways alone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::text::{key_value, section, Text};
use super::{children, edit, glob, Files, Found, Interface, Manager};

/// networkd's search path, highest precedence first.
const DIRS: [&str; 5] = [
    "/etc/systemd/network",
    "/run/systemd/network",
    "/usr/local/lib/systemd/network",
    "/usr/lib/systemd/network",
    "/lib/systemd/network",
];
const ETC: &str = "/etc/systemd/network";
/// `[Match]` keys natgw can evaluate; any other makes the match undecidable here.
const KNOWN_MATCH: [&str; 5] = [
    "Name",
    "OriginalName",
    "MACAddress",
    "PermanentMACAddress",
    "Type",
];

/// Files of `suffix` in networkd's directories, by name, the winner of each name.
fn by_name<'a>(files: &'a Files, subdir: &str, suffix: &str) -> BTreeMap<&'a str, &'a str> {
    let mut found = BTreeMap::new();
    for dir in DIRS {
        for (name, path) in children(files, &format!("{dir}{subdir}")) {
            if name.ends_with(suffix) {
                found.entry(name).or_insert(path);
            }
        }
    }
    found
}

/// A `.network` file and its drop-ins, in the order networkd reads them.
fn unit<'a>(files: &'a Files, name: &str, path: &'a str) -> Vec<&'a str> {
    let mut parts = vec![path];
    parts.extend(by_name(files, &format!("/{name}.d"), ".conf").into_values());
    parts
}

enum Match {
    Yes,
    No,
    /// A condition natgw cannot evaluate (`Driver=`, `Path=`...).
    Unknown(String),
}

fn matches(files: &Files, parts: &[&str], interface: &Interface) -> Match {
    // Each key is a list: assignments add to it, an empty one resets it.
    let mut lists: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for part in parts {
        let mut current = "";
        for line in files[*part].lines() {
            if let Some(s) = section(line) {
                current = s;
            } else if current == "Match" {
                if let Some((key, value)) = key_value(line) {
                    let list = lists.entry(key).or_default();
                    if value.is_empty() {
                        list.clear();
                    } else {
                        list.extend(value.split_whitespace());
                    }
                }
            }
        }
    }
    for (key, list) in &lists {
        if list.is_empty() {
            continue;
        }
        if !KNOWN_MATCH.contains(key) {
            return Match::Unknown(format!("{key}={}", list.join(" ")));
        }
        let globs = |value: &str| {
            // A leading `!` negates the whole list.
            let (negate, first) = match list[0].strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, list[0]),
            };
            let hit = std::iter::once(first)
                .chain(list[1..].iter().copied())
                .any(|p| glob::matches(p, value));
            hit != negate
        };
        let ok = match *key {
            "Name" | "OriginalName" => globs(&interface.name),
            "Type" => globs(&interface.kind),
            _ => interface
                .mac
                .as_deref()
                .is_some_and(|mac| list.iter().any(|m| m.eq_ignore_ascii_case(mac))),
        };
        if !ok {
            return Match::No;
        }
    }
    Match::Yes
}

/// Where an edit of `path` must go: files outside /etc belong to packages, so the
/// changed copy goes to /etc under the same name, which masks the original.
fn writable(path: &str) -> String {
    match DIRS[1..].iter().find_map(|d| path.strip_prefix(d)) {
        Some(rest) => format!("{ETC}{rest}"),
        None => path.to_string(),
    }
}

pub(super) fn plan(files: &Files, interface: &Interface, gateway: Ipv4Addr) -> Option<Found> {
    let mut chosen = None;
    for (name, path) in by_name(files, "", ".network") {
        let parts = unit(files, name, path);
        match matches(files, &parts, interface) {
            Match::Yes => {
                chosen = Some((name, parts));
                break;
            }
            Match::No => {}
            Match::Unknown(condition) => {
                return Some(Found {
                    manager: Manager::SystemdNetworkd,
                    result: Err(format!("{path} matches on {condition}, which natgw cannot evaluate; it may or may not be the file networkd applies to {}: add Gateway={gateway} under [Network] of the right file yourself", interface.name)),
                    notes: Vec::new(),
                });
            }
        }
    }
    let (name, parts) = chosen?;
    let mut notes = Vec::new();
    let mut edits = Vec::new();
    let mut replaced = false;
    for part in &parts {
        let mut text = Text::parse(&files[*part]);
        let mut current = String::new();
        let mut changed = false;
        let mut kept_here = false;
        let mut i = 0;
        while i < text.lines.len() {
            if let Some(s) = section(&text.lines[i]) {
                current = s.to_string();
            } else if let Some((key, value)) = key_value(&text.lines[i]) {
                let v4 = value.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4());
                if current == "Network" && key == "Gateway" && v4 {
                    if replaced {
                        // A second IPv4 gateway would be a second default route.
                        text.lines.remove(i);
                        changed = true;
                        continue;
                    }
                    replaced = true;
                    kept_here = true;
                    if value.parse() != Ok(IpAddr::V4(gateway)) {
                        text.lines[i] = format!("Gateway={gateway}");
                        changed = true;
                    }
                } else if current == "Route" && key == "Gateway" && v4 {
                    notes.push(format!("{part} has a [Route] with Gateway={value}; if it is a default route (no Destination=), remove it"));
                } else if current == "Network"
                    && key == "DHCP"
                    && matches!(value, "yes" | "true" | "ipv4" | "both")
                {
                    notes.push(format!("{part} has DHCP={value}: the DHCP server's router adds a default route too unless [DHCPv4] UseGateway=no"));
                }
            }
            i += 1;
        }
        if changed {
            let target = writable(part);
            let mut e = edit(files, &target, text.render());
            if target != *part {
                e.like = Some(part.to_string());
            }
            edits.push(e);
        } else if kept_here {
            // Already right: a no-op edit, so that the plan says "up to date".
            edits.push(edit(files, part, text.render()));
        }
    }
    if !replaced {
        let path = format!("{ETC}/{name}.d/natgw-gateway.conf");
        edits.push(edit(
            files,
            &path,
            format!("# Written by natgw node persist: default route through the NAT headnode.\n[Network]\nGateway={gateway}\n"),
        ));
    }
    notes.push(format!(
        "apply with: networkctl reload && networkctl reconfigure {}",
        interface.name
    ));
    Some(Found {
        manager: Manager::SystemdNetworkd,
        result: Ok(edits),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{eth, files, only, GW};
    use super::super::{plan, Manager};

    #[test]
    fn gets_a_drop_in_or_its_gateway_changed() {
        let f = files(&[(
            "/etc/systemd/network/10-lan.network",
            "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.11/24\n",
        )]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.manager, Some(Manager::SystemdNetworkd));
        assert_eq!(
            p.edits[0].path,
            "/etc/systemd/network/10-lan.network.d/natgw-gateway.conf"
        );
        assert!(only(&p).ends_with("[Network]\nGateway=10.0.0.1\n"));
        // The drop-in in place: a rerun writes nothing.
        let mut again = f.clone();
        again.insert(p.edits[0].path.clone(), p.edits[0].after.clone());
        assert!(plan(&again, &eth("eth0"), GW).up_to_date);

        let f = files(&[(
            "/etc/systemd/network/10-lan.network",
            "[Match]\nName=en*\n\n[Network]\nAddress=10.0.0.11/24\nGateway=10.0.0.254\nGateway=2001:db8::1\n",
        )]);
        let p = plan(&f, &eth("enp1s0"), GW);
        assert_eq!(only(&p), "[Match]\nName=en*\n\n[Network]\nAddress=10.0.0.11/24\nGateway=10.0.0.1\nGateway=2001:db8::1\n", "IPv6 gateway kept");
    }

    #[test]
    fn first_match_by_file_name_across_directories_wins() {
        let f = files(&[
            (
                "/usr/lib/systemd/network/05-all.network",
                "[Match]\nName=!lo wg*\n[Network]\nDHCP=yes\n",
            ),
            ("/etc/systemd/network/05-all.network", "[Match]\nName=wg*\n"),
            (
                "/etc/systemd/network/20-mac.network",
                "[Match]\nMACAddress=52:54:00:12:34:56\n[Network]\nAddress=10.0.0.11/24\n",
            ),
            (
                "/run/systemd/network/10-other-type.network",
                "[Match]\nType=wlan\n",
            ),
            (
                "/etc/systemd/network/30-name.network",
                "[Match]\nName=eth0\n",
            ),
        ]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(
            p.edits[0].path, "/etc/systemd/network/20-mac.network.d/natgw-gateway.conf",
            "{p:#?}"
        );
        // Negation: `!lo wg*` matches eth0 once /etc no longer masks the vendor file.
        let mut unmasked = f.clone();
        unmasked.remove("/etc/systemd/network/05-all.network");
        let p = plan(&unmasked, &eth("eth0"), GW);
        assert_eq!(
            p.edits[0].path,
            "/etc/systemd/network/05-all.network.d/natgw-gateway.conf"
        );
        assert!(p.notes.iter().any(|n| n.contains("DHCP=yes")), "{p:#?}");
    }

    #[test]
    fn a_gateway_in_a_drop_in_is_the_one_replaced_and_vendor_files_are_copied_to_etc() {
        let f = files(&[
            (
                "/usr/lib/systemd/network/10-lan.network",
                "[Match]\nName=eth0\n[Network]\nAddress=10.0.0.11/24\n",
            ),
            (
                "/usr/lib/systemd/network/10-lan.network.d/gw.conf",
                "[Network]\nGateway=10.0.0.254\n",
            ),
            (
                "/etc/systemd/network/10-lan.network.d/zz.conf",
                "[Network]\nGateway=10.0.0.253\nGateway=fe80::1\n",
            ),
        ]);
        let p = plan(&f, &eth("eth0"), GW);
        let paths: Vec<_> = p.edits.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/systemd/network/10-lan.network.d/gw.conf",
                "/etc/systemd/network/10-lan.network.d/zz.conf"
            ]
        );
        assert_eq!(p.edits[0].after, "[Network]\nGateway=10.0.0.1\n");
        assert_eq!(
            p.edits[0].like.as_deref(),
            Some("/usr/lib/systemd/network/10-lan.network.d/gw.conf")
        );
        assert_eq!(p.edits[1].after, "[Network]\nGateway=fe80::1\n");
    }

    #[test]
    fn an_undecidable_match_is_refused() {
        let f = files(&[(
            "/etc/systemd/network/10-lan.network",
            "[Match]\nDriver=virtio_net\n",
        )]);
        let p = plan(&f, &eth("eth0"), GW);
        assert!(p.refused.unwrap().contains("Driver=virtio_net"));
    }
}
