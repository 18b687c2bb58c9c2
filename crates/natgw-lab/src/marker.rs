//! What a lab made, so that cleanup removes exactly that: one marker file per lab
//! (`/run/natgw-lab/NAME`) naming the process that owns the lab and each namespace it
//! created with the namespace's nsfs inode. A namespace of the same name that is not
//! the one the lab created (another tool's, a later lab's) is never deleted.
//!
//! Format, one item per line: `owner PID START` (or `kept`), then `ns NAME INODE`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const DIR: &str = "/run/natgw-lab";

/// The process owning a lab: pid and start time (so a reused pid is not mistaken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    start: u64,
}

impl Owner {
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    pub fn of(pid: u32) -> Option<Owner> {
        start_time(pid).map(|start| Owner { pid, start })
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of /proc/PID/stat, after the parenthesised command name.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marker {
    /// `None`: the lab was kept (`--keep`) and nobody runs it.
    pub owner: Option<Owner>,
    pub namespaces: Vec<(String, u64)>,
}

pub fn path(lab: &str) -> PathBuf {
    Path::new(DIR).join(lab)
}

impl Marker {
    pub fn load(lab: &str) -> Option<Marker> {
        let text = std::fs::read_to_string(path(lab)).ok()?;
        let mut marker = Marker::default();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["owner", pid, start] => {
                    marker.owner = Some(Owner {
                        pid: pid.parse().ok()?,
                        start: start.parse().ok()?,
                    })
                }
                ["ns", name, inode] => marker
                    .namespaces
                    .push((name.to_string(), inode.parse().ok()?)),
                _ => {}
            }
        }
        Some(marker)
    }

    /// Writes the marker atomically (temporary file, rename), root-only.
    pub fn save(&self, lab: &str) -> std::io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(DIR) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let mut text = match self.owner {
            Some(o) => format!("owner {} {}\n", o.pid, o.start),
            None => "kept\n".to_string(),
        };
        for (name, inode) in &self.namespaces {
            text += &format!("ns {name} {inode}\n");
        }
        let target = path(lab);
        let tmp = Path::new(DIR).join(format!(".{lab}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)
    }

    pub fn remove(lab: &str) {
        let _ = std::fs::remove_file(path(lab));
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// The nsfs inode of a named namespace (`/run/netns/NAME`), if it exists.
pub fn inode(ns: &str) -> Option<u64> {
    std::fs::metadata(Path::new("/run/netns").join(ns))
        .ok()
        .map(|m| m.ino())
}

/// Processes with a thread in the namespace of nsfs inode `inode`.
pub fn processes_in(inode: u64) -> Vec<i32> {
    let wanted = format!("net:[{inode}]");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let inside = std::fs::read_dir(entry.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_link(t.path().join("ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == wanted)
            });
        if inside {
            pids.push(pid);
        }
    }
    pids
}
