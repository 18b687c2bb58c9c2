//! The mapping log (`natgw run --log-mappings FILE`): one JSON line per translation
//! created and ended — time, protocol, private and public address and port, never the
//! destination (RFC 6888 REQ-12). Root-only (0600), opened without following a
//! symlink, and bounded: past `max_bytes` the file is renamed to FILE.1 (FILE.1 to
//! FILE.2, ...; the oldest beyond `KEEP` is dropped) and a new one started.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use natgw_core::mapping::{MappingEvent, MappingRecord};
use tracing::warn;

/// Where `natgw trace` looks by default (`--log-mappings` takes any path).
pub const DEFAULT_PATH: &str = "/var/log/natgw/mappings.jsonl";
/// Rotated files kept besides the current one.
pub const KEEP: usize = 4;
/// Size of one file before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

pub struct MappingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    /// A write error is logged once, not per event.
    failing: bool,
}

impl MappingLog {
    pub fn open(path: &Path, max_bytes: u64) -> anyhow::Result<MappingLog> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(MappingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            failing: false,
        })
    }

    /// A conntrack event, at the time it is read.
    pub fn record(&mut self, event: &MappingEvent) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.write_record(&MappingRecord::of(event, now));
    }

    /// One line (the eBPF plane's events carry their own time).
    pub fn write_record(&mut self, record: &MappingRecord) {
        let mut line = serde_json::to_string(record).expect("a mapping record serialises");
        line.push('\n');
        match self.write(line.as_bytes()) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(path = %self.path.display(), error = %format!("{e:#}"), "cannot write the mapping log");
            }
            Err(_) => {}
        }
    }

    fn write(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line).context("write")?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1)).context("rotate")?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// FILE.N
pub fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log files from oldest to newest (FILE.KEEP ... FILE.1, FILE), those that exist.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = (1..=KEEP).rev().map(|n| numbered(path, n)).collect();
    all.push(path.to_path_buf());
    all.into_iter().filter(|p| p.exists()).collect()
}

/// Appends to a regular file, created 0600; an existing one is made 0600 too.
fn open_append(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open the mapping log {}", path.display()))?;
    let meta = file.metadata().context("mapping log metadata")?;
    if !meta.is_file() {
        bail!("the mapping log {} is not a regular file", path.display());
    }
    if meta.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} root-only", path.display()))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgw_core::mapping::{Protocol, Translation};

    fn event(port: u16) -> MappingEvent {
        MappingEvent::Created(Translation {
            protocol: Protocol::Udp,
            private: format!("10.0.0.11:{port}").parse().unwrap(),
            destination: "198.51.100.10:7000".parse().unwrap(),
            public: format!("203.0.113.1:{port}").parse().unwrap(),
        })
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("natgw-maplog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_are_private_root_only_and_rotated() {
        let dir = scratch("rotate");
        let path = dir.join("mappings.jsonl");
        let mut log = MappingLog::open(&path, 400).unwrap();
        for port in 0..40 {
            log.record(&event(5000 + port));
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let files = files(&path);
        assert_eq!(files.len(), KEEP + 1, "{files:?}");
        let mut total = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.len() <= 400, "{f:?} is {} bytes", text.len());
            assert!(!text.contains("198.51.100.10"), "a destination was logged");
            total += text.lines().count();
        }
        assert!(total < 40, "old files beyond KEEP are dropped");
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains("\"private\":\"10.0.0.11:5039\""));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = scratch("symlink");
        let target = dir.join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let path = dir.join("mappings.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(MappingLog::open(&path, 1000).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
