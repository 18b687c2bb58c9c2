//! The few things the benchmark changes outside its namespaces, each restored: the
//! global conntrack maximum (only settable from the initial namespace) and this
//! process's open-file limit (thousands of held connections, both ends in this process).

use std::sync::Mutex;

use anyhow::Context;

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// (original, raised to) while the benchmark has raised the maximum; read by the Ctrl-C
/// handler, which has no access to the guard.
static RAISED: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Raises `nf_conntrack_max` to at least `wanted` for as long as it lives.
pub struct ConntrackMax;

impl ConntrackMax {
    /// Ok(None) when the maximum is already high enough; an error says why it could not
    /// be raised (inside a namespace the kernel refuses the write).
    pub fn raise_to(wanted: u64) -> anyhow::Result<Option<ConntrackMax>> {
        let original = read_max()?;
        if original >= wanted {
            return Ok(None);
        }
        *RAISED.lock().unwrap() = Some((original, wanted));
        if let Err(e) = std::fs::write(CONNTRACK_MAX, wanted.to_string()) {
            *RAISED.lock().unwrap() = None;
            return Err(e).with_context(|| format!("cannot raise {CONNTRACK_MAX} to {wanted}"));
        }
        Ok(Some(ConntrackMax))
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Some(warning) = restore_raised() {
            eprintln!("natgw bench: {warning}");
        }
    }
}

/// Puts the original maximum back, unless someone else changed it meanwhile (then
/// their value stays); returns a warning when it could not be restored.
pub fn restore_raised() -> Option<String> {
    let (original, raised) = RAISED.lock().unwrap().take()?;
    match read_max() {
        Ok(now) if now != raised => Some(format!(
            "{CONNTRACK_MAX} is {now}, changed by someone else during the run; left as it is (it was {original})"
        )),
        _ => std::fs::write(CONNTRACK_MAX, original.to_string())
            .err()
            .map(|e| format!("cannot restore {CONNTRACK_MAX} to {original}: {e}")),
    }
}

fn read_max() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(CONNTRACK_MAX)
        .with_context(|| format!("cannot read {CONNTRACK_MAX}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{CONNTRACK_MAX} holds {text:?}"))
}

/// Raises this process's open-file limit to `wanted` (or as far as allowed); returns
/// the soft limit in force afterwards.
pub fn raise_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let soft = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

/// Which CPUs run what: the generator and the endpoints on one, the gateway's receive
/// processing on another (RPS), so the figures measure the gateway and not the sender.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Cpus {
    pub count: usize,
    pub generator: usize,
    pub gateway: Option<usize>,
}

impl Cpus {
    pub fn plan() -> Cpus {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        Cpus {
            count,
            generator: 0,
            gateway: (count >= 2).then_some(count - 1),
        }
    }
}

/// A bpffs at natgw's pin path, unmounted on drop when this mounted it.
pub struct Bpffs {
    mounted: bool,
}

impl Bpffs {
    pub fn mount() -> anyhow::Result<Bpffs> {
        Ok(Bpffs {
            mounted: natgw_linux::state_store::mount_bpffs()?,
        })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = natgw_linux::state_store::unmount_bpffs() {
                eprintln!("natgw bench: {e}");
            }
        }
    }
}
