//! `natgw node persist`: the file changes that make a node's default route through the
//! headnode survive reboot, for the network manager the node uses. Pure: files in,
//! edits out; the binary reads and writes them.
//!
//! Each manager's module finds the file that manager actually applies to the interface
//! (its own precedence rules), and edits the gateway there without adding a second one.

mod diff;
mod glob;
mod ifupdown;
mod network_manager;
mod networkd;
mod sysconfig;
mod text;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

pub use diff::unified as unified_diff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    SystemdNetworkd,
    NetworkManager,
    Ifupdown,
    /// RHEL-style ifcfg files and /etc/sysconfig/network.
    Sysconfig,
}

/// Directories the binary reads (with their subdirectories, two levels deep) before
/// calling `plan`; nothing outside them is consulted.
pub const READ_DIRS: [&str; 12] = [
    "/etc/network",
    "/etc/systemd/network",
    "/run/systemd/network",
    "/usr/local/lib/systemd/network",
    "/usr/lib/systemd/network",
    "/lib/systemd/network",
    "/etc/NetworkManager/system-connections",
    "/run/NetworkManager/system-connections",
    "/usr/lib/NetworkManager/system-connections",
    // NetworkManager's record of which profile is active on which device.
    "/run/NetworkManager/devices",
    "/etc/sysconfig",
    "/etc/sysconfig/network-scripts",
];

/// The interface the gateway is reached on, as the network managers match it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: Option<String>,
    /// networkd's `Type=` (`ether`, `wlan`, `bond`, ...).
    pub kind: String,
}

/// One file to write: its path under the root, old content (none: new file), new
/// content. Only the diff is serialised: the contents can hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edit {
    pub path: String,
    #[serde(skip)]
    pub before: Option<String>,
    #[serde(skip)]
    pub after: String,
    /// Where a new file takes its mode and owner from (a vendor file copied to /etc).
    #[serde(skip)]
    pub like: Option<String>,
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Persist {
    pub manager: Option<Manager>,
    pub edits: Vec<Edit>,
    /// The manager's configuration already says exactly this: nothing to write.
    pub up_to_date: bool,
    /// Why natgw will not edit the configuration it found (exit 1, nothing written).
    pub refused: Option<String>,
    /// What to run afterwards, or, with no manager found, what to add where.
    pub notes: Vec<String>,
}

/// The configuration files a node has, by absolute path, as the binary found them.
pub type Files = BTreeMap<String, String>;

/// What a manager module found: edits (possibly no-ops) or a refusal, plus notes.
pub(crate) struct Found {
    manager: Manager,
    result: Result<Vec<Edit>, String>,
    notes: Vec<String>,
}

pub fn plan(files: &Files, interface: &Interface, gateway: Ipv4Addr) -> Persist {
    let found = networkd::plan(files, interface, gateway)
        .or_else(|| network_manager::plan(files, interface, gateway))
        .or_else(|| ifupdown::plan(files, &interface.name, gateway))
        .or_else(|| sysconfig::plan(files, &interface.name, gateway));
    let Some(found) = found else {
        let name = &interface.name;
        return Persist {
            manager: None,
            edits: Vec::new(),
            up_to_date: false,
            refused: None,
            notes: vec![
                format!("no network configuration for {name} found; add the gateway where your system keeps it:"),
                format!("  systemd-networkd: Gateway={gateway} under [Network] in the .network file matching {name}"),
                format!("  NetworkManager:   nmcli connection modify CONNECTION ipv4.gateway {gateway}"),
                format!("  ifupdown:         gateway {gateway} in the `iface {name} inet static` stanza of /etc/network/interfaces"),
                format!("  RHEL-style:       GATEWAY={gateway} in /etc/sysconfig/network-scripts/ifcfg-{name}"),
            ],
        };
    };
    let (mut edits, refused) = match found.result {
        Ok(edits) => (edits, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let any = !edits.is_empty();
    edits.retain(|e| e.before.as_deref() != Some(e.after.as_str()));
    Persist {
        manager: Some(found.manager),
        up_to_date: any && edits.is_empty(),
        edits,
        refused,
        notes: found.notes,
    }
}

/// An edit of `path` (absent from `files`: a new file) to `after`.
pub(crate) fn edit(files: &Files, path: &str, after: String) -> Edit {
    let before = files.get(path).cloned();
    Edit {
        diff: diff::unified(path, before.as_deref(), &after),
        path: path.to_string(),
        before,
        after,
        like: None,
    }
}

/// The files directly in `dir`, as (name, path), sorted by name.
pub(crate) fn children<'a>(files: &'a Files, dir: &str) -> Vec<(&'a str, &'a str)> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    files
        .keys()
        .filter_map(|path| {
            let name = path.strip_prefix(&prefix)?;
            (!name.contains('/')).then_some((name, path.as_str()))
        })
        .collect()
}

/// Whether a manager would ignore this file name as an editor or package backup.
pub(crate) fn is_backup(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [
            ".swp", ".swpx", ".bak", ".orig", ".rej", ".tmp", ".rpmnew", ".rpmsave", ".rpmorig",
        ]
        .iter()
        .any(|s| name.ends_with(s))
        || name.contains(".dpkg-")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn files(entries: &[(&str, &str)]) -> Files {
        entries
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    pub fn eth(name: &str) -> Interface {
        Interface {
            name: name.into(),
            index: 2,
            mac: Some("52:54:00:12:34:56".into()),
            kind: "ether".into(),
        }
    }

    pub const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// The new content of the only file written.
    pub fn only(p: &Persist) -> &str {
        assert_eq!(p.edits.len(), 1, "{p:#?}");
        &p.edits[0].after
    }

    #[test]
    fn nothing_found_says_where_to_add_it() {
        let none = plan(&Files::new(), &eth("eth0"), GW);
        assert_eq!(none.manager, None);
        assert!(none
            .notes
            .iter()
            .any(|n| n.contains("GATEWAY=10.0.0.1 in /etc/sysconfig/network-scripts/ifcfg-eth0")));
    }

    #[test]
    fn a_rerun_that_changes_nothing_is_up_to_date_and_writes_nothing() {
        let f = files(&[(
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "DEVICE=eth0\nBOOTPROTO=none\nIPADDR=10.0.0.11\nPREFIX=24\nGATEWAY=10.0.0.1\n",
        )]);
        let p = plan(&f, &eth("eth0"), GW);
        assert!(p.up_to_date && p.edits.is_empty(), "{p:#?}");
    }

    #[test]
    fn serialised_edits_carry_the_diff_not_the_contents() {
        let f = files(&[(
            "/etc/NetworkManager/system-connections/wifi.nmconnection",
            "[connection]\nid=wifi\ntype=wifi\ninterface-name=eth0\n[wifi-security]\npsk=hunter2\n[ipv4]\nmethod=manual\naddress1=10.0.0.11/24\n",
        )]);
        let p = plan(&f, &eth("eth0"), GW);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("+gateway=10.0.0.1"), "{json}");
        assert!(!json.contains("hunter2"), "{json}");
    }
}
