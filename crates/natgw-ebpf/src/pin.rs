//! Programs that outlive the process that loaded them: every link (the public
//! interface's two, and one per private interface for hairpinning) and every natgw map
//! pinned in one directory of a bpffs, so a later command (status, down, a restarted
//! `natgw run`) reopens them and translations survive. The directory is the caller's
//! (natgw keeps one per network namespace).

use std::collections::BTreeMap;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::pin::PinError;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{ProgramError, TcAttachType};

use crate::maps::{BpfConfig, COUNTERS};
use crate::plane::{Plane, PlaneError, Side};

/// Pinned names of the public interface's two links.
/// In the order of a hand-over: ingress first. With fresh maps, a new egress program
/// next to the old ingress one could give out a port the old maps still map to
/// another host, and a reply would reach the wrong host; the other way round, replies
/// for the old bindings are only dropped until egress follows.
const LINKS: [(Side, &str); 2] = [
    (Side::Ingress, "link_ingress"),
    (Side::Egress, "link_egress"),
];
/// Pinned name prefix of the private interfaces' links (`link_private_lan0`).
pub const PRIVATE_LINK: &str = "link_private_";

/// The pinned name of a private interface's hairpin link.
pub fn private_link(ifname: &str) -> String {
    format!("{PRIVATE_LINK}{ifname}")
}
/// Pinned maps (names as the kernel knows them).
const CONFIG: &str = "natgw_config";
const COUNTERS_MAP: &str = "natgw_counters";
const RANGES: &str = "natgw_ranges";
const PORTS: &str = "natgw_ports";
const BINDINGS: &str = "natgw_bindings";
/// What must be pinned for natgw to reopen the programs: the public links and the
/// maps it reads (programs pinned by an older natgw without the binding events lack
/// the last two, and are loaded again).
pub const REQUIRED: [&str; 7] = [
    "link_egress",
    "link_ingress",
    CONFIG,
    COUNTERS_MAP,
    RANGES,
    crate::events::EVENTS_MAP,
    crate::events::LOGGING_MAP,
];

