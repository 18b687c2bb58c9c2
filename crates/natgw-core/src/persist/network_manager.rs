//! NetworkManager keyfiles: the profile to edit is the one active on the device
//! (`/run/NetworkManager/devices/IFINDEX`), else the one NetworkManager would
//! autoconnect (highest `autoconnect-priority`, then most recently used). Any file name
//! is a keyfile except hidden files and backups. libnm rejects a gateway without
//! addresses, so DHCP and address-less profiles are refused, not edited.

use std::net::Ipv4Addr;

use super::text::{key_value, section, Text};
use super::{children, edit, is_backup, Files, Found, Interface, Manager};

const DIRS: [&str; 3] = [
    "/etc/NetworkManager/system-connections",
    "/run/NetworkManager/system-connections",
    "/usr/lib/NetworkManager/system-connections",
];

struct Profile<'a> {
    path: &'a str,
    text: &'a str,
}

impl Profile<'_> {
    fn get(&self, section_name: &str, key: &str) -> Option<&str> {
        let mut current = "";
        let mut found = None;
        for line in self.text.lines() {
            if let Some(s) = section(line) {
                current = s;
            } else if current == section_name {
                if let Some((k, v)) = key_value(line) {
                    if k == key {
                        found = Some(v);
                    }
                }
            }
        }
        found
    }

    /// Whether the profile can run on this interface at all.
    fn fits(&self, interface: &Interface) -> bool {
        if self
            .get("connection", "interface-name")
            .is_some_and(|n| n != interface.name)
        {
            return false;
        }
        let mac = self
            .get("ethernet", "mac-address")
            .or(self.get("802-3-ethernet", "mac-address"));
        match (mac, interface.mac.as_deref()) {
            (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
            (Some(_), None) => false,
            (None, _) => {
                self.get("connection", "interface-name").is_some()
                    || matches!(
                        self.get("connection", "type"),
                        Some("ethernet" | "802-3-ethernet")
                    )
            }
        }
    }

    fn autoconnect(&self) -> bool {
        !matches!(
            self.get("connection", "autoconnect"),
            Some("false" | "no" | "0")
        )
    }

    fn number(&self, key: &str) -> i64 {
        self.get("connection", key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn profiles(files: &Files) -> Vec<Profile<'_>> {
    DIRS.iter()
        .flat_map(|dir| children(files, dir))
        .filter(|(name, _)| !is_backup(name))
        .map(|(_, path)| Profile {
            path,
            text: &files[path],
        })
        .filter(|p| p.get("connection", "type").is_some())
        .collect()
}

/// The profile NetworkManager has active on the device, by its device state file.
fn active<'a>(files: &Files, profiles: &'a [Profile<'a>], index: u32) -> Option<&'a Profile<'a>> {
    let state = files.get(&format!("/run/NetworkManager/devices/{index}"))?;
    let device = Profile {
        path: "",
        text: state,
    };
    let uuid = device.get("device", "connection-uuid")?;
    profiles
        .iter()
        .find(|p| p.get("connection", "uuid") == Some(uuid))
}

pub(super) fn plan(files: &Files, interface: &Interface, gateway: Ipv4Addr) -> Option<Found> {
    let all = profiles(files);
    let profile = active(files, &all, interface.index).or_else(|| {
        all.iter()
            .filter(|p| p.fits(interface) && p.autoconnect())
            .max_by_key(|p| (p.number("autoconnect-priority"), p.number("timestamp")))
    })?;
    let id = profile.get("connection", "id").unwrap_or(profile.path);
    let refuse = |why: String| {
        Some(Found {
            manager: Manager::NetworkManager,
            result: Err(why),
            notes: Vec::new(),
        })
    };
    let method = profile.get("ipv4", "method").unwrap_or("auto");
    if method != "manual" {
        return refuse(format!("profile \"{id}\" ({}) has ipv4.method={method}: its gateway comes from DHCP or is not used; point the DHCP server's router option at {gateway}, or make the profile manual with an address (nmcli connection modify \"{id}\" ipv4.method manual ipv4.addresses ADDR/LEN ipv4.gateway {gateway})", profile.path));
    }
    let mut text = Text::parse(profile.text);
    let mut current = String::new();
    let mut addresses = 0;
    let mut gateway_line = None;
    let mut ipv4_line = None;
    for (i, line) in text.lines.iter_mut().enumerate() {
        if let Some(s) = section(line) {
            current = s.to_string();
            if current == "ipv4" {
                ipv4_line = Some(i);
            }
            continue;
        }
        if current != "ipv4" {
            continue;
        }
        let Some((key, value)) = key_value(line) else {
            continue;
        };
        let numbered = |prefix: &str| {
            key.strip_prefix(prefix)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        };
        if numbered("address") || numbered("addresses") {
            addresses += 1;
            // `ADDR/LEN,GATEWAY` carries a gateway too: keep one, in `gateway=`.
            if let Some((address, _)) = value.split_once(',') {
                *line = format!("{key}={address}");
            }
        } else if key == "gateway" {
            gateway_line = Some(i);
        }
    }
    if addresses == 0 {
        return refuse(format!("profile \"{id}\" ({}) has no IPv4 address; NetworkManager rejects a gateway without one: add the address first (nmcli connection modify \"{id}\" ipv4.addresses ADDR/LEN)", profile.path));
    }
    let line = format!("gateway={gateway}");
    match (gateway_line, ipv4_line) {
        (Some(i), _) => text.lines[i] = line,
        (None, Some(i)) => text.lines.insert(i + 1, line),
        (None, None) => unreachable!("an address was found in [ipv4]"),
    }
    let notes = if profile.path.starts_with("/run/") {
        vec![format!("\"{id}\" is an in-memory profile (under /run): the change lasts until reboot; make it persistent with nmcli connection modify \"{id}\" connection.autoconnect yes")]
    } else {
        Vec::new()
    };
    let mut notes = notes;
    notes.push(format!(
        "apply with: nmcli connection reload && nmcli device reapply {}",
        interface.name
    ));
    Some(Found {
        manager: Manager::NetworkManager,
        result: Ok(vec![edit(files, profile.path, text.render())]),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{eth, files, only, GW};
    use super::super::{plan, Manager};

    const DIR: &str = "/etc/NetworkManager/system-connections";

    fn keyfile(id: &str, extra: &str) -> String {
        format!("[connection]\nid={id}\nuuid=uuid-{id}\ntype=ethernet\ninterface-name=eth0\n{extra}\n[ipv4]\naddress1=10.0.0.11/24\nmethod=manual\n")
    }

    #[test]
    fn keyfile_gets_the_gateway() {
        let f = files(&[(&format!("{DIR}/lan.nmconnection"), &keyfile("lan", ""))]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.manager, Some(Manager::NetworkManager));
        assert!(
            only(&p).contains("[ipv4]\ngateway=10.0.0.1\naddress1=10.0.0.11/24"),
            "{}",
            only(&p)
        );
    }

    #[test]
    fn the_active_profile_or_the_one_that_would_autoconnect_is_edited() {
        let a = format!("{DIR}/a-old.nmconnection");
        let b = format!("{DIR}/b-preferred");
        let c = format!("{DIR}/c-off.nmconnection");
        let (ka, kb, kc) = (
            keyfile("a", "timestamp=100"),
            keyfile("b", "autoconnect-priority=10"),
            keyfile("c", "autoconnect=false\nautoconnect-priority=50"),
        );
        let mut f = files(&[
            (&a, &ka),
            (&b, &kb),
            (&c, &kc),
            (&format!("{DIR}/.b-preferred.swp"), &kc),
        ]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(
            p.edits[0].path, b,
            "highest priority, no .nmconnection suffix needed"
        );
        f.insert(
            "/run/NetworkManager/devices/2".into(),
            "[device]\nmanaged=true\nconnection-uuid=uuid-c\n".into(),
        );
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.edits[0].path, c, "the active one");
    }

    #[test]
    fn dhcp_and_address_less_profiles_are_refused() {
        let auto =
            "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n[ipv4]\nmethod=auto\n";
        let p = plan(
            &files(&[(&format!("{DIR}/lan.nmconnection"), auto)]),
            &eth("eth0"),
            GW,
        );
        assert!(
            p.edits.is_empty() && p.refused.as_deref().unwrap().contains("method=auto"),
            "{p:#?}"
        );
        let bare =
            "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n[ipv4]\nmethod=manual\n";
        let p = plan(
            &files(&[(&format!("{DIR}/lan.nmconnection"), bare)]),
            &eth("eth0"),
            GW,
        );
        assert!(
            p.refused.as_deref().unwrap().contains("no IPv4 address"),
            "{p:#?}"
        );
    }

    #[test]
    fn a_gateway_inside_an_address_line_is_moved_to_the_gateway_key() {
        let text = "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n[ipv4]\naddress1=10.0.0.11/24,10.0.0.254\nmethod=manual\n";
        let p = plan(
            &files(&[(&format!("{DIR}/lan.nmconnection"), text)]),
            &eth("eth0"),
            GW,
        );
        assert_eq!(only(&p), "[connection]\nid=lan\ntype=ethernet\ninterface-name=eth0\n[ipv4]\ngateway=10.0.0.1\naddress1=10.0.0.11/24\nmethod=manual\n");
    }
}
