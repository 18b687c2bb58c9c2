//! Connection tracking table usage, from /proc (per network namespace for the count).

use natgw_core::observed::Conntrack;

/// Entries in use and the maximum; `None` when conntrack is not loaded.
pub fn usage() -> Option<Conntrack> {
    let read = |name: &str| crate::sysctl::read(name).ok()?.parse().ok();
    Some(Conntrack {
        count: read("net.netfilter.nf_conntrack_count")?,
        max: read("net.netfilter.nf_conntrack_max")?,
    })
}
