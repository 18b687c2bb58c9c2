//! Files under a root directory (`/`, or `--root DIR` for packaging and tests),
//! reached only through directory descriptors opened without following symlinks: a
//! symlink planted anywhere below the root cannot redirect a write out of it. Files
//! are written atomically: an exclusive temporary file beside the target, fsync, then
//! rename (or link, when an existing file must be kept), and fsync of the directory.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

pub struct RootDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
    /// Already there with the same content and mode.
    Unchanged,
    /// Something exists there and `Replace::Never` keeps it as it is.
    Kept,
}

/// Whether a write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    Always,
    Never,
}

impl RootDir {
    /// Opens the root itself; the admin chose it, so a symlink to it is followed.
    pub fn open(path: &Path) -> anyhow::Result<RootDir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open root directory {}", path.display()))?;
        Ok(RootDir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// `rel` as the admin sees it (`ROOT/etc/natgw/natgw.toml`).
    pub fn show(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Whether something (of any type, a symlink included) exists at `rel`.
    pub fn exists(&self, rel: &str) -> anyhow::Result<bool> {
        let (dir, name) = split(rel);
        let Some(dir) = self.dir(dir, false)? else {
            return Ok(false);
        };
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("cannot inspect {}", self.show(rel).display()))
            }
        }
    }

    /// Writes `content` to `rel` with `mode`, creating missing directories (0755).
    pub fn write(
        &self,
        rel: &str,
        content: &[u8],
        mode: u32,
        replace: Replace,
    ) -> anyhow::Result<Written> {
        let shown = self.show(rel);
        let (dir_rel, name) = split(rel);
        let dir = self.dir(dir_rel, true)?.expect("created");
        let existing = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(stat),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", shown.display())),
        };
        if let Some(stat) = existing {
            if replace == Replace::Never {
                return Ok(Written::Kept);
            }
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                bail!(
                    "cannot write {}: it exists and is not a regular file (a symlink?); remove it first",
                    shown.display()
                );
            }
            if self.read_regular(&dir, name).ok().as_deref() == Some(content)
                && stat.st_mode & 0o7777 == mode
            {
                return Ok(Written::Unchanged);
            }
        }
        let tmp = format!(".{name}.natgw-tmp.{}", std::process::id());
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let result = self.write_tmp(&dir, &tmp, content, mode).and_then(|()| {
            match replace {
                Replace::Always => {
                    renameat(&dir, tmp.as_str(), &dir, name).map(|()| existing.is_some())
                }
                // A link never replaces: a file created meanwhile is kept.
                Replace::Never => {
                    linkat(&dir, tmp.as_str(), &dir, name, AtFlags::empty()).map(|()| false)
                }
            }
            .map_err(anyhow::Error::from)
        });
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let written = match result {
            Ok(true) => Written::Replaced,
            Ok(false) => Written::Created,
            // Created meanwhile by someone else: theirs is kept.
            Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::EEXIST) => Written::Kept,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", shown.display())),
        };
        nix::unistd::fsync(&dir).with_context(|| format!("cannot sync {}", shown.display()))?;
        Ok(written)
    }

    /// Removes the file at `rel`; `false` when there was none.
    pub fn remove(&self, rel: &str) -> anyhow::Result<bool> {
        let (dir, name) = split(rel);
        let Some(dir) = self.dir(dir, false)? else {
            return Ok(false);
        };
        match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                let _ = nix::unistd::fsync(&dir);
                Ok(true)
            }
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.show(rel).display())),
        }
    }

    /// The directory `rel` below the root, each component opened without following
    /// symlinks; created (0755) when missing and `create`, else `None`.
    fn dir(&self, rel: &str, create: bool) -> anyhow::Result<Option<OwnedFd>> {
        let mut current = self
            .fd
            .try_clone()
            .context("cannot duplicate a descriptor")?;
        let mut walked = PathBuf::new();
        for component in Path::new(rel).components() {
            let Component::Normal(name) = component else {
                bail!("{rel:?} is not a plain relative path");
            };
            walked.push(name);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let next = match openat(&current, name, flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&current, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => openat(&current, name, flags, Mode::empty()),
                        Err(e) => Err(e),
                    }
                }
                Err(Errno::ENOENT) => return Ok(None),
                other => other,
            };
            current = next.map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                    "{} is a symlink or not a directory; natgw does not follow symlinks under {}",
                    self.path.join(&walked).display(),
                    self.path.display()
                ),
                e => anyhow::Error::from(e)
                    .context(format!("cannot open {}", self.path.join(&walked).display())),
            })?;
        }
        Ok(Some(current))
    }

    fn write_tmp(&self, dir: &OwnedFd, tmp: &str, content: &[u8], mode: u32) -> anyhow::Result<()> {
        let fd = openat(
            dir,
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        // The umask must not decide the file's mode.
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
        let mut file = File::from(fd);
        file.write_all(content)?;
        file.sync_all()?;
        Ok(())
    }

    fn read_regular(&self, dir: &OwnedFd, name: &str) -> anyhow::Result<Vec<u8>> {
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut File::from(fd), &mut bytes)?;
        Ok(bytes)
    }
}

