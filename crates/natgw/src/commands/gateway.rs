//! Stage two of argument handling: flags + config file → `Settings`; plus the checks
//! every command that touches the gateway starts with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use natgw_core::config::Flags;
use natgw_core::{remember, Config, Desired, Observed, Settings};
use natgw_linux::dataplane::Dataplane;
use natgw_linux::netlink::Netlink;
use natgw_linux::state_store::{self, Lock};

use crate::cli::GatewayArgs;
use crate::exit::{self, problem, usage};

pub const DEFAULT_CONFIG: &str = "/etc/natgw/natgw.toml";

pub fn settings(args: &GatewayArgs) -> exit::Result<Settings> {
    let flags = Flags {
        public: args.public.clone(),
        private: args.private.clone(),
        snat_to: args.snat_to.clone(),
        masquerade: args.masquerade,
        ipv6_mode: args.ipv6_mode,
        ipv6_public_prefix: args.ipv6_public_prefix,
        dataplane: args.dataplane,
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

/// How long a command waits for another natgw command of the same namespace.
const LOCK_WAIT_ENV: &str = "NATGW_LOCK_WAIT";
const LOCK_WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// Takes the namespace's lock for the rest of the command (observe → plan → apply →
/// verify), so two natgw commands never interleave. Exit 1 naming the holder when
/// it does not come free in time.
pub fn lock(command: &str) -> exit::Result<Lock> {
    let wait = std::env::var(LOCK_WAIT_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(LOCK_WAIT_DEFAULT, Duration::from_secs_f64);
    let lock = state_store::lock(wait, command).map_err(problem)?;
    // Best effort, once per process (the daemon locks per reconcile): records of
    // namespaces deleted since (a lab's, a container's) go.
    static PRUNE: std::sync::Once = std::sync::Once::new();
    PRUNE.call_once(|| {
        let _ = state_store::mark_namespace();
        for dir in state_store::prune_dead_namespaces() {
            tracing::info!(
                "removed {}: its network namespace no longer exists",
                dir.display()
            );
        }
    });
    Ok(lock)
}

/// The system observed once; the data plane's tool must be there.
pub fn observe(netlink: &Netlink, dataplane: &dyn Dataplane) -> exit::Result<Observed> {
    let observed = natgw_linux::observe(netlink, dataplane).map_err(problem)?;
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

/// What every gateway command starts from: the lock, the system observed once, and
/// the gateway it should be.
pub struct Prepared {
    pub netlink: Netlink,
    pub dataplane: Box<dyn Dataplane>,
    pub observed: Observed,
    pub desired: Desired,
    /// How fresh detection disagrees with the recorded gateway (shown, not adopted).
    pub rediscovered: Vec<String>,
    /// The settings the desired gateway was resolved from.
    pub settings: Settings,
    /// Held until the command ends: bind it (`lock: _lock`), or it is released at once.
    pub lock: Lock,
}

/// Settings, privilege, lock, one observation, the desired gateway: in that order, so
/// bad input is reported before anything is read or locked. Roles the admin did not
/// name come from the recorded gateway, not from new detection.
pub fn prepare(args: &GatewayArgs, command: &str, read_only: bool) -> exit::Result<Prepared> {
    let settings = settings(args)?;
    require_privilege()?;
    let lock = lock(command)?;
    let netlink = connect()?;
    let mut dataplane = select(&settings, read_only, args);
    let mut observed = observe(&netlink, dataplane.as_ref())?;
    let settings = if read_only {
        recorded_settings(args, settings, &observed)
    } else {
        settings
    };
    let recorded = observed.state.as_ref().and_then(|s| s.gateway.as_ref());
    let recalled = remember::recall(&settings, recorded, &observed);
    if !recalled.gone.is_empty() && !read_only {
        return Err(problem(anyhow!(
            "the recorded {} no longer exist(s); name the interfaces anew with --public/--private (config keys `public`, `private`) to go on without, or run `natgw down`",
            recalled.gone.join(", ")
        )));
    }
    let effective = recalled.settings;
    let desired = desired(&effective, &observed)?;
    on_public(&mut dataplane, &desired, &mut observed)?;
    let mut gone: Vec<String> = recalled
        .gone
        .iter()
        .map(|g| format!("the recorded {g} no longer exists"))
        .collect();
    let rediscovered = if effective != settings {
        natgw_core::desired(&settings, &observed)
            .map(|fresh| remember::differences(&desired, &fresh))
            .unwrap_or_else(|e| vec![format!("detection alone now fails: {e}")])
    } else {
        Vec::new()
    };
    gone.extend(rediscovered);
    let rediscovered = gone;
    Ok(Prepared {
        netlink,
        dataplane,
        observed,
        desired,
        rediscovered,
        lock,
        settings: effective,
    })
}

/// The data plane: the one `up` is asked for, or for read commands given no flags the
/// one the last `up` installed.
pub fn select(settings: &Settings, read_only: bool, args: &GatewayArgs) -> Box<dyn Dataplane> {
    let recorded = natgw_linux::state_store::load()
        .ok()
        .flatten()
        .and_then(|s| s.gateway);
    let public = settings.public.clone().or_else(|| {
        recorded
            .as_ref()
            .map(|g| g.public.name.as_str().to_string())
    });
    let kind = match &recorded {
        Some(g) if read_only && args.is_empty() => g.dataplane.kind(),
        _ => settings.dataplane,
    };
    natgw_linux::dataplane::select(kind, public.as_deref())
}

/// `dataplane` on the public interface `desired` resolved, with the live state it
/// reads there (see `natgw_linux::dataplane::on_public`).
pub fn on_public(
    dataplane: &mut Box<dyn Dataplane>,
    desired: &Desired,
    observed: &mut Observed,
) -> exit::Result<()> {
    if let Some(known) =
        natgw_linux::dataplane::on_public(dataplane.as_ref(), desired.public.name.as_str())
    {
        if observed.nft_present {
            observed.table = known.observe().map_err(problem)?;
        }
        *dataplane = known;
    }
    Ok(())
}

/// For read commands given no flags: what the last `up` was asked for, so that they
/// check the gateway `up` made (`--masquerade`, another config file, ...).
pub fn recorded_settings(args: &GatewayArgs, parsed: Settings, observed: &Observed) -> Settings {
    match observed.state.as_ref().and_then(|s| s.settings.clone()) {
        Some(recorded) if args.is_empty() => recorded,
        _ => parsed,
    }
}
