//! The HA daemons: keepalived (VRRP) and conntrackd (connection state), run by
//! `natgw run` as its children with the config, pid, lock, socket and log files of this
//! namespace's state directory, so that two pairs run side by side on one machine. They
//! get SIGTERM when natgw dies (PR_SET_PDEATHSIG): keepalived then gives the addresses
//! up and the peer takes over, instead of an orphan holding them.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use natgw_core::ha::HaFiles;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("{0} is not installed (apt-get install keepalived conntrackd)")]
    Missing(&'static str),
    #[error("cannot start {name}")]
    Start {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrackd {args} failed: {output}")]
    Control { args: String, output: String },
}

pub const KEEPALIVED: &str = "keepalived";
pub const CONNTRACKD: &str = "conntrackd";

/// Where a daemon's binary is: on PATH, else in the sbin directories (keepalived runs
/// notify hooks with a minimal environment).
pub fn binary(name: &'static str) -> Result<PathBuf, HaError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(HaError::Missing(name))
}

/// The two children of `natgw run`.
pub struct Daemons {
    files: HaFiles,
    keepalived: Option<Child>,
    conntrackd: Option<Child>,
}

impl Daemons {
    pub fn new(files: HaFiles) -> Daemons {
        Daemons {
            files,
            keepalived: None,
            conntrackd: None,
        }
    }

    pub fn files(&self) -> &HaFiles {
        &self.files
    }

    /// Starts the daemons that are not running (conntrackd first: the notify hook of
    /// keepalived's first transition talks to it). Returns the names started.
    pub fn ensure(&mut self) -> Result<Vec<&'static str>, HaError> {
        let mut started = Vec::new();
        if self.conntrackd.is_none() {
            let conf = self.files.conntrackd_conf();
            stop_strays(&conf);
            // A lock left by a killed conntrackd of this instance would stop the new one.
            let _ = std::fs::remove_file(self.files.conntrackd_lock());
            let mut cmd = Command::new(binary(CONNTRACKD)?);
            cmd.arg("-C").arg(&conf);
            self.conntrackd = Some(spawn(
                cmd,
                CONNTRACKD,
                &self.files.dir.join("conntrackd.out"),
            )?);
            wait_for_socket(&self.files.conntrackd_socket(), Duration::from_secs(3));
            started.push(CONNTRACKD);
        }
        if self.keepalived.is_none() {
            let conf = self.files.keepalived_conf();
            stop_strays(&conf);
            let mut cmd = Command::new(binary(KEEPALIVED)?);
            // -n: stay a child of natgw; --vrrp: no health checkers; -l -D: log details
            // to the console (natgw's log file); own pid files per instance.
            cmd.args(["-n", "-l", "-D", "--vrrp", "-f"])
                .arg(&conf)
                .arg("-p")
                .arg(self.files.keepalived_pid())
                .arg("-r")
                .arg(self.files.vrrp_pid())
                .arg("-c")
                .arg(self.files.checkers_pid());
            self.keepalived = Some(spawn(
                cmd,
                KEEPALIVED,
                &self.files.dir.join("keepalived.log"),
            )?);
            started.push(KEEPALIVED);
        }
        Ok(started)
    }

    /// keepalived rereads its config on SIGHUP.
    pub fn reload_keepalived(&self) {
        if let Some(child) = &self.keepalived {
            signal(child.id(), libc::SIGHUP);
        }
    }

    /// conntrackd has no reload: stop it, so that the next `ensure` starts it anew.
    pub fn restart_conntrackd(&mut self) {
        if let Some(child) = self.conntrackd.take() {
            terminate(child);
        }
    }

    /// The children that have ended since the last call, with how.
    pub fn reap(&mut self) -> Vec<(&'static str, ExitStatus)> {
        let mut ended = Vec::new();
        for (name, slot) in [
            (KEEPALIVED, &mut self.keepalived),
            (CONNTRACKD, &mut self.conntrackd),
        ] {
            if let Some(child) = slot {
                if let Ok(Some(status)) = child.try_wait() {
                    ended.push((name, status));
                    *slot = None;
                }
            }
        }
        ended
    }

    pub fn running(&self) -> (bool, bool) {
        (self.keepalived.is_some(), self.conntrackd.is_some())
    }

    /// SIGTERM to both (keepalived first: it gives the addresses up, with a priority 0
    /// advertisement so the peer takes over at once), waiting for each to end.
    pub fn stop(&mut self) {
        if let Some(child) = self.keepalived.take() {
            terminate(child);
        }
        if let Some(child) = self.conntrackd.take() {
            terminate(child);
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(mut cmd: Command, name: &'static str, log: &Path) -> Result<Child, HaError> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(log)
        .map_err(|source| HaError::Start { name, source })?;
    let err = out
        .try_clone()
        .map_err(|source| HaError::Start { name, source })?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|source| HaError::Start { name, source })
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill with a pid we own (a child, or a stray of this instance).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, up to 5 s to end, then SIGKILL.
fn terminate(mut child: Child) {
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Processes still running with this instance's config file (left by a `natgw run`
/// that was killed before its children noticed): stopped, so that exactly one
/// daemon of each kind serves the instance. The config path names the namespace's
/// own state directory, so no other instance's process matches.
fn stop_strays(conf: &Path) {
    let pids = processes_with_arg(conf);
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        if Instant::now() >= deadline {
            pids.iter().for_each(|&p| signal(p, libc::SIGKILL));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids whose command line has `arg` as one of its arguments.
pub fn processes_with_arg(arg: &Path) -> Vec<u32> {
    let want = arg.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == want))
        })
        .collect()
}

fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `conntrackd -C CONF ARGS`: a request over the instance's control socket.
pub fn control(files: &HaFiles, args: &[&str]) -> Result<String, HaError> {
    let out = Command::new(binary(CONNTRACKD)?)
        .arg("-C")
        .arg(files.conntrackd_conf())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HaError::Start {
            name: CONNTRACKD,
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(HaError::Control {
            args: args.join(" "),
            output: text.trim().to_string(),
        })
    }
}

/// The pid in a pid file, when that process is alive.
pub fn live_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}
