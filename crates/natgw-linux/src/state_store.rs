//! natgw's records between commands, one directory per network namespace, under /run
//! (gone after a reboot, exactly like the kernel state it describes). The namespace is
//! identified by its cookie (SO_NETNS_COOKIE), which the kernel never reuses while it
//! runs, unlike the inode of /proc/self/ns/net: a namespace created after another was
//! deleted can get the old inode, and with it a stale record. So two natgw instances in
//! two namespaces never share or clobber state.
//!
//! The directories are root-only (0700) and the records 0600; records are written
//! atomically and durably (exclusive temporary file, fsync, rename, fsync of the
//! directory) and never read through a symlink. A per-namespace lock (flock) makes
//! natgw commands of one namespace run one at a time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natgw_core::state::STATE_VERSION;
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
    #[error("natgw state {path} is corrupt ({reason}); `natgw down` removes what natgw can identify by itself")]
    Corrupt { path: String, reason: String },
    #[error("natgw state {path} is not trusted: {reason}")]
    Untrusted { path: String, reason: String },
    #[error("another natgw command holds the lock of this network namespace ({holder}); waited {waited:?}; try again when it has finished")]
    Locked { holder: String, waited: Duration },
}

const BASE: &str = "/run/natgw";
/// Records are small; anything bigger is not natgw's.
const MAX_RECORD: u64 = 16 << 20;

/// Record names: the gateway (`natgw up`) and the private node (`natgw node up`).
pub const GATEWAY: &str = "state.json";
pub const NODE: &str = "node.json";
/// The private node's IPv6 default route (`natgw node up --gateway IPV6`).
pub const NODE6: &str = "node6.json";
const LOCK: &str = "lock";
/// Held by `natgw run` for its whole life: one daemon per namespace.
const DAEMON_LOCK: &str = "run.lock";

/// The gateway's state file in the current network namespace.
pub fn path() -> Result<PathBuf, StateError> {
    Ok(namespace_dir()?.join(GATEWAY))
}

fn namespace_dir() -> Result<PathBuf, StateError> {
    let cookie = netns_cookie().map_err(StateError::Namespace)?;
    Ok(PathBuf::from(BASE).join(format!("netns-{cookie}")))
}

/// The bpffs where natgw pins the eBPF data plane's links and maps, one directory per
/// network namespace (named like the state directory). One bpffs for all: each mount
/// of bpffs is its own instance, and a mount made inside `ip netns exec` (a private
/// mount namespace) ends with that process, taking the pins with it. So it is mounted
/// once in the host's mount namespace (natgw does when it runs there), and every
/// `ip netns exec` started after that sees the same instance.
pub const BPFFS: &str = "/run/natgw/bpffs";

/// The eBPF data plane's pin directory of the current network namespace (not created).
pub fn bpf_dir() -> Result<PathBuf, StateError> {
    let cookie = netns_cookie().map_err(StateError::Namespace)?;
    Ok(PathBuf::from(BPFFS).join(format!("netns-{cookie}")))
}

/// Whether `path` is a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as libc::c_long == BPF_FS_MAGIC
}

/// Mounts a bpffs at `BPFFS` (0700) in this mount namespace unless one is there;
/// whether it mounted one.
pub fn mount_bpffs() -> Result<bool, StateError> {
    secure_dir(Path::new(BASE))?;
    let base = Path::new(BPFFS);
    if is_bpffs(base) {
        return Ok(false);
    }
    match std::fs::DirBuilder::new().mode(0o700).create(base) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io("create", base, e))
        }
        _ => {}
    }
    let (src, fstype, data) = (c"bpf", c"bpf", c"mode=0700");
    let target = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: valid C strings; mounting is what this function is for.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io(
            "mount a bpffs at",
            base,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(true)
}

