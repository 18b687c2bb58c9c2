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

/// `/proc/sys` path of a dotted name. Interface names may contain dots
/// (`net.ipv4.conf.eth0.100.forwarding`), so the part between `conf.` and the last dot
/// stays whole.
fn path(name: &str) -> PathBuf {
    for family in ["net.ipv4.conf.", "net.ipv6.conf."] {
        if let Some(rest) = name.strip_prefix(family) {
            if let Some((iface, key)) = rest.rsplit_once('.') {
                return PathBuf::from("/proc/sys")
                    .join(family.replace('.', "/"))
                    .join(iface)
                    .join(key);
            }
        }
    }
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

/// `sysctl -w NAME=VALUE`. A name that would leave /proc/sys (`..`, `/`) is refused.
pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    let path = path(name);
    if name.contains('/')
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(SysctlError {
            name: name.into(),
            action: "write",
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sysctl name"),
        });
    }
    std::fs::write(&path, value).map_err(|source| SysctlError {
        name: name.into(),
        action: "write",
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn interface_names_with_dots_stay_whole() {
        assert_eq!(
            super::path("net.ipv4.conf.eth0.100.forwarding").to_str(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            super::path("net.ipv4.ip_forward").to_str(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
