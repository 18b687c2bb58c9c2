//! `natgw node persist`'s ifupdown edits checked by ifupdown's own parser: the edited
//! files are written to a scratch directory and read back with `ifquery -i`.
//! `NATGW_IFQUERY=/path/to/ifquery` picks the binary (Debian package `ifupdown`);
//! without one the test says it was skipped.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use natgw_core::persist::{plan, Files, Interface};

fn ifquery() -> Option<PathBuf> {
    std::env::var_os("NATGW_IFQUERY")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/sbin/ifquery", "/sbin/ifquery"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
}

/// `ifquery`'s `gateway:` lines for `iface` with the interfaces file under `root`.
fn gateways(tool: &Path, root: &Path, iface: &str) -> Vec<String> {
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new(tool)
        .arg("-i")
        .arg(root.join("etc/network/interfaces"))
        .arg("--state-dir")
        .arg(&state)
        .arg(iface)
        .output()
        .expect("run ifquery");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("gateway: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn ifquery_reads_one_gateway_where_natgw_wrote_it() {
    let Some(tool) = ifquery() else {
        // scripts/test.sh unpacks ifupdown for CI: there the check must run.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "under CI the ifquery check must run (scripts/test.sh unpacks ifupdown)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED ifquery_reads_one_gateway_where_natgw_wrote_it: no ifquery (apt-get install ifupdown, or NATGW_IFQUERY=...)"
        );
        return;
    };
    let root = std::env::temp_dir().join(format!("natgw-ifquery-{}", std::process::id()));
    let mut files: Files = [
        (
            "/etc/network/interfaces",
            "auto lo\niface lo inet loopback\nsource interfaces.d/*\nsource-directory more\n",
        ),
        (
            "/etc/network/interfaces.d/eth0",
            "auto\teth0\niface\teth0 inet static\n\taddress 10.0.0.11/24\n\tgateway\t10.0.0.254\n\tgateway 10.0.0.253\nauto\teth1\niface\teth1 inet static\n\taddress 10.77.0.5/24\n\tgateway\t10.77.0.254\n",
        ),
        (
            "/etc/network/more/eth2",
            "iface eth2 inet static\r\n address 10.0.0.12/24\r\n",
        ),
        (
            "/etc/network/more/.eth2.swp",
            "iface eth2 inet static\n address 10.9.9.9/24\n gateway 10.9.9.1\n",
        ),
    ]
    .iter()
    .map(|(p, t)| (p.to_string(), t.to_string()))
    .collect();
    let gateway = Ipv4Addr::new(10, 0, 0, 1);
    for name in ["eth0", "eth2"] {
        let interface = Interface {
            name: name.into(),
            index: 2,
            mac: None,
            kind: "ether".into(),
        };
        for edit in plan(&files, &interface, gateway).edits {
            files.insert(edit.path, edit.after);
        }
    }
    for (path, text) in &files {
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, text).unwrap();
    }
    assert_eq!(gateways(&tool, &root, "eth0"), ["10.0.0.1"]);
    assert_eq!(
        gateways(&tool, &root, "eth1"),
        ["10.77.0.254"],
        "another interface's gateway untouched"
    );
    assert_eq!(
        gateways(&tool, &root, "eth2"),
        ["10.0.0.1"],
        "CRLF file, backup ignored"
    );
    let _ = std::fs::remove_dir_all(root);
}
