//! natgw's nftables table through the `nft` tool. natgw owns exactly `table inet natgw`
//! and replaces it in one atomic batch (add; delete; add with full contents), never
//! flushing anything else.
//!
//! Writing uses nft's text syntax: the ruleset is rendered from typed values only
//! (addresses, prefixes, and interface names restricted to plain characters by
//! `IfName`), so no input can become syntax, and the text stays readable in `plan`.
//! Reading back uses `nft -j`, checked against the `nftables` crate's schema, so that
//! drift is judged on the rules themselves, not on how one nft version prints them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use natgw_core::observed::LiveTable;
use natgw_core::{TABLE_FAMILY, TABLE_NAME};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft tool is not installed; install it with: apt-get install nftables (Debian/Ubuntu) or dnf install nftables (RHEL/Fedora)")]
    Missing,
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("cannot parse nft JSON output")]
    Json(#[source] serde_json::Error),
    #[error("unexpected nft JSON output: {0}")]
    Schema(String),
}

/// The `nft` binary, if installed (`$NATGW_NFT` when set).
pub fn binary() -> Option<PathBuf> {
    crate::tools::find("nft", "NATGW_NFT")
}

fn run(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, NftError> {
    let nft = binary().ok_or(NftError::Missing)?;
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `table inet natgw`, as nft names it.
fn table() -> String {
    format!("table {TABLE_FAMILY} {TABLE_NAME}")
}

/// Runs a `list` command on natgw's table; `None` when the table does not exist.
fn list_own(args: &[&str], what: &str) -> Result<Option<String>, NftError> {
    let mut all = args.to_vec();
    all.extend(["list", "table", TABLE_FAMILY, TABLE_NAME]);
    match run(&all, None, what) {
        Ok(listing) => Ok(Some(listing)),
        Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `nft -s list table inet natgw` (text nft can load again), or `None`.
pub fn list_table() -> Result<Option<String>, NftError> {
    list_own(&["-s"], "list table")
}

/// natgw's table read back as JSON: its digest and fingerprint, or `None`.
pub fn live_table() -> Result<Option<LiveTable>, NftError> {
    list_own(&["-j"], "list table (JSON)")?
        .map(|json| live_table_of(&json))
        .transpose()
}

/// Digest and fingerprint of a `nft -j list table` document. The fingerprint hashes
/// the document without what changes by itself (handles, counter values, nft's
/// metainfo); it must also parse with the `nftables` schema, and a table natgw cannot
/// read gets a fingerprint no installed table has (so it reads as drift).
pub fn live_table_of(json: &str) -> Result<LiveTable, NftError> {
    let mut doc: serde_json::Value = serde_json::from_str(json).map_err(NftError::Json)?;
    let objects = doc
        .get_mut("nftables")
        .and_then(|o| o.as_array_mut())
        .ok_or_else(|| NftError::Schema("no `nftables` array".into()))?;
    objects.retain(|o| o.get("metainfo").is_none());
    objects.iter_mut().for_each(strip_volatile);
    let canonical = doc.to_string();
    let typed = serde_json::from_value::<nftables::schema::Nftables>(doc).is_ok();
    let hash: String = Sha256::digest(canonical.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(LiveTable {
        fingerprint: if typed {
            hash
        } else {
            format!("unreadable-{hash}")
        },
    })
}

/// Removes handles and counter values, recursively.
fn strip_volatile(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            if let Some(serde_json::Value::Object(counter)) = map.get_mut("counter") {
                counter.remove("packets");
                counter.remove("bytes");
            }
            map.values_mut().for_each(strip_volatile);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// `nft -s list ruleset`: every table, for diagnosis.
pub fn list_ruleset() -> Result<String, NftError> {
    run(&["-s", "list", "ruleset"], None, "list ruleset")
}

/// The batch that replaces the table whatever its current state.
fn replace_batch(ruleset: &str) -> String {
    let table = table();
    format!("{table} {{}}\ndelete {table}\n{ruleset}")
}

/// `nft -c`: the kernel validates the batch without committing it. Fails when the
/// kernel lacks nftables NAT support, before anything changed.
pub fn check(ruleset: &str) -> Result<(), NftError> {
    run(
        &["-c", "-f", "-"],
        Some(&replace_batch(ruleset)),
        "check of the ruleset",
    )
    .map(drop)
}

/// Whether the kernel can do nftables NAT: a check-only transaction of a minimal NAT
/// table (nothing is committed).
pub fn check_nat_support() -> Result<(), NftError> {
    let probe = format!("{} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta l4proto udp masquerade\n\t}}\n}}\n", table());
    check(&probe)
}

/// Replaces the table with `ruleset` in one transaction.
pub fn replace(ruleset: &str) -> Result<(), NftError> {
    run(
        &["-f", "-"],
        Some(&replace_batch(ruleset)),
        "load of the table",
    )
    .map(drop)
}

/// `nft delete table inet natgw`; a missing table is success.
pub fn delete_table() -> Result<(), NftError> {
    let table = table();
    run(
        &["-f", "-"],
        Some(&format!("{table} {{}}\ndelete {table}\n")),
        "delete of the table",
    )
    .map(drop)
}

/// Puts back a table as it was listed earlier, or removes it when there was none.
pub fn restore(listing: Option<&str>) -> Result<(), NftError> {
    match listing {
        Some(listing) => replace(listing),
        None => delete_table(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Named counters of table inet natgw (`nft -j list counters table inet natgw`).
pub fn counters() -> Result<Vec<Counter>, NftError> {
    let json = run(
        &["-j", "list", "counters", "table", TABLE_FAMILY, TABLE_NAME],
        None,
        "list counters",
    )?;
    parse_counters(&json)
}

fn parse_counters(json: &str) -> Result<Vec<Counter>, NftError> {
    #[derive(Deserialize)]
    struct Listing {
        nftables: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        counter: Option<RawCounter>,
    }
    // nft prints counter values as 64-bit numbers; the `nftables` crate's Counter holds
    // u32 and fails past 4 GiB, so counters are read with a struct of their own.
    #[derive(Deserialize)]
    struct RawCounter {
        name: String,
        packets: u64,
        bytes: u64,
    }
    let listing: Listing = serde_json::from_str(json).map_err(NftError::Json)?;
    Ok(listing
        .nftables
        .into_iter()
        .filter_map(|i| i.counter)
        .map(|c| Counter {
            name: c.name,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_as_nft_1_0_6_prints_them() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "outbound", "table": "natgw", "handle": 3, "packets": 12, "bytes": 3400}}, {"counter": {"family": "inet", "name": "dropped_invalid", "table": "natgw", "handle": 4, "comment": "invalid", "packets": 0, "bytes": 0}}]}"#;
        let counters = parse_counters(json).unwrap();
        assert_eq!(
            counters[0],
            Counter {
                name: "outbound".into(),
                packets: 12,
                bytes: 3400
            }
        );
        assert_eq!(counters.len(), 2);
    }

    #[test]
    fn replace_batch_is_add_delete_add() {
        let batch = replace_batch("table inet natgw {\n}\n");
        assert_eq!(
            batch,
            "table inet natgw {}\ndelete table inet natgw\ntable inet natgw {\n}\n"
        );
    }
}