/// Whether everything in [`REQUIRED`] is pinned under `dir`.
pub fn complete(dir: &Path) -> bool {
    let have = pinned(dir);
    REQUIRED.iter().all(|r| have.iter().any(|h| h == r))
}

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Plane(#[from] PlaneError),
    #[error("attaching {name} to {ifname}")]
    Attach {
        name: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "link of {0} is not a TCX link (this kernel has no TCX; natgw needs Linux 6.6 or later)"
    )]
    NotTcx(&'static str),
    #[error("pinning {path}")]
    Pin {
        path: String,
        #[source]
        source: PinError,
    },
    #[error("pinned link {path}")]
    Link {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("pinned map {path}")]
    Map {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("removing {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn tc(side: Side) -> TcAttachType {
    match side {
        Side::Egress => TcAttachType::Egress,
        Side::Ingress | Side::Private => TcAttachType::Ingress,
    }
}

/// The maps new programs take over from running ones of the same code when the
/// configuration changes but not the layout of the state (`Plane::load_reusing`):
/// all of them. The sweeper's timer keeps running the first programs' sweep (the same
/// code), and the new programs see it started.
pub const KEPT: [&str; 11] = [
    CONFIG,
    COUNTERS_MAP,
    RANGES,
    BINDINGS,
    PORTS,
    "natgw_sessions",
    "natgw_fragments",
    "natgw_icmp_rate",
    "natgw_sweeper",
    crate::events::EVENTS_MAP,
    crate::events::LOGGING_MAP,
];

/// Attaches the public programs of `plane` to `public` and the hairpin program to
/// each of `private` (TCX), and pins the links and the maps under `dir` (an existing
/// directory on a bpffs). Call it inside the interfaces' namespace. Nothing stays
/// attached when this fails half-way: links not pinned yet close with the process.
///
/// Programs pinned under `dir` before are handed over, never left a gap: each new link
/// is attached behind the old one (which ends the chain), and the old one is unpinned
/// (detached) only then. A gap on the public interface would let private sources out
/// untranslated. The old programs' links to interfaces not in `private` are removed.
pub fn attach_pinned(
    plane: &mut Plane,
    public: &str,
    private: &[&str],
    dir: &Path,
) -> Result<(), PinnedError> {
    attach_and_pin(plane, public, private, dir, &[])
}

/// Puts `plane` (loaded with [`Plane::load_reusing`] and [`KEPT`] from `dir`) in the
/// place of the programs pinned under `dir`, on the same interfaces: the new links are
/// attached first (behind the old ones, which end the chain, so every packet meets
/// exactly one translator), then each old link is unpinned (detached) and the new
/// one pinned in its place. The bindings live on in the kept maps.
pub fn replace_pinned(
    plane: &mut Plane,
    public: &str,
    private: &[&str],
    dir: &Path,
) -> Result<(), PinnedError> {
    attach_and_pin(plane, public, private, dir, &KEPT)
}

fn attach_and_pin(
    plane: &mut Plane,
    public: &str,
    private: &[&str],
    dir: &Path,
    kept: &[&str],
) -> Result<(), PinnedError> {
    let links = attach_links(plane, public, private)?;
    let mut names: Vec<String> = links.iter().map(|(_, name)| name.clone()).collect();
    // Maps first: a pinned link without its maps could not be read back.
    names.extend(pin_maps(plane, public, dir, kept)?);
    names.extend(kept.iter().map(|k| k.to_string()));
    pin_links(links, dir)?;
    remove_all_but(dir, &names)
}

/// Removes every object pinned under `dir` that is not one of `names`: links of
/// interfaces no longer configured (unpinned, so detached), maps of an older build.
fn remove_all_but(dir: &Path, names: &[String]) -> Result<(), PinnedError> {
    for name in pinned(dir).into_iter().filter(|n| !names.contains(n)) {
        if name.starts_with("link_") {
            unpin_link(&dir.join(&name))?;
        } else {
            remove_pin(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// Unpins and closes a pinned link: the kernel releases it, which detaches it.
/// Nothing pinned there is success.
fn unpin_link(path: &Path) -> Result<(), PinnedError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => link.unpin().map(drop).map_err(|source| PinnedError::Io {
            path: path.display().to_string(),
            source,
        }),
        Err(_) if !path.exists() => Ok(()),
        Err(source) => Err(PinnedError::Link {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Attaches the programs; the links are not pinned yet (they close with the process).
fn attach_links(
    plane: &mut Plane,
    public: &str,
    private: &[&str],
) -> Result<Vec<(FdLink, String)>, PinnedError> {
    let mut links = Vec::new();
    let targets = LINKS
        .iter()
        .map(|&(side, name)| (side, public, name.to_string()))
        .chain(
            private
                .iter()
                .map(|&ifname| (Side::Private, ifname, private_link(ifname))),
        );
    for (side, ifname, name) in targets {
        let program = plane.program(side)?;
        let id = program
            .attach(ifname, tc(side))
            .map_err(|source| PinnedError::Attach {
                name: side.program(),
                ifname: ifname.to_string(),
                source,
            })?;
        let link = program
            .take_link(id)
            .map_err(|source| PinnedError::Attach {
                name: side.program(),
                ifname: ifname.to_string(),
                source,
            })?;
        let fd: FdLink = link
            .try_into()
            .map_err(|_| PinnedError::NotTcx(side.program()))?;
        links.push((fd, name));
    }
    Ok(links)
}

/// Pins natgw's maps of `plane` under `dir`, except `kept` (already pinned there); a
/// pin of the same name is replaced. Returns the names pinned.
fn pin_maps(
    plane: &mut Plane,
    public: &str,
    dir: &Path,
    kept: &[&str],
) -> Result<Vec<String>, PinnedError> {
    let info = plane
        .program(Side::Egress)?
        .info()
        .map_err(|source| PinnedError::Attach {
            name: Side::Egress.program(),
            ifname: public.to_string(),
            source,
        })?;
    let ids = info
        .map_ids()
        .map_err(|source| PinnedError::Attach {
            name: Side::Egress.program(),
            ifname: public.to_string(),
            source,
        })?
        .unwrap_or_default();
    let mut pinned_now = Vec::new();
    for id in ids {
        let map = MapData::from_id(id).map_err(|source| PinnedError::Map {
            path: format!("id {id}"),
            source,
        })?;
        let name = map
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_string))
            .unwrap_or_default();
        // Only natgw's own maps (not the object's .rodata/.bss).
        if !name.starts_with("natgw_") || kept.contains(&name.as_str()) {
            continue;
        }
        let path = dir.join(&name);
        remove_pin(&path)?;
        map.pin(&path).map_err(|source| PinnedError::Pin {
            path: path.display().to_string(),
            source,
        })?;
        pinned_now.push(name);
    }
    Ok(pinned_now)
}

/// Pins each link under its name; a link pinned there before is unpinned first, which
/// detaches it (the new one is already attached).
fn pin_links(links: Vec<(FdLink, String)>, dir: &Path) -> Result<(), PinnedError> {
    for (fd, name) in links {
        let path = dir.join(name);
        unpin_link(&path)?;
        fd.pin(&path).map_err(|source| PinnedError::Pin {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Removes a pinned object, if there is one.
fn remove_pin(path: &Path) -> Result<(), PinnedError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PinnedError::Io {
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether the public interface's two links are pinned under `dir`.
pub fn links_pinned(dir: &Path) -> bool {
    LINKS
        .iter()
        .all(|(_, name)| PinnedLink::from_pin(dir.join(name)).is_ok())
}

/// The names of the objects pinned under `dir` (empty when it does not exist).
pub fn pinned(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Detaches the pinned programs and removes every pinned object and `dir` itself.
/// Nothing pinned is success. Keeps going after an error and reports the first.
pub fn remove(dir: &Path) -> Result<(), PinnedError> {
    let mut first: Option<PinnedError> = stop_fast_path(dir).err();
    // The hairpin programs first and the public egress program last: a packet that
    // still met a private interface's program meets the public translator after it.
    let mut links: Vec<String> = pinned(dir)
        .into_iter()
        .filter(|n| n.starts_with("link_"))
        .collect();
    links.sort_by_key(|n| match n.as_str() {
        "link_egress" => 2,
        "link_ingress" => 1,
        _ => 0,
    });
    for name in &links {
        if let Err(e) = unpin_link(&dir.join(name)) {
            first.get_or_insert(e);
        }
    }
    for name in pinned(dir) {
        let path = dir.join(&name);
        if let Err(source) = std::fs::remove_file(&path) {
            first.get_or_insert(PinnedError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            first.get_or_insert(PinnedError::Io {
                path: dir.display().to_string(),
                source: e,
            });
        }
        _ => {}
    }
    first.map_or(Ok(()), Err)
}

/// Turns the fast path of the programs pinned under `dir` off, so that the private
/// interfaces' programs stop handing packets straight to the public interface: their
/// packets take the kernel's path again (and whatever translates there next) before
/// any program is detached. Programs of an older build (another config layout, no
/// fast path) are left as they are.
fn stop_fast_path(dir: &Path) -> Result<(), PinnedError> {
    let Ok(mut array) = config_map(dir) else {
        return Ok(());
    };
    match array.get(&0, 0) {
        Ok(mut c) if c.fast_ns != 0 => {
            c.fast_ns = 0;
            array.set(0, c, 0).map_err(map_err(dir, CONFIG))
        }
        _ => Ok(()),
    }
}

fn open(dir: &Path, name: &str) -> Result<MapData, PinnedError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| PinnedError::Map {
        path: path.display().to_string(),
        source,
    })
}

fn map_err(dir: &Path, name: &str) -> impl Fn(MapError) -> PinnedError {
    let path = dir.join(name).display().to_string();
    move |source| PinnedError::Map {
        path: path.clone(),
        source,
    }
}

/// The configuration the pinned programs run with.
pub fn config(dir: &Path) -> Result<BpfConfig, PinnedError> {
    config_map(dir)?.get(&0, 0).map_err(map_err(dir, CONFIG))
}

/// The pinned `natgw_config` (an error when it is another build's layout).
fn config_map(dir: &Path) -> Result<Array<MapData, BpfConfig>, PinnedError> {
    Array::try_from(Map::Array(open(dir, CONFIG)?)).map_err(map_err(dir, CONFIG))
}

/// The pinned programs' counters, summed over CPUs.
pub fn counters(dir: &Path) -> Result<BTreeMap<&'static str, u64>, PinnedError> {
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, COUNTERS_MAP)?))
            .map_err(map_err(dir, COUNTERS_MAP))?;
    COUNTERS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let values = array
                .get(&(i as u32), 0)
                .map_err(map_err(dir, COUNTERS_MAP))?;
            Ok((*name, values.iter().sum()))
        })
        .collect()
}

/// `struct range` in nat.bpf.c: per public address and protocol, the ports held and
/// a hint for a full range.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Range {
    used: u64,
    all_live_until: u64,
}

// SAFETY: plain integers, `repr(C)`, no padding.
unsafe impl aya::Pod for Range {}

/// Public endpoints held, by protocol number, summed over the pool's addresses
/// (natgw_ranges holds, per address, UDP, TCP and ICMP in that order).
pub fn bindings(dir: &Path) -> Result<BTreeMap<u8, u64>, PinnedError> {
    let array: Array<MapData, Range> =
        Array::try_from(Map::Array(open(dir, RANGES)?)).map_err(map_err(dir, RANGES))?;
    let pool = config(dir)?.pool_len;
    let mut by_proto = BTreeMap::new();
    for address in 0..pool {
        for (i, proto) in [17u8, 6, 1].into_iter().enumerate() {
            let range = array
                .get(&(address * 3 + i as u32), 0)
                .map_err(map_err(dir, RANGES))?;
            *by_proto.entry(proto).or_insert(0) += range.used;
        }
    }
    Ok(by_proto)
}

/// The private endpoint whose live binding holds the public endpoint `public` of
/// protocol `proto` (6, 17, 1) now, per the maps pinned under `dir`; `None` when no
/// binding holds it (or it expired and is not freed yet).
pub fn holder(
    dir: &Path,
    proto: u8,
    public: std::net::SocketAddrV4,
) -> Result<Option<std::net::SocketAddrV4>, PinnedError> {
    let config = config(dir)?;
    let wanted = u32::from_ne_bytes(public.ip().octets());
    let Some(address) = config.pool[..config.pool_len as usize]
        .iter()
        .position(|a| *a == wanted)
    else {
        return Ok(None);
    };
    let Some(slot) = [17u8, 6, 1].iter().position(|p| *p == proto) else {
        return Ok(None);
    };
    // natgw_ports: per pool address and protocol, 65,536 `struct port` {owner, live}.
    let ports: Array<MapData, [u64; 2]> =
        Array::try_from(Map::Array(open(dir, PORTS)?)).map_err(map_err(dir, PORTS))?;
    let index = (address * 3 + slot) as u32 * 65536 + u32::from(public.port());
    let owner = ports.get(&index, 0).map_err(map_err(dir, PORTS))?[0];
    if owner == 0 {
        return Ok(None);
    }
    // The owner is a `struct endpoint` (address and port in network order).
    let key = owner.to_ne_bytes();
    let bindings: HashMap<MapData, [u8; 8], [u8; 16]> =
        HashMap::try_from(Map::HashMap(open(dir, BINDINGS)?)).map_err(map_err(dir, BINDINGS))?;
    let Ok(binding) = bindings.get(&key, 0) else {
        return Ok(None);
    };
    let expires = u64::from_ne_bytes(binding[8..16].try_into().expect("8 bytes"));
    if expires <= clock_ns(&config) {
        return Ok(None);
    }
    let address = std::net::Ipv4Addr::new(key[0], key[1], key[2], key[3]);
    Ok(Some(std::net::SocketAddrV4::new(
        address,
        u16::from_be_bytes([key[4], key[5]]),
    )))
}

/// The programs' clock: the test clock when set, else CLOCK_MONOTONIC.
fn clock_ns(config: &BpfConfig) -> u64 {
    if config.now_ns != 0 {
        return config.now_ns;
    }
    crate::monotonic_now().as_nanos() as u64
}
