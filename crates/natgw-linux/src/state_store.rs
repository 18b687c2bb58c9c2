//! natgw's records between commands, one file per network namespace, under /run
//! (gone after a reboot, exactly like the kernel state it describes). The namespace is
//! identified by its cookie (SO_NETNS_COOKIE), which the kernel never reuses while it
//! runs, unlike the inode of /proc/self/ns/net: a namespace created after another was
//! deleted can get the old inode, and with it a stale record. So two natgw instances in
//! two namespaces never share or clobber state.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use natgw_core::RecordedState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot identify this network namespace (SO_NETNS_COOKIE, Linux 5.14 or later)")]
    Namespace(#[source] std::io::Error),
    #[error("cannot {action} natgw state {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("natgw state {path} is corrupt; remove it after checking `natgw status`")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

const BASE: &str = "/run/natgw";

/// The gateway's state file in the current network namespace.
pub fn path() -> Result<PathBuf, StateError> {
    path_of(GATEWAY)
}

/// Record names: the gateway (`natgw up`) and the private node (`natgw node up`).
pub const GATEWAY: &str = "state.json";
pub const NODE: &str = "node.json";

fn path_of(name: &str) -> Result<PathBuf, StateError> {
    let cookie = netns_cookie().map_err(StateError::Namespace)?;
    Ok(PathBuf::from(BASE)
        .join(format!("netns-{cookie}"))
        .join(name))
}

/// The current network namespace's cookie, read from a throwaway socket.
fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // A wildcard bind works even with no interface up.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

pub fn load() -> Result<Option<RecordedState>, StateError> {
    load_named(GATEWAY)
}

pub fn save(state: &RecordedState) -> Result<(), StateError> {
    save_named(GATEWAY, state)
}

pub fn remove() -> Result<(), StateError> {
    remove_named(GATEWAY)
}

pub fn load_named<T: serde::de::DeserializeOwned>(name: &str) -> Result<Option<T>, StateError> {
    let path = path_of(name)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io("read", &path, source)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.display().to_string(),
            source,
        })
}

/// Writes a record atomically (temporary file, then rename).
pub fn save_named<T: serde::Serialize>(name: &str, state: &T) -> Result<(), StateError> {
    let path = path_of(name)?;
    let dir = path.parent().expect("state path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(&tmp, text).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("write", &path, e))
}

pub fn remove_named(name: &str) -> Result<(), StateError> {
    let path = path_of(name)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &path, e)),
        _ => {}
    }
    // Only succeeds once the namespace has no other record.
    let _ = std::fs::remove_dir(path.parent().expect("state path has a parent"));
    Ok(())
}

/// Removes every natgw record of the current network namespace: for whoever deletes
/// the namespace (the lab), since records of a dead namespace mean nothing.
pub fn remove_namespace_records() -> Result<(), StateError> {
    let dir = path_of(GATEWAY)?
        .parent()
        .expect("state path has a parent")
        .to_path_buf();
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir, e)),
        _ => Ok(()),
    }
}

fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> StateError {
    StateError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}
