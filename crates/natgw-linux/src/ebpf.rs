//! The eBPF data plane: natgw's table without IPv4 NAT (the filter, IPv6) plus the
//! translator's programs attached to the public interface, their links and maps
//! pinned per network namespace (`state_store::bpf_dir`) so that they outlive the
//! command that loaded them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use natgw_core::dataplane::{EbpfPlane, Filtering, MARK, MARK_MASK, OUTBOUND_MARK};
use natgw_core::observed::LiveTable;
use natgw_core::render::render;
use natgw_core::Desired;
use natgw_ebpf::pin;
use serde::Serialize;

use crate::dataplane::{Dataplane, DataplaneError, Snapshot};
use crate::nft::{self, Counter};
use crate::state_store;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("the gateway's eBPF configuration: {0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] state_store::StateError),
    #[error(transparent)]
    Plane(#[from] natgw_ebpf::PlaneError),
    #[error(transparent)]
    Pinned(#[from] pin::PinnedError),
}

/// Set by a process that reads the programs' binding events (`natgw run
/// --log-mappings`): programs it loads report bindings from their first packet, not
/// only once it has found their ring.
static FOLLOWS_EVENTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process writes the programs' binding events to the mapping log.
pub fn follow_events() {
    FOLLOWS_EVENTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The eBPF data plane of the gateway whose public interface is `public` (`None`
/// when unknown, e.g. `down` without a record: it then only removes).
pub struct Ebpf {
    pub public: Option<String>,
    /// Programs `check` had the kernel's verifier accept, kept for an `install` of the
    /// same configuration: each load costs a verification (about a second on a debug
    /// build under load), which a reload would otherwise pay twice.
    verified: RefCell<Option<(natgw_ebpf::BpfConfig, natgw_ebpf::Plane)>>,
}

/// The translator's configuration for `desired`.
pub fn nat_config(desired: &Desired, plane: &EbpfPlane) -> Result<natgw_nat::Config, EbpfError> {
    let private = private_v4(desired);
    let icmp_source = desired
        .private
        .iter()
        .flat_map(|i| &i.addresses)
        .find_map(|a| match a.addr() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    let config = natgw_nat::Config {
        private,
        pool: natgw_core::dataplane::v4_pool(&desired.snat.addresses()),
        ports: plane.ports.first..=plane.ports.last,
        filtering: match plane.filtering {
            Filtering::EndpointIndependent => natgw_nat::Filtering::EndpointIndependent,
            Filtering::AddressDependent => natgw_nat::Filtering::AddressDependent,
            Filtering::AddressAndPortDependent => natgw_nat::Filtering::AddressAndPortDependent,
        },
        timeouts: natgw_nat::Timeouts {
            udp: secs(desired.timeouts.udp),
            tcp_established: secs(desired.timeouts.tcp_established),
            tcp_transitory: secs(desired.timeouts.tcp_transitory),
            ..natgw_nat::Timeouts::default()
        },
        icmp_source,
    };
    config
        .validate()
        .map_err(|e| EbpfError::Config(e.to_string()))?;
    Ok(test_timeouts(config))
}

/// Test hook: `NATGW_TEST_EBPF_TIMEOUT_MS=2000` gives every binding and session of the
/// programs that lifetime (far below the RFC minimums the config enforces), so that
/// end-to-end tests see bindings end within seconds.
const TIMEOUT_ENV: &str = "NATGW_TEST_EBPF_TIMEOUT_MS";

fn test_timeouts(mut config: natgw_nat::Config) -> natgw_nat::Config {
    if let Some(ms) = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let t = Duration::from_millis(ms);
        config.timeouts.udp = t;
        config.timeouts.tcp_established = t;
        config.timeouts.tcp_transitory = t;
        config.timeouts.icmp = t;
    }
    config
}

/// What the pinned programs are doing, for status, metrics and doctor.
#[derive(Debug, Clone, Serialize)]
pub struct PlaneStatus {
    /// Where the links and maps are pinned.
    pub pin_dir: String,
    /// The objects pinned there.
    pub pinned: Vec<String>,
    /// Both links pinned.
    pub links_pinned: bool,
    /// Program names attached (TCX) to the public interface, egress then ingress.
    pub attached: Vec<String>,
    /// The programs' counters, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Public endpoints in use by protocol name, and how many the range and pool allow
    /// per protocol.
    pub bindings: BTreeMap<String, u64>,
    pub bindings_capacity: u64,
}

/// Reads the pinned programs' state; `None` when nothing is pinned.
pub fn status(public: Option<&str>) -> Result<Option<PlaneStatus>, EbpfError> {
    let dir = state_store::bpf_dir()?;
    let pinned = pin::pinned(&dir);
    if pinned.is_empty() {
        return Ok(None);
    }
    let attached = public.map(attached).unwrap_or_default();
    let counters = pin::counters(&dir).unwrap_or_default();
    let bindings = pin::bindings(&dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(proto, n)| {
            let name = match proto {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                p => format!("proto {p}"),
            };
            (name, n)
        })
        .collect();
    let capacity = pin::config(&dir)
        .map(|c| u64::from(c.pool_len) * (u64::from(c.port_hi) - u64::from(c.port_lo) + 1))
        .unwrap_or(0);
    Ok(Some(PlaneStatus {
        pin_dir: dir.display().to_string(),
        links_pinned: pin::links_pinned(&dir),
        pinned,
        attached,
        counters,
        bindings,
        bindings_capacity: capacity,
    }))
}

/// What doctor weighs about the eBPF plane of this namespace.
pub fn doctor_observed(public: &str, up: bool) -> natgw_core::doctor::ebpf::EbpfObserved {
    let kernel = kernel_release();
    let status = status(Some(public)).ok().flatten();
    let busiest = status
        .as_ref()
        .and_then(|s| s.bindings.values().copied().max())
        .unwrap_or(0);
    natgw_core::doctor::ebpf::EbpfObserved {
        version: natgw_core::doctor::ebpf::kernel_version(&kernel),
        kernel,
        btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        missing_capabilities: crate::privilege::missing_for_ebpf()
            .into_iter()
            .map(String::from)
            .collect(),
        bpffs: state_store::is_bpffs(std::path::Path::new(state_store::BPFFS)),
        bpffs_path: state_store::BPFFS.into(),
        public: public.into(),
        attached: attached(public),
        up,
        pinned: status
            .as_ref()
            .map(|s| s.pinned.clone())
            .unwrap_or_default(),
        expected: pin::REQUIRED.iter().map(|s| s.to_string()).collect(),
        busiest,
        capacity: status.as_ref().map_or(0, |s| s.bindings_capacity),
    }
}

/// The private endpoint that the eBPF plane's live binding of `public` (protocol
/// number `proto`) belongs to, if the programs of this namespace have one.
pub fn live_holder(proto: u8, public: std::net::SocketAddrV4) -> Option<std::net::SocketAddrV4> {
    let dir = state_store::bpf_dir().ok()?;
    pin::holder(&dir, proto, public).ok().flatten()
}

/// Every eBPF program on the TC hooks (TCX and old-style clsact filters, ingress and
/// egress) of `interfaces`, for doctor's `tc-programs` check. An interface that does
/// not exist is left out.
pub fn tc_hooks(
    netlink: &crate::netlink::Netlink,
    interfaces: &[String],
) -> Vec<natgw_core::doctor::tc_programs::Hook> {
    use natgw_core::doctor::tc_programs::{Direction, Hook, Program, TcFilter};
    let links = netlink.links().unwrap_or_default();
    let xdp = netlink.xdp_programs().unwrap_or_default();
    let program = |id: u32, fallback: String| Program {
        id,
        name: natgw_ebpf::plane::program_name(id).unwrap_or(fallback),
    };
    let mut hooks = Vec::new();
    for name in interfaces {
        let Some(link) = links.iter().find(|l| &l.name == name) else {
            continue;
        };
        for (direction, ingress) in [(Direction::Ingress, true), (Direction::Egress, false)] {
            let tcx = natgw_ebpf::plane::tcx_programs(name, ingress)
                .unwrap_or_default()
                .into_iter()
                .map(|(id, name)| Program { id, name })
                .collect();
            hooks.push(Hook {
                interface: name.clone(),
                direction,
                tcx,
                tc: netlink
                    .bpf_filters(link.index, ingress)
                    .into_iter()
                    .map(|f| TcFilter {
                        program: program(f.program.id, f.program.name),
                        ..f
                    })
                    .collect(),
                xdp: xdp
                    .iter()
                    .find(|(index, _)| ingress && *index == link.index)
                    .map(|(_, id)| program(*id, String::new())),
            });
        }
    }
    hooks
}

/// Test hook: `NATGW_TEST_OSRELEASE=5.10.0` makes natgw believe it runs on that kernel,
/// to prove that a kernel without what the programs need is refused before anything
/// changes.
const OSRELEASE_ENV: &str = "NATGW_TEST_OSRELEASE";

fn kernel_release() -> String {
    std::env::var(OSRELEASE_ENV)
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

/// The index of interface `ifname` in this namespace.
fn ifindex(ifname: &str) -> Result<u32, EbpfError> {
    let missing = |e: std::io::Error| EbpfError::Config(format!("interface {ifname}: {e}"));
    let c = std::ffi::CString::new(ifname).map_err(|e| missing(std::io::Error::other(e)))?;
    // SAFETY: `c` is a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(missing(std::io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// Names of natgw's programs attached to `ifname` (TCX), egress then ingress.
fn attached(ifname: &str) -> Vec<String> {
    [natgw_ebpf::Side::Egress, natgw_ebpf::Side::Ingress]
        .into_iter()
        .flat_map(|side| natgw_ebpf::plane::attached(ifname, side).unwrap_or_default())
        .filter(|name| name.starts_with("natgw_"))
        .collect()
}

/// Whether both programs are pinned and attached to `public`.
pub fn running(public: &str) -> bool {
    state_store::bpf_dir().is_ok_and(|dir| pin::links_pinned(&dir))
        && attached(public) == ["natgw_egress", "natgw_ingress"]
}

/// Whether anything of the eBPF plane is pinned in this namespace.
pub fn has_pins() -> bool {
    state_store::bpf_dir().is_ok_and(|dir| !pin::pinned(&dir).is_empty())
}

/// Detaches and removes everything pinned in this namespace.
pub fn remove_programs() -> Result<(), EbpfError> {
    let dir = state_store::bpf_dir()?;
    Ok(pin::remove(&dir)?)
}

impl Ebpf {
    pub fn new(public: Option<String>) -> Ebpf {
        Ebpf {
            public,
            verified: RefCell::new(None),
        }
    }

    /// What identifies the running programs: attached to the public interface with
    /// the pinned configuration (a digest of it), or absent.
    fn programs_fingerprint(&self) -> String {
        let Ok(dir) = state_store::bpf_dir() else {
            return "unknown".into();
        };
        let Some(public) = self.public.as_deref() else {
            return "absent".into();
        };
        if !running(public) {
            return format!("not attached to {public}");
        }
        match pin::config(&dir) {
            Ok(c) => {
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(format!("{c:?}").as_bytes());
                let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("attached to {public}, config {hex}")
            }
            Err(_) => "maps missing".into(),
        }
    }

    /// Loads, attaches and pins the programs for `desired` unless the pinned ones
    /// already run exactly that configuration on the right interface (then their
    /// bindings are kept).
    fn ensure_programs(&self, desired: &Desired) -> Result<(), EbpfError> {
        let (config, wanted) = programs_config(desired)?;
        let public = desired.public.name.as_str();
        let dir: PathBuf = state_store::bpf_dir_created()?;
        if already_running(desired, &dir, &wanted) {
            tracing::info!("eBPF programs already attached with this configuration; kept");
            return Ok(());
        }
        let private: Vec<&str> = desired.private.iter().map(|i| i.name.as_str()).collect();
        // Timeouts, filtering or the mark changed, not what the state means: new
        // programs take over the maps, and the bindings live on.
        let intact = same_private_links(desired, &dir) && running(public) && pin::complete(&dir);
        let same_layout = pin::config(&dir).is_ok_and(|c| c.same_layout(&wanted));
        if let (true, Some(tag)) = (
            intact && same_layout,
            natgw_ebpf::plane::running_tag(public),
        ) {
            match natgw_ebpf::Plane::load_reusing(&config, wanted, &dir, &pin::KEPT, tag)
                .map_err(EbpfError::from)
                .and_then(|mut loaded| {
                    Ok(pin::replace_pinned(&mut loaded, public, &private, &dir)?)
                }) {
                Ok(()) => {
                    tracing::info!(
                        interface = public,
                        "eBPF programs reloaded with the new configuration; bindings kept"
                    );
                    return Ok(());
                }
                Err(e) => tracing::warn!(
                    error = %crate::apply::error_chain(&e),
                    "cannot hand the bindings to the new programs; loading them afresh"
                ),
            }
        }
        // A reader of the old programs' binding events (natgw run --log-mappings),
        // or this process, follows the new ones from their first binding.
        let logging = natgw_ebpf::events::logging(&dir)
            || FOLLOWS_EVENTS.load(std::sync::atomic::Ordering::Relaxed);
        // Loaded (and verified) while the old programs still translate; they are
        // replaced link by link, with no moment without a translator.
        let checked = self.verified.borrow_mut().take();
        let mut loaded = match checked {
            Some((verified, plane)) if verified == wanted => plane,
            _ => natgw_ebpf::Plane::load_masked(&config, MARK, MARK_MASK)?,
        };
        loaded.set_config(wanted)?;
        loaded.set_logging(logging)?;
        // On failure the links not pinned yet close with this process; the pinned
        // ones (the old programs', or new ones already handed over) stay, so every
        // interface keeps a translator. A rollback loads the previous programs; `down`
        // removes whatever is pinned.
        pin::attach_pinned(&mut loaded, public, &private, &dir)?;
        tracing::info!(interface = public, "eBPF programs attached and pinned");
        Ok(())
    }

    fn observe_with(&self, table: Option<LiveTable>) -> Option<LiveTable> {
        table.map(|t| LiveTable {
            fingerprint: format!("{}; ebpf {}", t.fingerprint, self.programs_fingerprint()),
        })
    }
}

/// The translator's configuration for `desired`, and as the pinned config map holds it
/// (with the public interface's index as it is now: recreated, it is another one, and
/// the programs are loaded again).
fn programs_config(
    desired: &Desired,
) -> Result<(natgw_nat::Config, natgw_ebpf::BpfConfig), EbpfError> {
    let plane = desired
        .dataplane
        .ebpf()
        .ok_or_else(|| EbpfError::Config("the desired gateway has no eBPF data plane".into()))?;
    let config = nat_config(desired, plane)?;
    let pinned = natgw_ebpf::BpfConfig::new(&config, MARK, MARK_MASK)
        .map_err(natgw_ebpf::PlaneError::from)?
        .with_outbound(
            ifindex(desired.public.name.as_str())?,
            if plane.bypass_conntrack {
                OUTBOUND_MARK
            } else {
                0
            },
        );
    if !plane.fast_path {
        return Ok((config, pinned));
    }
    let private = desired
        .private
        .iter()
        .map(|i| ifindex(i.name.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let pinned = pinned
        .with_fast_path(
            &private,
            std::time::Duration::from_secs(natgw_core::dataplane::FAST_IDLE_SECS),
            plane.route_mtu,
        )
        .map_err(natgw_ebpf::PlaneError::from)?;
    Ok((config, pinned))
}

/// Whether the hairpin program is pinned for exactly the private interfaces of `desired`.
fn same_private_links(desired: &Desired, dir: &std::path::Path) -> bool {
    let mut want: Vec<String> = desired
        .private
        .iter()
        .map(|i| pin::private_link(i.name.as_str()))
        .collect();
    want.sort();
    let pinned_private: Vec<String> = pin::pinned(dir)
        .into_iter()
        .filter(|n| n.starts_with(pin::PRIVATE_LINK))
        .collect();
    want == pinned_private
}

/// Whether the programs pinned in `dir` already run `desired` as `wanted`: attached
/// to its public interface with that configuration, the hairpin program on exactly its
/// private interfaces.
fn already_running(
    desired: &Desired,
    dir: &std::path::Path,
    wanted: &natgw_ebpf::BpfConfig,
) -> bool {
    same_private_links(desired, dir) && runs(desired.public.name.as_str(), dir, wanted)
}

/// Whether the programs pinned in `dir` run on `public` with `wanted`.
fn runs(public: &str, dir: &std::path::Path, wanted: &natgw_ebpf::BpfConfig) -> bool {
    running(public) && pin::config(dir).is_ok_and(|c| c == *wanted)
}

/// The private IPv4 prefixes: what the programs translate.
fn private_v4(desired: &Desired) -> Vec<ipnet::Ipv4Net> {
    desired
        .private_prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// On a switch to the nftables plane, while the programs still run: the flows
/// conntrack tracked untranslated under them (the programs translated after netfilter)
/// would stay untranslated under the new table's established rule. Forgotten, their
/// next packet is a new flow that the table's SNAT translates (the programs pass it).
pub(crate) fn forget_untranslated_flows(desired: &Desired) {
    let public = natgw_core::dataplane::v4_pool(&desired.snat.addresses());
    match crate::conntrack::forget_untranslated(&private_v4(desired), &public) {
        Ok(n) => tracing::info!(flows = n, "untranslated flows of the eBPF plane forgotten"),
        Err(e) => tracing::warn!(error = %e, "cannot forget the eBPF plane's untranslated flows"),
    }
}

/// What either plane saves before a change: natgw's table and, when natgw's programs
/// run, the recorded gateway they run for. A change may replace or remove them
/// (another config reloads them, a switch to the nftables plane detaches them): a
/// rollback loads them again.
pub(crate) fn snapshot(changing_to: &Desired) -> Result<Snapshot, DataplaneError> {
    Ok(Snapshot {
        table: nft::list_table()?,
        programs: running_gateway().map(Box::new),
        changing_to: Box::new(changing_to.clone()),
    })
}

/// Puts back what [`snapshot`] saw, for either plane. Programs never run under an
/// nftables plane's table (they would translate a second time), nor without any table;
/// under the eBPF plane's table the programs that ran before are loaded again: that
/// table has no NAT rule, so without them private sources would leave untranslated.
pub(crate) fn restore(snapshot: &Snapshot) -> Result<(), DataplaneError> {
    let nat_table = |t: &str| t.contains("snat ip to") || t.contains("masquerade");
    let ebpf_table = snapshot.table.as_deref().is_some_and(|t| !nat_table(t));
    if !ebpf_table && has_pins() {
        // Back from the eBPF plane, as a switch to the nftables plane goes: the table
        // first (until it is in, the programs translate), then the flows conntrack
        // tracked untranslated under the programs are forgotten, then the programs go.
        let table = nft::restore(snapshot.table.as_deref());
        // Should nft fail, the programs stay unless the live table translates itself.
        let translated = table.is_ok()
            || nft::list_table()
                .ok()
                .flatten()
                .is_some_and(|t| nat_table(&t));
        if translated {
            if snapshot.table.is_some() {
                forget_untranslated_flows(&snapshot.changing_to);
            }
            remove_programs().map_err(ebpf_error)?;
        }
        return Ok(table?);
    }
    if let (true, Some(previous)) = (ebpf_table, &snapshot.programs) {
        // Before the table: programs under whatever table is there now translate
        // (a packet netfilter already translated has a public source and is passed).
        let public = Some(previous.public.name.as_str().to_string());
        Ebpf::new(public)
            .ensure_programs(previous)
            .map_err(ebpf_error)?;
    }
    nft::restore(snapshot.table.as_deref())?;
    Ok(())
}

/// The recorded gateway, when its programs are the ones running now.
fn running_gateway() -> Option<Desired> {
    let gateway = state_store::load().ok().flatten()?.gateway?;
    let (_, wanted) = programs_config(&gateway).ok()?;
    let dir = state_store::bpf_dir().ok()?;
    runs(gateway.public.name.as_str(), &dir, &wanted).then_some(gateway)
}

fn ebpf_error(e: EbpfError) -> DataplaneError {
    DataplaneError::Ebpf(crate::apply::error_chain(&e))
}

impl Dataplane for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn available(&self) -> bool {
        nft::binary().is_some()
    }

    fn observe(&self) -> Result<Option<LiveTable>, DataplaneError> {
        Ok(self.observe_with(nft::live_table()?))
    }

    fn check(&self, desired: &Desired) -> Result<(), DataplaneError> {
        if desired.dataplane.ebpf().is_some() {
            // The kernel's verifier judges the programs before anything changes (they
            // are loaded, not attached, and kept for `install`), unless they already run
            // this very configuration (a repair of the table): it accepted them then.
            let (config, wanted) = programs_config(desired).map_err(ebpf_error)?;
            let running =
                state_store::bpf_dir().is_ok_and(|dir| already_running(desired, &dir, &wanted));
            if !running {
                let loaded = natgw_ebpf::Plane::load_masked(&config, MARK, MARK_MASK)
                    .map_err(|e| ebpf_error(EbpfError::Plane(e)))?;
                *self.verified.borrow_mut() = Some((wanted, loaded));
            }
        }
        Ok(nft::check(&render(desired).text)?)
    }

    fn snapshot(&self, changing_to: &Desired) -> Result<Snapshot, DataplaneError> {
        snapshot(changing_to)
    }

    fn install(&self, desired: &Desired) -> Result<LiveTable, DataplaneError> {
        // Programs first: the new table has no NAT rule, so until they run private
        // sources would leave untranslated. Under an older table they are harmless (a
        // packet its SNAT translated has a public source, and is passed); that table
        // may drop what they admit until the new one, with the mark's accept rule, is in.
        self.ensure_programs(desired).map_err(ebpf_error)?;
        nft::replace(&render(desired).text)?;
        let public = Ebpf::new(Some(desired.public.name.as_str().to_string()));
        public
            .observe_with(nft::live_table()?)
            .ok_or(DataplaneError::Vanished {
                what: "table inet natgw",
            })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<(), DataplaneError> {
        restore(snapshot)
    }

    fn remove(&self) -> Result<(), DataplaneError> {
        // Programs first: without the table's filter their admitted packets would
        // meet no accept rule, but without the programs nothing is translated.
        let programs = remove_programs().map_err(ebpf_error);
        let table = nft::delete_table().map_err(DataplaneError::from);
        programs.and(table)
    }

    fn has_leftovers(&self) -> bool {
        has_pins()
    }

    fn public(&self) -> Option<&str> {
        self.public.as_deref()
    }

    fn counters(&self) -> Result<Vec<Counter>, DataplaneError> {
        Ok(nft::counters()?)
    }
}
