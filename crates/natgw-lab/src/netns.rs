//! Running things inside a named network namespace: `ip` commands, and closures on a
//! thread that joined the namespace with setns(2) (only that thread moves).

use std::fs::File;
use std::process::{Command, Output};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `{command}`; is iproute2 installed? (apt-get install iproute2)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("lab {name} is running (pid {pid}); stop that one first, or pick another --name")]
    Busy { name: String, pid: u32 },
    #[error("lab {name} was kept (--keep); remove it with `natgw lab down --name {name}` first, or pick another --name")]
    Kept { name: String },
    #[error("network namespace {ns} exists but was not made by natgw lab {name}; natgw leaves it alone: pick another --name")]
    Foreign { name: String, ns: String },
    #[error("cannot record lab {name} in its marker file")]
    Marker {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `ip ARGS...` and fails with its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    run("ip", args)
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// A veth pair between namespaces `a` and `b` (by name), each end addressed and up.
pub(crate) fn cable(
    (a, a_if, a_cidr): (&str, &str, &str),
    (b, b_if, b_cidr): (&str, &str, &str),
) -> Result<(), NetnsError> {
    ip(&[
        "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
    ])?;
    for (ns, ifname, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
        ip(&["-n", ns, "addr", "add", cidr, "dev", ifname])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name`; sockets it opens stay there.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let enter_error = |source| NetnsError::Enter {
        name: name.to_string(),
        source,
    };
    let file = File::open(format!("/run/netns/{name}")).map_err(enter_error)?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        Ok(f())
    })
    .join()
    .expect("namespace thread panicked")
    .map_err(enter_error)
}
