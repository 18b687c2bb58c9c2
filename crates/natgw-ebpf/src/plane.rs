//! Loading the programs, configuring them, running packets through them with
//! BPF_PROG_TEST_RUN, and reading their counters.

use std::collections::BTreeMap;
use std::time::Duration;

use aya::maps::{Array, HashMap, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

use crate::events::{BindingEvent, EVENTS_BYTES, EVENTS_MAP, LOGGING_MAP};
use crate::maps::{BpfConfig, LayoutError, COUNTERS};
use crate::OBJECT;

/// TC verdicts (linux/pkt_cls.h).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// Sent elsewhere (hairpins, and ICMP errors back to private hosts).
pub const TC_ACT_REDIRECT: u32 = 7;

/// Which program: the public interface's way out or way in, or the private
/// interfaces' way in (hairpinning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Egress,
    Ingress,
    /// `natgw_private`, at the ingress of a private interface.
    Private,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Egress, Side::Ingress, Side::Private];

    pub fn program(self) -> &'static str {
        match self {
            Self::Egress => "natgw_egress",
            Self::Ingress => "natgw_ingress",
            Self::Private => "natgw_private",
        }
    }

    fn tc(self) -> TcAttachType {
        match self {
            Self::Egress => TcAttachType::Egress,
            Self::Ingress | Self::Private => TcAttachType::Ingress,
        }
    }
}

/// The names of the programs attached to `ifname` on one side (TCX), for checks that
/// nothing is left behind. Call it inside the interface's namespace.
pub fn attached(ifname: &str, side: Side) -> Result<Vec<String>, PlaneError> {
    let (_, progs) =
        SchedClassifier::query_tcx(ifname, side.tc()).map_err(|source| PlaneError::Program {
            name: side.program(),
            source,
        })?;
    Ok(progs
        .iter()
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect())
}

/// Every program attached (TCX) to `ifname` on one hook, natgw's or not, in the order
/// the kernel runs them: (id, name). Call it inside the interface's namespace.
pub fn tcx_programs(ifname: &str, ingress: bool) -> Result<Vec<(u32, String)>, PlaneError> {
    let (side, tc) = if ingress {
        (Side::Ingress, TcAttachType::Ingress)
    } else {
        (Side::Egress, TcAttachType::Egress)
    };
    let (_, progs) =
        SchedClassifier::query_tcx(ifname, tc).map_err(|source| PlaneError::Program {
            name: side.program(),
            source,
        })?;
    Ok(progs
        .iter()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect())
}

/// The kernel's tag (a digest of its code) of the `natgw_egress` attached to
/// `ifname`, if one is.
pub fn running_tag(ifname: &str) -> Option<u64> {
    let (_, progs) = SchedClassifier::query_tcx(ifname, TcAttachType::Egress).ok()?;
    progs
        .iter()
        .find(|p| p.name_as_str() == Some(Side::Egress.program()))
        .map(|p| p.tag())
}

/// The kernel's name of program `id` (a tc filter's own name is its object file's).
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("the running programs are another build's: their maps cannot be taken over")]
    OtherCode,
    #[error("the kernel refused program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The outcome of one packet through a program (BPF_PROG_TEST_RUN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// TC_ACT_OK or TC_ACT_SHOT.
    pub verdict: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// `skb->mark` afterwards.
    pub mark: u32,
}

/// Entries in the translation maps (see [`Plane::state_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    /// Private endpoint -> binding.
    pub bindings: usize,
    /// Public endpoint -> private endpoint (one per binding).
    pub public_endpoints: usize,
    /// TCP sessions, and filter entries of the dependent filtering modes.
    pub sessions: usize,
}

/// The loaded (not necessarily attached) programs and their maps.
pub struct Plane {
    ebpf: Ebpf,
    config: BpfConfig,
}

/// Size of `struct __sk_buff` (the context BPF_PROG_TEST_RUN takes and returns), and
/// where `mark` sits in it.
const SK_BUFF_LEN: usize = 192;
const SK_BUFF_MARK: usize = 8;
/// The programs' clock for model time 0 (their clock must not be 0: that means "real").
const CLOCK_BASE_NS: u64 = 1_000_000_000;

impl Plane {
    /// Loads the programs with `cfg`; admitted inbound packets get `skb->mark = mark`
    /// (the whole mark: [`Plane::load_masked`] sets only some bits).
    pub fn load(cfg: &natgw_nat::Config, mark: u32) -> Result<Self, PlaneError> {
        Self::load_masked(cfg, mark, u32::MAX)
    }

    /// Loads the programs with `cfg`; admitted inbound packets get the bits `mask` of
    /// their mark set to `mark`'s and keep the others (`meta mark & mask == mark`).
    pub fn load_masked(cfg: &natgw_nat::Config, mark: u32, mask: u32) -> Result<Self, PlaneError> {
        Self::load_sized(cfg, mark, mask, EVENTS_BYTES)
    }

