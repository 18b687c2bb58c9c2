//! RHEL-style initscripts (and NetworkManager's ifcfg-rh plugin): `GATEWAY=` in
//! `network-scripts/ifcfg-IFACE` takes precedence over the one in
//! `/etc/sysconfig/network`, so the interface's file is where it is set when there is
//! one.

use std::net::Ipv4Addr;

use super::text::{key_value, Text};
use super::{children, edit, is_backup, Files, Found, Manager};

const SCRIPTS: &str = "/etc/sysconfig/network-scripts";
const GLOBAL: &str = "/etc/sysconfig/network";

fn unquote(value: &str) -> &str {
    value.trim_matches(|c| c == '"' || c == '\'')
}

/// The ifcfg file of `interface`: `DEVICE=` names it, or the file name does.
fn ifcfg<'a>(files: &'a Files, interface: &str) -> Option<&'a str> {
    let candidates: Vec<(&str, &str)> = children(files, SCRIPTS)
        .into_iter()
        .filter(|(name, _)| name.starts_with("ifcfg-") && !is_backup(name))
        .collect();
    let device = |path: &str| {
        files[path]
            .lines()
            .filter_map(key_value)
            .find(|(k, _)| *k == "DEVICE")
            .map(|(_, v)| unquote(v).to_string())
    };
    candidates
        .iter()
        .find(|(_, path)| device(path).as_deref() == Some(interface))
        .or_else(|| {
            candidates.iter().find(|(name, path)| {
                *name == format!("ifcfg-{interface}") && device(path).is_none()
            })
        })
        .map(|(_, path)| *path)
}

/// `text` with `GATEWAY=` set (replacing every existing one) or appended.
fn set_gateway(text: &str, gateway: Ipv4Addr) -> String {
    let mut t = Text::parse(text);
    let mut seen = false;
    t.lines.retain_mut(|line| {
        if key_value(line).is_some_and(|(k, _)| k == "GATEWAY") {
            if seen {
                return false;
            }
            seen = true;
            if key_value(line).map(|(_, v)| unquote(v)) != Some(&gateway.to_string()) {
                *line = format!("GATEWAY={gateway}");
            }
        }
        true
    });
    if !seen {
        t.lines.push(format!("GATEWAY={gateway}"));
    }
    t.render()
}

pub(super) fn plan(files: &Files, interface: &str, gateway: Ipv4Addr) -> Option<Found> {
    let notes = vec!["apply with: nmcli connection reload (NetworkManager) or ifdown/ifup of the interface (initscripts), or at the next boot".to_string()];
    if let Some(path) = ifcfg(files, interface) {
        let bootproto = files[path]
            .lines()
            .filter_map(key_value)
            .find(|(k, _)| *k == "BOOTPROTO")
            .map(|(_, v)| unquote(v).to_ascii_lowercase());
        if matches!(bootproto.as_deref(), Some("dhcp" | "bootp")) {
            return Some(Found {
                manager: Manager::Sysconfig,
                result: Err(format!("{path} has BOOTPROTO=dhcp: the gateway comes from DHCP; point the DHCP server's router option at {gateway}, or make it BOOTPROTO=none with IPADDR/PREFIX")),
                notes: Vec::new(),
            });
        }
        return Some(Found {
            manager: Manager::Sysconfig,
            result: Ok(vec![edit(files, path, set_gateway(&files[path], gateway))]),
            notes,
        });
    }
    let text = files.get(GLOBAL)?;
    Some(Found {
        manager: Manager::Sysconfig,
        result: Ok(vec![edit(files, GLOBAL, set_gateway(text, gateway))]),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::tests::{eth, files, only, GW};

    #[test]
    fn global_gateway_line_when_there_is_no_ifcfg() {
        let f = files(&[(
            "/etc/sysconfig/network",
            "NETWORKING=yes\nGATEWAY=10.0.0.254\n",
        )]);
        assert_eq!(
            only(&plan(&f, &eth("eth0"), GW)),
            "NETWORKING=yes\nGATEWAY=10.0.0.1\n"
        );
    }

    #[test]
    fn the_interfaces_ifcfg_wins_over_the_global_file() {
        let f = files(&[
            (
                "/etc/sysconfig/network",
                "NETWORKING=yes\nGATEWAY=10.0.0.254\n",
            ),
            (
                "/etc/sysconfig/network-scripts/ifcfg-eth0.bak",
                "DEVICE=eth0\nGATEWAY=10.9.9.9\n",
            ),
            (
                "/etc/sysconfig/network-scripts/ifcfg-lan",
                "DEVICE=\"eth0\"\nBOOTPROTO=none\nIPADDR=10.0.0.11\nGATEWAY=\"10.0.0.254\"\n",
            ),
        ]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.edits[0].path, "/etc/sysconfig/network-scripts/ifcfg-lan");
        assert_eq!(
            only(&p),
            "DEVICE=\"eth0\"\nBOOTPROTO=none\nIPADDR=10.0.0.11\nGATEWAY=10.0.0.1\n"
        );
        let dhcp = files(&[(
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "DEVICE=eth0\nBOOTPROTO=dhcp\n",
        )]);
        assert!(plan(&dhcp, &eth("eth0"), GW)
            .refused
            .unwrap()
            .contains("BOOTPROTO=dhcp"));
    }
}
