//! `natgw node persist`: the file changes that make a node's default route through the
//! headnode survive reboot, for the network manager the node uses. Pure: files in,
//! edits out; the binary reads and writes them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    SystemdNetworkd,
    NetworkManager,
    Ifupdown,
    /// RHEL-style /etc/sysconfig/network (the classic recipe's GATEWAY=).
    Sysconfig,
}

/// One file to write: its path under the root, old content (none: new file), new content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edit {
    pub path: String,
    pub before: Option<String>,
    pub after: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Persist {
    pub manager: Option<Manager>,
    pub edits: Vec<Edit>,
    /// What to run afterwards, or, with no manager found, what to add where.
    pub notes: Vec<String>,
}

/// The configuration files a node has, by absolute path, as the binary found them.
pub type Files = BTreeMap<String, String>;

pub fn plan(files: &Files, interface: &str, gateway: IpAddr) -> Persist {
    networkd(files, interface, gateway)
        .or_else(|| network_manager(files, interface, gateway))
        .or_else(|| ifupdown(files, interface, gateway))
        .or_else(|| sysconfig(files, gateway))
        .unwrap_or_else(|| Persist {
            manager: None,
            edits: Vec::new(),
            notes: vec![
                format!("no network configuration for {interface} found; add the gateway where your system keeps it:"),
                format!("  systemd-networkd: Gateway={gateway} under [Network] in the .network file matching {interface}"),
                format!("  NetworkManager:   nmcli connection modify CONNECTION ipv4.gateway {gateway}"),
                format!("  ifupdown:         gateway {gateway} in the `iface {interface} inet static` stanza of /etc/network/interfaces"),
                format!("  RHEL-style:       GATEWAY={gateway} in /etc/sysconfig/network"),
            ],
        })
}

fn edit(files: &Files, path: &str, after: String) -> Edit {
    Edit {
        path: path.to_string(),
        before: files.get(path).cloned(),
        after,
    }
}

/// Lines of `section` (`[Network]`) as (index, key, value).
fn ini_keys<'a>(text: &'a str, section: &str) -> Vec<(usize, &'a str, &'a str)> {
    let mut current = "";
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            current = line;
        } else if current.eq_ignore_ascii_case(section) {
            if let Some((k, v)) = line.split_once('=') {
                keys.push((i, k.trim(), v.trim()));
            }
        }
    }
    keys
}

/// Sets `key=value` in `section`, replacing an existing key or adding it (and the
/// section) when absent.
fn set_ini(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if let Some((i, _, _)) = ini_keys(text, section)
        .into_iter()
        .find(|(_, k, _)| k.eq_ignore_ascii_case(key))
    {
        lines[i] = format!("{key}={value}");
    } else if let Some(i) = lines
        .iter()
        .position(|l| l.trim().eq_ignore_ascii_case(section))
    {
        lines.insert(i + 1, format!("{key}={value}"));
    } else {
        lines.push(String::new());
        lines.push(section.to_string());
        lines.push(format!("{key}={value}"));
    }
    lines.join("\n") + "\n"
}

fn name_matches(pattern: &str, interface: &str) -> bool {
    pattern
        .split_whitespace()
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => interface.starts_with(prefix),
            None => p == interface,
        })
}

fn networkd(files: &Files, interface: &str, gateway: IpAddr) -> Option<Persist> {
    let (path, text) = files.iter().find(|(path, text)| {
        path.starts_with("/etc/systemd/network/")
            && path.ends_with(".network")
            && ini_keys(text, "[Match]")
                .iter()
                .any(|(_, k, v)| *k == "Name" && name_matches(v, interface))
    })?;
    let has_gateway = ini_keys(text, "[Network]")
        .iter()
        .any(|(_, k, _)| *k == "Gateway");
    let e = if has_gateway {
        // A drop-in would add a second gateway: change the one that is there.
        edit(
            files,
            path,
            set_ini(text, "[Network]", "Gateway", &gateway.to_string()),
        )
    } else {
        let dropin = format!("{path}.d/natgw-gateway.conf");
        edit(files, &dropin, format!("# Written by natgw node persist: default route through the NAT headnode.\n[Network]\nGateway={gateway}\n"))
    };
    Some(Persist {
        manager: Some(Manager::SystemdNetworkd),
        edits: vec![e],
        notes: vec!["apply with: networkctl reload".into()],
    })
}

fn network_manager(files: &Files, interface: &str, gateway: IpAddr) -> Option<Persist> {
    let (path, text) = files.iter().find(|(path, text)| {
        path.starts_with("/etc/NetworkManager/system-connections/")
            && ini_keys(text, "[connection]")
                .iter()
                .any(|(_, k, v)| *k == "interface-name" && *v == interface)
    })?;
    let e = edit(
        files,
        path,
        set_ini(text, "[ipv4]", "gateway", &gateway.to_string()),
    );
    Some(Persist {
        manager: Some(Manager::NetworkManager),
        edits: vec![e],
        notes: vec![
            "apply with: nmcli connection reload && nmcli device reapply ".to_string() + interface,
        ],
    })
}

