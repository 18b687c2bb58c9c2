//! Programs that outlive the process that loaded them: both links and every natgw map
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

/// Pinned names of the two links.
const LINKS: [(Side, &str); 2] = [
    (Side::Egress, "link_egress"),
    (Side::Ingress, "link_ingress"),
];
/// Pinned maps (names as the kernel knows them).
const CONFIG: &str = "natgw_config";
const COUNTERS_MAP: &str = "natgw_counters";
const EXTERNAL: &str = "natgw_external";
/// What must be pinned for natgw to reopen the programs: both links and the maps it
/// reads.
pub const REQUIRED: [&str; 5] = [
    "link_egress",
    "link_ingress",
    CONFIG,
    COUNTERS_MAP,
    EXTERNAL,
];

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
        Side::Ingress => TcAttachType::Ingress,
    }
}

/// Attaches both programs of `plane` to `ifname` (TCX) and pins the links and the
/// maps under `dir` (an existing directory on a bpffs). Call it inside the
/// interface's namespace. Nothing stays attached when this fails half-way: links not
/// pinned yet close with the process.
pub fn attach_pinned(plane: &mut Plane, ifname: &str, dir: &Path) -> Result<(), PinnedError> {
    let mut links = Vec::new();
    for (side, _) in LINKS {
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
        links.push(fd);
    }
    // Maps first: a pinned link without its maps could not be read back.
    let info = plane
        .program(Side::Egress)?
        .info()
        .map_err(|source| PinnedError::Attach {
            name: Side::Egress.program(),
            ifname: ifname.to_string(),
            source,
        })?;
    let ids = info
        .map_ids()
        .map_err(|source| PinnedError::Attach {
            name: Side::Egress.program(),
            ifname: ifname.to_string(),
            source,
        })?
        .unwrap_or_default();
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
        if !name.starts_with("natgw_") {
            continue;
        }
        let path = dir.join(&name);
        map.pin(&path).map_err(|source| PinnedError::Pin {
            path: path.display().to_string(),
            source,
        })?;
    }
    for (fd, (_, name)) in links.into_iter().zip(LINKS) {
        let path = dir.join(name);
        fd.pin(&path).map_err(|source| PinnedError::Pin {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Whether both links are pinned under `dir`.
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
    let mut first: Option<PinnedError> = None;
    for (_, name) in LINKS {
        let path = dir.join(name);
        match PinnedLink::from_pin(&path) {
            // Unpinned and closed: the kernel releases the link, which detaches it.
            Ok(link) => match link.unpin() {
                Ok(fd) => drop(fd),
                Err(source) => {
                    first.get_or_insert(PinnedError::Io {
                        path: path.display().to_string(),
                        source,
                    });
                }
            },
            Err(_) if !path.exists() => {}
            Err(source) => {
                first.get_or_insert(PinnedError::Link {
                    path: path.display().to_string(),
                    source,
                });
            }
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
    let array: Array<MapData, BpfConfig> =
        Array::try_from(Map::Array(open(dir, CONFIG)?)).map_err(map_err(dir, CONFIG))?;
    array.get(&0, 0).map_err(map_err(dir, CONFIG))
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

/// `struct endpoint` in nat.bpf.c: the key of the public-endpoint index.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    addr: u32,
    port: u16,
    proto: u8,
    _pad: u8,
}

// SAFETY: plain integers, `repr(C)`, no padding (`_pad` fills the only gap).
unsafe impl aya::Pod for Endpoint {}

/// Public endpoints in use, by protocol number (entries whose timer has not freed
/// them yet; an expired one is reused by the next packet that needs it).
pub fn bindings(dir: &Path) -> Result<BTreeMap<u8, u64>, PinnedError> {
    let map: HashMap<MapData, Endpoint, Endpoint> =
        HashMap::try_from(Map::HashMap(open(dir, EXTERNAL)?)).map_err(map_err(dir, EXTERNAL))?;
    let mut by_proto = BTreeMap::new();
    for key in map.keys() {
        let key = key.map_err(map_err(dir, EXTERNAL))?;
        *by_proto.entry(key.proto).or_insert(0) += 1;
    }
    Ok(by_proto)
}