/// `etc/natgw/natgw.toml` → (`etc/natgw`, `natgw.toml`).
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A directory of its own for each test, removed afterwards.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("natgw-root-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn creates_directories_and_writes_with_the_mode_asked_for() {
        let scratch = Scratch::new("write");
        let root = RootDir::open(&scratch.0).unwrap();
        let rel = "etc/natgw/natgw.toml";
        assert!(!root.exists(rel).unwrap());
        assert_eq!(
            root.write(rel, b"a\n", 0o644, Replace::Never).unwrap(),
            Written::Created
        );
        let path = scratch.0.join(rel);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n");
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&scratch.0.join("etc/natgw")), 0o755);
        assert!(root.exists(rel).unwrap());
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(scratch.0.join("etc/natgw"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn never_replaces_when_asked_to_keep_and_replaces_otherwise() {
        let scratch = Scratch::new("keep");
        let root = RootDir::open(&scratch.0).unwrap();
        let rel = "etc/natgw/natgw.toml";
        root.write(rel, b"admin\n", 0o640, Replace::Never).unwrap();
        assert_eq!(
            root.write(rel, b"new\n", 0o644, Replace::Never).unwrap(),
            Written::Kept
        );
        assert_eq!(
            std::fs::read_to_string(scratch.0.join(rel)).unwrap(),
            "admin\n"
        );
        assert_eq!(
            root.write(rel, b"admin\n", 0o640, Replace::Always).unwrap(),
            Written::Unchanged
        );
        assert_eq!(
            root.write(rel, b"new\n", 0o644, Replace::Always).unwrap(),
            Written::Replaced
        );
        assert_eq!(
            std::fs::read_to_string(scratch.0.join(rel)).unwrap(),
            "new\n"
        );
        assert_eq!(mode(&scratch.0.join(rel)), 0o644);
    }

    #[test]
    fn symlinks_below_the_root_are_never_followed() {
        let scratch = Scratch::new("symlink");
        let outside = Scratch::new("symlink-outside");
        let root = RootDir::open(&scratch.0).unwrap();
        // A directory symlink pointing out of the root.
        std::os::unix::fs::symlink(&outside.0, scratch.0.join("etc")).unwrap();
        let e = format!(
            "{:#}",
            root.write("etc/natgw/x", b"x", 0o644, Replace::Always)
                .unwrap_err()
        );
        assert!(
            e.contains("etc is a symlink or not a directory; natgw does not follow symlinks"),
            "{e}"
        );
        assert!(
            std::fs::read_dir(&outside.0).unwrap().next().is_none(),
            "nothing written outside"
        );
        assert!(root.remove("etc/natgw/x").is_err());
        // A file symlink is neither written through nor replaced.
        std::fs::remove_file(scratch.0.join("etc")).unwrap();
        std::fs::create_dir(scratch.0.join("etc")).unwrap();
        let target = outside.0.join("target");
        std::fs::write(&target, "outside\n").unwrap();
        std::os::unix::fs::symlink(&target, scratch.0.join("etc/unit")).unwrap();
        let e = format!(
            "{:#}",
            root.write("etc/unit", b"x", 0o644, Replace::Always)
                .unwrap_err()
        );
        assert!(e.contains("is not a regular file (a symlink?)"), "{e}");
        assert_eq!(
            root.write("etc/unit", b"x", 0o644, Replace::Never).unwrap(),
            Written::Kept
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "outside\n");
        assert!(root.exists("etc/unit").unwrap());
    }

    #[test]
    fn remove_reports_whether_there_was_a_file() {
        let scratch = Scratch::new("remove");
        let root = RootDir::open(&scratch.0).unwrap();
        assert!(!root.remove("etc/systemd/system/natgw.service").unwrap());
        root.write(
            "etc/systemd/system/natgw.service",
            b"u",
            0o644,
            Replace::Always,
        )
        .unwrap();
        assert!(root.remove("etc/systemd/system/natgw.service").unwrap());
        assert!(!scratch.0.join("etc/systemd/system/natgw.service").exists());
    }
}
