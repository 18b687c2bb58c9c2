//! Sysctls under /proc/sys, by dotted name. Reads and writes act on the network
//! namespace of the calling process.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {name}: cannot {action} {path}")]
pub struct SysctlError {
    pub name: String,
    pub action: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

fn path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// `sysctl -n NAME`
pub fn read(name: &str) -> Result<String, SysctlError> {
    let path = path(name);
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| SysctlError {
            name: name.into(),
            action: "read",
            path: path.display().to_string(),
            source,
        })
}

/// `sysctl -w NAME=VALUE`
pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    let path = path(name);
    std::fs::write(&path, value).map_err(|source| SysctlError {
        name: name.into(),
        action: "write",
        path: path.display().to_string(),
        source,
    })
}