/// Unmounts the bpffs at `BPFFS` (what `mount_bpffs` mounted).
pub fn unmount_bpffs() -> Result<(), StateError> {
    let target = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
        return Err(io(
            "unmount the bpffs at",
            Path::new(BPFFS),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The pin directory, created (0700) on a bpffs at `BPFFS`, mounting one there first
/// when there is none.
pub fn bpf_dir_created() -> Result<PathBuf, StateError> {
    if mount_bpffs()? {
        tracing::warn!(
            "mounted a bpffs at {BPFFS} in natgw's mount namespace; under `ip netns exec` that namespace ends with this command, and with it the pinned eBPF programs: mount it in the host's namespace first (mkdir -p {BPFFS} && mount -t bpf -o mode=0700 bpf {BPFFS})"
        );
    }
    let dir = bpf_dir()?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create", &dir, e)),
        _ => Ok(dir),
    }
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

/// Creates `dir` (0700) or checks an existing one: a real directory (not a symlink),
/// owned by us, not writable by anyone else. Repairs loose permissions of our own.
fn secure_dir(dir: &Path) -> Result<(), StateError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io("inspect", dir, e))?;
    let untrusted = |reason: &str| StateError::Untrusted {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    };
    if !meta.file_type().is_dir() {
        return Err(untrusted("not a directory (a symlink?); remove it"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(untrusted("owned by another user; remove it"));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restrict", dir, e))?;
    }
    Ok(())
}

fn record_dir() -> Result<PathBuf, StateError> {
    let dir = namespace_dir()?;
    secure_dir(Path::new(BASE))?;
    secure_dir(&dir)?;
    Ok(dir)
}

/// A held per-namespace lock; released when dropped (or when the process dies).
pub struct Lock {
    _file: File,
}

/// Takes this namespace's lock, waiting up to `wait` for another natgw command to
/// finish. The holder writes its pid and command line into the lock file, so a
/// waiter can name it.
pub fn lock(wait: Duration, command: &str) -> Result<Lock, StateError> {
    lock_file(LOCK, wait, command)
}

/// The daemon's own lock, not waited for: a second `natgw run` for the namespace fails
/// at once, naming the first.
pub fn daemon_lock() -> Result<Lock, StateError> {
    lock_file(DAEMON_LOCK, Duration::ZERO, "run")
}

/// Serialises `natgw ha-notify` runs: keepalived starts one per transition, and a
/// quick master → backup flap must not interleave their conntrackd commands.
pub fn ha_notify_lock(wait: Duration) -> Result<Lock, StateError> {
    lock_file("ha-notify.lock", wait, "ha-notify")
}

fn lock_file(name: &str, wait: Duration, command: &str) -> Result<Lock, StateError> {
    let path = record_dir()?.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| StateError::Untrusted {
            path: path.display().to_string(),
            reason: format!(
                "cannot open it as natgw's lock file ({e}); if it is not a regular file, remove it"
            ),
        })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(StateError::Untrusted {
            path: path.display().to_string(),
            reason: "not a regular file; remove it".into(),
        });
    }
    let start = Instant::now();
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io("lock", &path, err));
        }
        if start.elapsed() >= wait {
            let mut holder = String::new();
            let _ = (&file).take(256).read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StateError::Locked {
                holder: if holder.is_empty() {
                    "unknown process".into()
                } else {
                    holder.to_string()
                },
                waited: wait,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let who = format!("pid {}, `natgw {command}`", std::process::id());
    file.set_len(0).map_err(|e| io("write", &path, e))?;
    file.write_all(who.as_bytes())
        .map_err(|e| io("write", &path, e))?;
    Ok(Lock { _file: file })
}

/// The gateway record, checked: `Ok(None)` when there is none.
pub fn load() -> Result<Option<RecordedState>, StateError> {
    let Some((path, text)) = read_record(GATEWAY)? else {
        return Ok(None);
    };
    let state: RecordedState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "layout version {} where {STATE_VERSION} is expected",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Writes the gateway record durably: `apply` calls this before each change.
pub fn save(state: &RecordedState) -> Result<(), StateError> {
    save_named(GATEWAY, state)
}

pub fn remove() -> Result<(), StateError> {
    remove_named(GATEWAY)
}

/// Moves an unusable gateway record aside (`state.json.corrupt`), so that the next
/// `up` starts clean while the evidence stays for the admin.
pub fn set_aside() -> Result<PathBuf, StateError> {
    let path = path()?;
    // A name of its own each time, so that earlier evidence is never overwritten.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("json.corrupt-{stamp}-{}", std::process::id()));
    std::fs::rename(&path, &aside).map_err(|e| io("move aside", &path, e))?;
    Ok(aside)
}

/// A record's text, refusing symlinks, foreign owners, loose modes and huge files.
fn read_record(name: &str) -> Result<Option<(PathBuf, String)>, StateError> {
    let path = namespace_dir()?.join(name);
    // Non-blocking: a FIFO planted as a record must not hang the command (and with it
    // the namespace's lock); the type is checked on the open file below.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateError::Untrusted {
                path: path.display().to_string(),
                reason: "it is a symlink".into(),
            })
        }
        Err(e) => return Err(io("read", &path, e)),
    };
    let meta = file.metadata().map_err(|e| io("inspect", &path, e))?;
    let untrusted = |reason: &str| StateError::Untrusted {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    if !meta.is_file() {
        return Err(untrusted("not a regular file"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(untrusted("owned by another user"));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(
            "readable or writable by other users (natgw writes its records 0600)",
        ));
    }
    let mut text = String::new();
    file.take(MAX_RECORD + 1)
        .read_to_string(&mut text)
        .map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if text.len() as u64 > MAX_RECORD {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!("larger than {MAX_RECORD} bytes"),
        });
    }
    Ok(Some((path, text)))
}

