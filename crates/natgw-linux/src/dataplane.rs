//! The packet path behind one seam: rendering, validating, installing, reading back
//! and counting the rules that forward and translate. Commands and `apply` talk to a
//! `Dataplane`, never to nft directly, so another data plane (eBPF) plugs in here.

use natgw_core::dataplane::DataplaneKind;
use natgw_core::observed::LiveTable;
use natgw_core::render::render;
use natgw_core::Desired;

use crate::nft::{self, Counter, NftError};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("the {what} was installed, but it cannot be read back")]
    Vanished { what: &'static str },
    #[error("eBPF data plane: {0}")]
    Ebpf(String),
}

/// What was installed before a change, so that a failed apply can put it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// natgw's table as listed (`None`: none installed).
    pub(crate) table: Option<String>,
    /// eBPF plane: the recorded gateway whose programs were running, to load them
    /// again when the change replaced them.
    pub(crate) programs: Option<Box<Desired>>,
    /// The gateway the change installs: a rollback forgets the flows conntrack tracked
    /// untranslated under its programs.
    pub(crate) changing_to: Box<Desired>,
}

pub trait Dataplane {
    /// Short name for messages and `--json` (`nftables`).
    fn name(&self) -> &'static str;
    /// Whether its tools are installed.
    fn available(&self) -> bool;
    /// What runs now, or `None` when natgw's rules are not installed.
    fn observe(&self) -> Result<Option<LiveTable>, DataplaneError>;
    /// Has the kernel validate the rules for `desired` without installing them.
    fn check(&self, desired: &Desired) -> Result<(), DataplaneError>;
    /// What is installed now, for `restore` should the change to `changing_to` fail.
    fn snapshot(&self, changing_to: &Desired) -> Result<Snapshot, DataplaneError>;
    /// Installs the rules for `desired` atomically; returns them as read back.
    fn install(&self, desired: &Desired) -> Result<LiveTable, DataplaneError>;
    /// Puts back what `snapshot` saw (removes the rules when there were none).
    fn restore(&self, snapshot: &Snapshot) -> Result<(), DataplaneError>;
    /// Removes natgw's rules; nothing installed is success.
    fn remove(&self) -> Result<(), DataplaneError>;
    /// natgw's counters.
    fn counters(&self) -> Result<Vec<Counter>, DataplaneError>;
    /// Whether something of it is left that `remove` must take away even when no
    /// table is installed (pinned programs after a crash).
    fn has_leftovers(&self) -> bool {
        false
    }
    /// The public interface it reads its live state on, where that matters (eBPF).
    fn public(&self) -> Option<&str> {
        None
    }
}

/// The kernel's netfilter, through natgw's table `inet natgw`.
pub struct Nftables;

impl Dataplane for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn available(&self) -> bool {
        nft::binary().is_some()
    }

    fn observe(&self) -> Result<Option<LiveTable>, DataplaneError> {
        // The eBPF plane's programs left behind (a crash or a failed rollback of a
        // switch) would translate a second time: drift, which the next `up` repairs.
        Ok(nft::live_table()?.map(|t| match crate::ebpf::has_pins() {
            true => LiveTable {
                fingerprint: format!("{}; leftover eBPF programs", t.fingerprint),
            },
            false => t,
        }))
    }

    fn check(&self, desired: &Desired) -> Result<(), DataplaneError> {
        Ok(nft::check(&render(desired).text)?)
    }

    fn snapshot(&self, changing_to: &Desired) -> Result<Snapshot, DataplaneError> {
        // Switching from the eBPF plane detaches its programs: a rollback needs them.
        crate::ebpf::snapshot(changing_to)
    }

    fn install(&self, desired: &Desired) -> Result<LiveTable, DataplaneError> {
        nft::replace(&render(desired).text)?;
        // Switching from the eBPF plane: its programs would translate a second time.
        if crate::ebpf::has_pins() {
            // Before the programs go, so that none of those flows leaves untranslated.
            crate::ebpf::forget_untranslated_flows(desired);
            crate::ebpf::remove_programs()
                .map_err(|e| DataplaneError::Ebpf(crate::apply::error_chain(&e)))?;
        }
        nft::live_table()?.ok_or(DataplaneError::Vanished {
            what: "table inet natgw",
        })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<(), DataplaneError> {
        crate::ebpf::restore(snapshot)
    }

    fn remove(&self) -> Result<(), DataplaneError> {
        nft::delete_table()?;
        if crate::ebpf::has_pins() {
            crate::ebpf::remove_programs()
                .map_err(|e| DataplaneError::Ebpf(crate::apply::error_chain(&e)))?;
        }
        Ok(())
    }

    fn has_leftovers(&self) -> bool {
        crate::ebpf::has_pins()
    }

    fn counters(&self) -> Result<Vec<Counter>, DataplaneError> {
        Ok(nft::counters()?)
    }
}

/// The data plane of `kind`; `public` is the gateway's public interface, where the
/// eBPF programs are attached.
pub fn select(kind: DataplaneKind, public: Option<&str>) -> Box<dyn Dataplane> {
    match kind {
        DataplaneKind::Nftables => Box::new(Nftables),
        DataplaneKind::Ebpf => Box::new(crate::ebpf::Ebpf::new(public.map(str::to_string))),
    }
}

/// `dataplane` reading its live state on `public`, the public interface detection
/// resolved, when it was chosen without it (`None` when nothing changes). A data plane
/// is chosen before detection runs: with an autodetected public interface and no
/// record yet, the eBPF plane would look for its programs nowhere, see them absent, and
/// a verification after `up` would take its own programs for drift.
pub fn on_public(dataplane: &dyn Dataplane, public: &str) -> Option<Box<dyn Dataplane>> {
    (dataplane.name() == "ebpf" && dataplane.public() != Some(public))
        .then(|| select(DataplaneKind::Ebpf, Some(public)))
}

/// The data plane the last `up` of this namespace installed (from its record; the
/// eBPF plane also when only its pinned programs are left), else nftables.
pub fn recorded() -> Box<dyn Dataplane> {
    let gateway = crate::state_store::load()
        .ok()
        .flatten()
        .and_then(|s| s.gateway);
    let public = gateway.as_ref().map(|g| g.public.name.as_str().to_string());
    let kind = match &gateway {
        Some(g) => g.dataplane.kind(),
        None if crate::ebpf::has_pins() => DataplaneKind::Ebpf,
        None => DataplaneKind::Nftables,
    };
    select(kind, public.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ebpf_plane_learns_the_detected_public_interface() {
        let unknown = select(DataplaneKind::Ebpf, None);
        let known = on_public(unknown.as_ref(), "wan0").expect("re-selected");
        assert_eq!(known.public(), Some("wan0"));
        assert!(on_public(known.as_ref(), "wan0").is_none(), "already there");
        let moved = on_public(known.as_ref(), "wan1").expect("another interface");
        assert_eq!(moved.public(), Some("wan1"));
        let nft = select(DataplaneKind::Nftables, None);
        assert!(
            on_public(nft.as_ref(), "wan0").is_none(),
            "nftables has none"
        );
    }
}
