//! Reads the system once per command into a plain `Observed` value.

use std::collections::BTreeMap;

use natgw_core::detect::IP_FORWARD;
use natgw_core::Observed;

use crate::netlink::{Netlink, NetlinkError};
use crate::nft::NftError;
use crate::state_store::StateError;
use crate::{conntrack, nft, state_store, sysctl};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The sysctls natgw manages.
pub const SYSCTLS: [&str; 1] = [IP_FORWARD];

pub fn observe(netlink: &Netlink) -> Result<Observed, ObserveError> {
    let nft_present = nft::binary().is_some();
    let mut sysctls = BTreeMap::new();
    for name in SYSCTLS {
        sysctls.insert(name.to_string(), sysctl::read(name)?);
    }
    let links = netlink.links()?;
    // Per-interface values the doctor weighs; an interface may vanish meanwhile.
    let per_link = links
        .iter()
        .filter(|l| !l.loopback)
        .map(|l| l.name.as_str())
        .chain(["all"]);
    for iface in per_link {
        for key in ["forwarding", "rp_filter"] {
            let name = format!("net.ipv4.conf.{iface}.{key}");
            if let Ok(value) = sysctl::read(&name) {
                sysctls.insert(name, value);
            }
        }
    }
    Ok(Observed {
        links,
        addresses: netlink.addresses()?,
        routes: netlink.routes()?,
        sysctls,
        nft_present,
        table_listing: if nft_present {
            nft::list_table()?
        } else {
            None
        },
        conntrack: conntrack::usage(),
        state: state_store::load()?,
    })
}