pub fn load_named<T: serde::de::DeserializeOwned>(name: &str) -> Result<Option<T>, StateError> {
    let Some((path, text)) = read_record(name)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Writes a record atomically and durably: an exclusive 0600 temporary file, fsync,
/// rename over the record, fsync of the directory.
pub fn save_named<T: serde::Serialize>(name: &str, state: &T) -> Result<(), StateError> {
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    write_private(&record_dir()?, name, &text)
}

/// The HA daemons' directory (configs, pid files, sockets) of this namespace, created
/// root-only like the records'.
pub fn ha_dir() -> Result<PathBuf, StateError> {
    let dir = record_dir()?.join("ha");
    secure_dir(&dir)?;
    Ok(dir)
}

/// Writes `text` to `dir/name` atomically and durably, 0600: an exclusive temporary
/// file, fsync, rename, fsync of the directory. `dir` must be one of natgw's own.
pub fn write_private(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io("write", &tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("write", &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

pub fn remove_named(name: &str) -> Result<(), StateError> {
    let path = namespace_dir()?.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path, e)),
        _ => Ok(()),
    }
}

/// Removes every natgw record of the current network namespace: for whoever deletes
/// the namespace (the lab), since records of a dead namespace mean nothing.
pub fn remove_namespace_records() -> Result<(), StateError> {
    // The pinned eBPF objects too: unlinking the pins releases programs and maps.
    for dir in [namespace_dir()?, bpf_dir()?] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove", &dir, e))
            }
            _ => {}
        }
    }
    Ok(())
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The file in a namespace's record directory naming the namespace's nsfs inode, so
/// that `prune_dead_namespaces` can tell whether the namespace still exists (the
/// cookie in the directory's name cannot be looked up from outside the namespace).
const IDENTITY: &str = "netns";

/// Writes this namespace's identity into its record directory (once).
pub fn mark_namespace() -> Result<(), StateError> {
    let dir = record_dir()?;
    let path = dir.join(IDENTITY);
    if path.exists() {
        return Ok(());
    }
    // thread-self: natgw's lab threads enter namespaces one thread at a time.
    let inode = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| io("inspect", Path::new("/proc/thread-self/ns/net"), e))?
        .ino();
    save_named(IDENTITY, &inode)
}

/// Removes the record directories of network namespaces that no longer exist: their
/// records describe kernel state that is gone. A directory without an identity (an
/// older natgw's) or whose namespace is still referenced anywhere is left alone.
/// Returns the directories removed.
pub fn prune_dead_namespaces() -> Vec<PathBuf> {
    let live = live_namespaces();
    // Our own namespace is always live: an empty set means /proc could not be read.
    if live.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(BASE) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("netns-") || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let inode = std::fs::read_to_string(dir.join(IDENTITY))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if inode.is_some_and(|i| !live.contains(&i)) && std::fs::remove_dir_all(&dir).is_ok() {
            // Its pinned eBPF objects too: unlinking them releases programs and maps.
            let _ = std::fs::remove_dir_all(Path::new(BPFFS).join(&name));
            removed.push(dir);
        }
    }
    removed
}

/// nsfs inodes of every network namespace something still holds: a thread's
/// namespace, an open descriptor, or a bind mount (`ip netns add`) in any mount
/// namespace.
fn live_namespaces() -> std::collections::HashSet<u64> {
    let mut live = std::collections::HashSet::new();
    let mut mount_namespaces = std::collections::HashSet::new();
    let net_inode = |link: &Path| {
        std::fs::read_link(link).ok().and_then(|target| {
            target
                .to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return live;
    };
    for proc_entry in procs.flatten() {
        let pid_dir = proc_entry.path();
        if !proc_entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        for task in std::fs::read_dir(pid_dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            live.extend(net_inode(&task.path().join("ns/net")));
        }
        for fd in std::fs::read_dir(pid_dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            live.extend(net_inode(&fd.path()));
        }
        let Ok(mnt) = std::fs::read_link(pid_dir.join("ns/mnt")) else {
            continue;
        };
        if mount_namespaces.contains(&mnt) {
            continue;
        }
        // A process that exits meanwhile reads as nothing: its mount namespace is only
        // counted as seen once a process in it was read, or every namespace bind-mounted
        // there would look dead (and lose its records and pinned programs).
        let mountinfo = std::fs::read_to_string(pid_dir.join("mountinfo")).unwrap_or_default();
        if mountinfo.is_empty() {
            continue;
        }
        mount_namespaces.insert(mnt);
        for line in mountinfo.lines() {
            // Field 4 is the mount's root: `net:[INODE]` for a bind-mounted namespace.
            let root = line.split_whitespace().nth(3).unwrap_or("");
            if let Some(inode) = root
                .strip_prefix("net:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
            {
                live.insert(inode);
            }
        }
    }
    live
}
