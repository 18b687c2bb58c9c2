//! Files under `--root`, read and written without ever leaving it: every path is
//! walked one component at a time from the root's directory descriptor with
//! `O_NOFOLLOW`, so a symlink on the way (to `/etc` of the host, say) is refused
//! instead of followed. Writes go to an exclusive temporary file with an unpredictable
//! name in the target directory, take the mode and owner of the file they replace,
//! and are renamed over it after fsync.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, Gid, Uid};

/// Configuration files are small; anything bigger is not one.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("{path} is a symlink or not a directory; natgw does not follow links out of --root")]
    NotADirectory { path: String },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// What reading found besides the files: ones skipped, and why.
pub type Skipped = Vec<String>;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Root {
    pub fn open(path: &Path) -> Result<Root, RootError> {
        let dir = nix::fcntl::open(path, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
            .map_err(|source| RootError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Root {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// Where `path` (absolute, inside the root) is on this machine.
    pub fn show(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// The directory `dir` (absolute inside the root), walked without following
    /// links; `create` makes missing components (0755). `Ok(None)`: it is absent.
    fn open_dir(&self, dir: &str, create: bool) -> Result<Option<OwnedFd>, RootError> {
        let mut fd = self.dir.try_clone().map_err(|e| RootError::Write {
            path: self.path.display().to_string(),
            source: e,
        })?;
        let mut walked = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty() && *p != ".") {
            walked = format!("{walked}/{part}");
            if part == ".." {
                return Err(RootError::NotADirectory { path: walked });
            }
            let next = match openat(&fd, part, DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&fd, part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => openat(&fd, part, DIR_FLAGS, Mode::empty()),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            fd = match next {
                Ok(next) => next,
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(RootError::NotADirectory {
                        path: self.show(&walked).display().to_string(),
                    })
                }
                Err(source) => {
                    return Err(RootError::Open {
                        path: self.show(&walked).display().to_string(),
                        source,
                    })
                }
            };
        }
        Ok(Some(fd))
    }

    /// Every regular file under `dirs` (and their subdirectories, `depth` levels),
    /// by absolute path inside the root. Symlinks, unreadable, oversized and
    /// non-UTF-8 files are skipped and named in the second list.
    pub fn read_tree(&self, dirs: &[&str], depth: usize) -> (natgw_core::persist::Files, Skipped) {
        let mut files = natgw_core::persist::Files::new();
        let mut skipped = Skipped::new();
        for dir in dirs {
            match self.open_dir(dir, false) {
                Ok(Some(fd)) => self.read_dir(&fd, dir, depth, &mut files, &mut skipped),
                Ok(None) => {}
                // /lib -> usr/lib on merged-/usr systems: read through its real path.
                Err(RootError::NotADirectory { .. }) => {}
                Err(e) => skipped.push(format!("{e}")),
            }
        }
        (files, skipped)
    }

    fn read_dir(
        &self,
        dir: &OwnedFd,
        path: &str,
        depth: usize,
        files: &mut natgw_core::persist::Files,
        skipped: &mut Skipped,
    ) {
        // The directory's entries, listed through its descriptor.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
            skipped.push(format!("{}: cannot list it", self.show(path).display()));
            return;
        };
        let mut names: Vec<String> = Vec::new();
        for entry in entries.flatten() {
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => skipped.push(format!(
                    "{}/{}: the name is not UTF-8",
                    self.show(path).display(),
                    name.to_string_lossy()
                )),
            }
        }
        names.sort();
        for name in names {
            let full = format!("{}/{name}", path.trim_end_matches('/'));
            let shown = self.show(&full).display().to_string();
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let fd = match openat(dir, name.as_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ELOOP) => {
                    skipped.push(format!("{shown}: a symlink, not followed"));
                    continue;
                }
                Err(e) => {
                    skipped.push(format!("{shown}: cannot open it ({e})"));
                    continue;
                }
            };
            let Ok(stat) = fstat(&fd) else { continue };
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFDIR {
                if depth > 0 {
                    if let Ok(sub) = openat(dir, name.as_str(), DIR_FLAGS, Mode::empty()) {
                        self.read_dir(&sub, &full, depth - 1, files, skipped);
                    }
                }
                continue;
            }
            if kind != SFlag::S_IFREG {
                continue;
            }
            let mut bytes = Vec::new();
            if File::from(fd)
                .take(MAX_FILE + 1)
                .read_to_end(&mut bytes)
                .is_err()
                || bytes.len() as u64 > MAX_FILE
            {
                skipped.push(format!(
                    "{shown}: unreadable or larger than {MAX_FILE} bytes"
                ));
                continue;
            }
            match String::from_utf8(bytes) {
                Ok(text) => {
                    files.insert(full, text);
                }
                Err(_) => skipped.push(format!("{shown}: not UTF-8 text, left alone")),
            }
        }
    }

    /// Replaces (or creates) `path` with `content` atomically, keeping the mode and
    /// owner of the file replaced, or of `like` for a new file (a vendor file copied
    /// to /etc); a new file otherwise gets 0644 root.
    pub fn write(&self, path: &str, content: &str, like: Option<&str>) -> Result<(), RootError> {
        let shown = self.show(path).display().to_string();
        let write_error = |source: std::io::Error| RootError::Write {
            path: shown.clone(),
            source,
        };
        let errno = |e: Errno| write_error(std::io::Error::from(e));
        let (dir_path, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.open_dir(dir_path, true)?.expect("created above");
        let original = self.stat(&dir, name).or_else(|| {
            let (like_dir, like_name) = like?.rsplit_once('/')?;
            let fd = self.open_dir(like_dir, false).ok()??;
            self.stat(&fd, like_name)
        });
        let tmp = format!(".{name}.natgw-{}", random_suffix().map_err(write_error)?);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd =
            openat(&dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(errno)?;
        let result = (|| {
            let (mode, uid, gid) = original.unwrap_or((0o644, 0, 0));
            fchown(
                fd.as_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(errno)?;
            fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(errno)?;
            let mut file = File::from(fd);
            file.write_all(content.as_bytes()).map_err(write_error)?;
            file.sync_all().map_err(write_error)?;
            renameat(&dir, tmp.as_str(), &dir, name).map_err(errno)?;
            nix::unistd::fsync(&dir).map_err(errno)
        })();
        if result.is_err() {
            let _ =
                nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Mode bits, owner and group of a regular file `name` in `dir`.
    fn stat(&self, dir: &OwnedFd, name: &str) -> Option<(libc::mode_t, u32, u32)> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(dir, name, flags, Mode::empty()).ok()?;
        let stat = fstat(&fd).ok()?;
        Some((stat.st_mode & 0o7777, stat.st_uid, stat.st_gid))
    }
}

/// 64 random bits as hex, for temporary file names nobody can guess.
fn random_suffix() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("natgw-rootfs-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keeps_mode_and_leaves_no_temporary_file() {
        let dir = scratch("mode");
        let nm = dir.join("etc/NetworkManager/system-connections");
        std::fs::create_dir_all(&nm).unwrap();
        let file = nm.join("wifi.nmconnection");
        std::fs::write(&file, "old\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let root = Root::open(&dir).unwrap();
        root.write(
            "/etc/NetworkManager/system-connections/wifi.nmconnection",
            "new\n",
            None,
        )
        .unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new\n");
        assert_eq!(
            std::fs::read_dir(&nm).unwrap().count(),
            1,
            "no temporary file left"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn never_follows_a_symlinked_directory_out_of_the_root() {
        let dir = scratch("link");
        let outside = scratch("outside");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("etc/network")).unwrap();
        std::fs::write(outside.join("interfaces"), "iface eth0 inet static\n").unwrap();
        let root = Root::open(&dir).unwrap();
        let err = root
            .write("/etc/network/interfaces", "x\n", None)
            .unwrap_err();
        assert!(matches!(err, RootError::NotADirectory { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(outside.join("interfaces")).unwrap(),
            "iface eth0 inet static\n"
        );
        let (files, _) = root.read_tree(&["/etc/network"], 2);
        assert!(files.is_empty(), "read through the link: {files:?}");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_skipped_with_a_note() {
        let dir = scratch("utf8");
        let net = dir.join("etc/network");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("interfaces"), "auto lo\n").unwrap();
        std::fs::write(net.join("latin1"), b"# caf\xe9\n").unwrap();
        let (files, skipped) = Root::open(&dir).unwrap().read_tree(&["/etc/network"], 2);
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["/etc/network/interfaces"]
        );
        assert!(skipped[0].contains("latin1: not UTF-8"), "{skipped:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