fn ifupdown(files: &Files, interface: &str, gateway: IpAddr) -> Option<Persist> {
    let stanza = format!("iface {interface} inet ");
    let (path, text) = files.iter().find(|(path, text)| {
        (path.as_str() == "/etc/network/interfaces"
            || path.starts_with("/etc/network/interfaces.d/"))
            && text.lines().any(|l| l.trim_start().starts_with(&stanza))
    })?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&stanza))
        .expect("found above");
    if !lines[start].trim_end().ends_with("static") {
        return Some(Persist {
            manager: Some(Manager::Ifupdown),
            edits: Vec::new(),
            notes: vec![format!("{path}: `{}` is not static, so its gateway comes from DHCP; point the DHCP server's router option at {gateway}", lines[start].trim())],
        });
    }
    let stanza_keywords = [
        "iface ",
        "auto ",
        "allow-",
        "mapping ",
        "source ",
        "source-directory ",
    ];
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            stanza_keywords
                .iter()
                .any(|k| l.trim_start().starts_with(k))
        })
        .map_or(lines.len(), |i| start + 1 + i);
    let line = format!("    gateway {gateway}");
    match (start + 1..end).find(|i| lines[*i].trim_start().starts_with("gateway ")) {
        Some(i) => lines[i] = line,
        None => lines.insert(start + 1, line),
    }
    let e = edit(files, path, lines.join("\n") + "\n");
    Some(Persist {
        manager: Some(Manager::Ifupdown),
        edits: vec![e],
        notes: vec![format!(
            "apply with: ifdown {interface} && ifup {interface} (or at the next boot)"
        )],
    })
}

fn sysconfig(files: &Files, gateway: IpAddr) -> Option<Persist> {
    let path = "/etc/sysconfig/network";
    let text = files.get(path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let line = format!("GATEWAY={gateway}");
    match lines
        .iter()
        .position(|l| l.trim_start().starts_with("GATEWAY="))
    {
        Some(i) => lines[i] = line,
        None => lines.push(line),
    }
    let e = edit(files, path, lines.join("\n") + "\n");
    Some(Persist {
        manager: Some(Manager::Sysconfig),
        edits: vec![e],
        notes: vec!["apply with: systemctl restart network (or at the next boot)".into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        entries
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    const GW: &str = "10.0.0.1";

    fn gw() -> IpAddr {
        GW.parse().unwrap()
    }

    #[test]
    fn networkd_gets_a_drop_in_or_its_gateway_changed() {
        let f = files(&[(
            "/etc/systemd/network/10-lan.network",
            "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.11/24\n",
        )]);
        let p = plan(&f, "eth0", gw());
        assert_eq!(p.manager, Some(Manager::SystemdNetworkd));
        assert_eq!(
            p.edits[0].path,
            "/etc/systemd/network/10-lan.network.d/natgw-gateway.conf"
        );
        assert!(p.edits[0].after.ends_with("[Network]\nGateway=10.0.0.1\n"));
        assert_eq!(p.edits[0].before, None);

        let f = files(&[(
            "/etc/systemd/network/10-lan.network",
            "[Match]\nName=en*\n\n[Network]\nAddress=10.0.0.11/24\nGateway=10.0.0.254\n",
        )]);
        let p = plan(&f, "enp1s0", gw());
        assert_eq!(p.edits[0].path, "/etc/systemd/network/10-lan.network");
        assert_eq!(
            p.edits[0].after,
            "[Match]\nName=en*\n\n[Network]\nAddress=10.0.0.11/24\nGateway=10.0.0.1\n"
        );
    }

    #[test]
    fn network_manager_keyfile_gets_the_gateway() {
        let text = "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n\n[ipv4]\naddress1=10.0.0.11/24\nmethod=manual\n";
        let p = plan(
            &files(&[(
                "/etc/NetworkManager/system-connections/lan.nmconnection",
                text,
            )]),
            "eth0",
            gw(),
        );
        assert_eq!(p.manager, Some(Manager::NetworkManager));
        assert!(
            p.edits[0]
                .after
                .contains("[ipv4]\ngateway=10.0.0.1\naddress1=10.0.0.11/24"),
            "{}",
            p.edits[0].after
        );
    }

    #[test]
    fn ifupdown_static_stanza_gets_a_gateway_line() {
        let text = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address 10.0.0.11/24\n\nauto eth1\niface eth1 inet dhcp\n";
        let p = plan(&files(&[("/etc/network/interfaces", text)]), "eth0", gw());
        assert_eq!(p.manager, Some(Manager::Ifupdown));
        assert_eq!(p.edits[0].after, "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    gateway 10.0.0.1\n    address 10.0.0.11/24\n\nauto eth1\niface eth1 inet dhcp\n");
        let again = plan(
            &files(&[("/etc/network/interfaces", &p.edits[0].after)]),
            "eth0",
            gw(),
        );
        assert_eq!(again.edits[0].after, p.edits[0].after, "idempotent");
        let dhcp = plan(&files(&[("/etc/network/interfaces", text)]), "eth1", gw());
        assert!(dhcp.edits.is_empty() && dhcp.notes[0].contains("DHCP"));
    }

    #[test]
    fn sysconfig_gateway_line_and_nothing_found() {
        let p = plan(
            &files(&[(
                "/etc/sysconfig/network",
                "NETWORKING=yes\nGATEWAY=10.0.0.254\n",
            )]),
            "eth0",
            gw(),
        );
        assert_eq!(p.edits[0].after, "NETWORKING=yes\nGATEWAY=10.0.0.1\n");
        let none = plan(&Files::new(), "eth0", gw());
        assert_eq!(none.manager, None);
        assert!(none
            .notes
            .iter()
            .any(|n| n.contains("GATEWAY=10.0.0.1 in /etc/sysconfig/network")));
    }
}