    /// [`Plane::load_masked`] with a binding-event ring of `events_bytes` (a power of
    /// two, at least a page; tests fill a small one).
    pub fn load_sized(
        cfg: &natgw_nat::Config,
        mark: u32,
        mask: u32,
        events_bytes: u32,
    ) -> Result<Self, PlaneError> {
        Self::load_with(
            cfg,
            BpfConfig::new(cfg, mark & mask, mask)?,
            events_bytes,
            None,
        )
    }

    /// Loads the programs running `wanted` (made for `cfg`), with the maps named in
    /// `kept` taken over from `dir` where running programs pinned them (their bindings,
    /// sessions, counters and events stay; see [`BpfConfig::same_layout`] for when
    /// that is sound). Only when these programs are the running ones' code
    /// (`running_tag`, the kernel's tag of the running `natgw_egress`: another natgw
    /// version may lay its maps out differently); else [`PlaneError::OtherCode`],
    /// nothing written. `wanted` is written into the kept `natgw_config` at once and
    /// whole, so the old programs run with it until the new ones replace them.
    pub fn load_reusing(
        cfg: &natgw_nat::Config,
        wanted: BpfConfig,
        dir: &std::path::Path,
        kept: &[&'static str],
        running_tag: u64,
    ) -> Result<Self, PlaneError> {
        Self::load_with(cfg, wanted, EVENTS_BYTES, Some((dir, kept, running_tag)))
    }

    fn load_with(
        cfg: &natgw_nat::Config,
        config: BpfConfig,
        events_bytes: u32,
        reuse: Option<(&std::path::Path, &[&'static str], u64)>,
    ) -> Result<Self, PlaneError> {
        // One entry per public port of each pool address and protocol (the program
        // declares room for the largest pool).
        let ports = (cfg.pool.len().max(1) * 3 * 65536) as u32;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("natgw_ports", ports)
            .map_max_entries(EVENTS_MAP, events_bytes);
        if let Some((dir, kept, _)) = reuse {
            for name in kept {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let ebpf = loader.load(OBJECT).map_err(PlaneError::Load)?;
        let mut plane = Self { ebpf, config };
        for side in Side::ALL {
            plane
                .program(side)?
                .load()
                .map_err(|source| PlaneError::Program {
                    name: side.program(),
                    source,
                })?;
        }
        if let Some((_, _, running)) = reuse {
            let name = Side::Egress.program();
            let tag = plane
                .program(Side::Egress)?
                .info()
                .map_err(|source| PlaneError::Program { name, source })?
                .tag();
            if tag != running {
                return Err(PlaneError::OtherCode);
            }
        }
        plane.write_config()?;
        Ok(plane)
    }

    fn write_config(&mut self) -> Result<(), PlaneError> {
        let name = "natgw_config";
        let map = self.ebpf.map_mut(name).ok_or(PlaneError::Missing(name))?;
        let mut a: Array<_, BpfConfig> =
            Array::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        a.set(0, self.config, 0)
            .map_err(|source| PlaneError::Map { name, source })
    }

    pub(crate) fn program(&mut self, side: Side) -> Result<&mut SchedClassifier, PlaneError> {
        let name = side.program();
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or(PlaneError::Missing(name))?;
        p.try_into()
            .map_err(|source| PlaneError::Program { name, source })
    }

    /// Runs the programs with `config` from now on (made for the same
    /// `natgw_nat::Config`, with the gateway's interfaces: [`BpfConfig::with_outbound`],
    /// [`BpfConfig::with_fast_path`]).
    pub fn set_config(&mut self, config: BpfConfig) -> Result<(), PlaneError> {
        self.config = config;
        self.write_config()
    }

    /// Turns the binding events on (a reader follows them) or off (the default).
    pub fn set_logging(&mut self, on: bool) -> Result<(), PlaneError> {
        let name = LOGGING_MAP;
        let map = self.ebpf.map_mut(name).ok_or(PlaneError::Missing(name))?;
        let mut a: Array<_, u32> =
            Array::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        a.set(0, u32::from(on), 0)
            .map_err(|source| PlaneError::Map { name, source })
    }

    /// The binding events waiting in the ring, oldest first (taken out of it).
    pub fn events(&mut self) -> Result<Vec<BindingEvent>, PlaneError> {
        let name = EVENTS_MAP;
        let map = self.ebpf.map_mut(name).ok_or(PlaneError::Missing(name))?;
        let mut ring = RingBuf::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.extend(BindingEvent::parse(&item));
        }
        Ok(out)
    }

    /// Makes the programs' clock read `now` (model time) instead of the kernel's.
    pub fn set_clock(&mut self, now: Duration) -> Result<(), PlaneError> {
        self.config.now_ns = CLOCK_BASE_NS + now.as_nanos() as u64;
        self.write_config()
    }

    /// How often the sweeper walks the maps and frees expired state (default 1 s).
    pub fn set_sweep_interval(&mut self, every: Duration) -> Result<(), PlaneError> {
        self.config.sweep_ns = (every.as_nanos() as u64).max(1);
        self.write_config()
    }

    /// How many entries the translation maps hold now (expired ones until the sweeper
    /// or a lookup frees them): for `doctor` and `status` ("maps filling").
    pub fn state_sizes(&self) -> Result<StateSizes, PlaneError> {
        Ok(StateSizes {
            bindings: self.entries::<8, 16>("natgw_bindings")?,
            public_endpoints: self.public_endpoints()?,
            sessions: self.entries::<16, 16>("natgw_sessions")?,
        })
    }

    /// The ports held, summed over addresses and protocols (natgw_ranges' `used`).
    fn public_endpoints(&self) -> Result<usize, PlaneError> {
        let name = "natgw_ranges";
        let map = self.ebpf.map(name).ok_or(PlaneError::Missing(name))?;
        let a: Array<_, [u64; 2]> =
            Array::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        let mut used = 0;
        for r in a.iter() {
            used += r.map_err(|source| PlaneError::Map { name, source })?[0];
        }
        Ok(used as usize)
    }

    fn entries<const K: usize, const V: usize>(
        &self,
        name: &'static str,
    ) -> Result<usize, PlaneError> {
        let map = self.ebpf.map(name).ok_or(PlaneError::Missing(name))?;
        let m: HashMap<_, [u8; K], [u8; V]> =
            HashMap::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        Ok(m.keys().filter(Result::is_ok).count())
    }

    /// Runs one Ethernet frame through a program, as the kernel would on that side.
    pub fn run(&mut self, side: Side, frame: &[u8]) -> Result<RunResult, PlaneError> {
        self.run_timed(side, frame, 1).map(|(r, _)| r)
    }

    /// Runs a frame that arrives with `skb->mark = mark` (other software's bits).
    pub fn run_with_mark(
        &mut self,
        side: Side,
        frame: &[u8],
        mark: u32,
    ) -> Result<RunResult, PlaneError> {
        self.test_run(side, frame, 1, mark).map(|(r, _)| r)
    }

    /// Runs a frame `repeat` times; also returns the kernel's average time per run.
    pub fn run_timed(
        &mut self,
        side: Side,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(RunResult, Duration), PlaneError> {
        self.test_run(side, frame, repeat, 0)
    }

    /// BPF_PROG_TEST_RUN. Redirects (hairpins, ICMP errors to private hosts) are only
    /// reported, never carried out; their route lookup happens in the calling thread's
    /// network namespace, on its loopback device.
    fn test_run(
        &mut self,
        side: Side,
        frame: &[u8],
        repeat: u32,
        mark: u32,
    ) -> Result<(RunResult, Duration), PlaneError> {
        // Room for an ICMP error that quotes a short packet.
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx_in = [0u8; SK_BUFF_LEN];
        ctx_in[SK_BUFF_MARK..SK_BUFF_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SK_BUFF_LEN];
        let name = side.program();
        let r = self
            .program(side)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| PlaneError::Program { name, source })?;
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(
            ctx_out[SK_BUFF_MARK..SK_BUFF_MARK + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let result = RunResult {
            verdict: r.return_value,
            data: out,
            mark,
        };
        Ok((result, r.duration))
    }

    /// Attaches both programs to the public interface `ifname` (TCX on kernels that
    /// have it, clsact otherwise): egress after routing, ingress before it. They stay
    /// attached as long as this `Plane` lives. Call it inside the interface's namespace.
    pub fn attach(&mut self, ifname: &str) -> Result<(), PlaneError> {
        self.attach_side(ifname, Side::Egress)?;
        self.attach_side(ifname, Side::Ingress)
    }

    fn attach_side(&mut self, ifname: &str, side: Side) -> Result<(), PlaneError> {
        self.program(side)?
            .attach(ifname, side.tc())
            .map_err(|source| PlaneError::Program {
                name: side.program(),
                source,
            })?;
        Ok(())
    }

    /// Attaches `natgw_private` (hairpinning, RFC 4787 REQ-9) at the ingress of the
    /// private interface `ifname` (TCX, or clsact), once per private interface. It
    /// stays attached as long as this `Plane` lives. Call it inside the interface's
    /// namespace. The interfaces' packets that are not for a pool address pass
    /// untouched.
    pub fn attach_private(&mut self, ifname: &str) -> Result<(), PlaneError> {
        self.attach_side(ifname, Side::Private)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, PlaneError> {
        let name = "natgw_counters";
        let map = self.ebpf.map(name).ok_or(PlaneError::Missing(name))?;
        let a: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| PlaneError::Map { name, source })?;
        COUNTERS
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = a
                    .get(&(i as u32), 0)
                    .map_err(|source| PlaneError::Map { name, source })?;
                Ok((*n, v.iter().sum()))
            })
            .collect()
    }
}
