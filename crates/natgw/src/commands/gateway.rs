//! Stage two of argument handling: flags + config file → `Settings`; plus the checks
//! every command that touches the gateway starts with.

use std::path::PathBuf;

use anyhow::anyhow;
use natgw_core::config::Flags;
use natgw_core::{Config, Desired, Observed, Settings};
use natgw_linux::netlink::Netlink;

use crate::cli::GatewayArgs;
use crate::exit::{self, problem, usage};

const DEFAULT_CONFIG: &str = "/etc/natgw/natgw.toml";

pub fn settings(args: &GatewayArgs) -> exit::Result<Settings> {
    let flags = Flags {
        public: args.public.clone(),
        private: args.private.clone(),
        snat_to: args.snat_to.clone(),
        masquerade: args.masquerade,
    };
    let path: Option<PathBuf> = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Settings::from_flags(&flags).map_err(usage);
    };
    let text = crate::config_file::read(&path).map_err(usage)?;
    Config::parse(&text, &path)
        .and_then(|config| config.merge(&flags, &text, &path))
        .map_err(usage)
}

pub fn require_privilege() -> exit::Result<()> {
    if natgw_linux::privilege::has_net_admin() {
        return Ok(());
    }
    Err(usage(anyhow!(
        "changing or reading the gateway needs CAP_NET_ADMIN; run natgw as root (sudo natgw ...)"
    )))
}

pub fn connect() -> exit::Result<Netlink> {
    Netlink::connect().map_err(problem)
}

pub fn observe(netlink: &Netlink) -> exit::Result<Observed> {
    let observed = natgw_linux::observe(netlink).map_err(problem)?;
    if !observed.nft_present {
        return Err(problem(natgw_linux::nft::NftError::Missing));
    }
    Ok(observed)
}

pub fn desired(settings: &Settings, observed: &Observed) -> exit::Result<Desired> {
    natgw_core::desired(settings, observed).map_err(|e| {
        if e.is_usage() {
            usage(e)
        } else {
            problem(e)
        }
    })
}

/// What every gateway command starts from: the system observed once, and the gateway
/// it should be.
pub struct Prepared {
    pub netlink: Netlink,
    pub observed: Observed,
    pub desired: Desired,
}

/// Settings, privilege, one observation, the desired gateway: in that order, so bad
/// input is reported before anything is read.
pub fn prepare(args: &GatewayArgs) -> exit::Result<Prepared> {
    let settings = settings(args)?;
    require_privilege()?;
    let netlink = connect()?;
    let observed = observe(&netlink)?;
    let desired = desired(&settings, &observed)?;
    Ok(Prepared {
        netlink,
        observed,
        desired,
    })
}
