//! The command-line tools natgw runs, found where an admin's shell would find them.

use std::path::PathBuf;

/// `name`'s binary, if installed: `$env` when set (tests point it elsewhere), else found
/// on PATH or in the sbin directories (cron and some service managers leave them off
/// PATH).
pub fn find(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os(env) {
        return Some(PathBuf::from(explicit)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
