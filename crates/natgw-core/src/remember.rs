//! The gateway remembers what it is: once `up` resolved the roles, later commands of
//! that namespace start from the recorded roles instead of detecting again, so a lost
//! default route or a downed interface is reported as such, and a detection that now
//! finds something else is shown, never silently adopted.

use crate::config::Settings;
use crate::desired::Desired;
use crate::observed::Observed;

/// `settings` with the recorded roles filled in where the admin named none.
pub fn settings_with_recorded_roles(settings: &Settings, recorded: Option<&Desired>) -> Settings {
    recall(settings, recorded, &Observed::default()).settings
}

/// Settings with the recorded roles, and the recorded interfaces that no longer exist.
pub struct Recalled {
    pub settings: Settings,
    /// `private interface "lan9"`: recorded, but gone from the system (left out).
    pub gone: Vec<String>,
}

/// Like `settings_with_recorded_roles`, but a recorded interface that no longer exists
/// in `observed` is left out and reported, rather than named as if the admin had.
pub fn recall(settings: &Settings, recorded: Option<&Desired>, observed: &Observed) -> Recalled {
    let mut settings = settings.clone();
    let mut gone = Vec::new();
    let check = !observed.links.is_empty();
    let mut exists = |role: &str, name: &str| {
        let there = !check || observed.link(name).is_some();
        if !there {
            gone.push(format!("{role} interface {name:?}"));
        }
        there
    };
    if let Some(recorded) = recorded {
        if settings.public.is_none() && exists("public", recorded.public.name.as_str()) {
            settings.public = Some(recorded.public.name.to_string());
        }
        if settings.private.is_empty() {
            settings.private = recorded
                .private
                .iter()
                .map(|i| i.name.to_string())
                .filter(|name| exists("private", name))
                .collect();
        }
    }
    Recalled { settings, gone }
}

/// How roles detected afresh differ from the recorded roles in use, one line per role.
pub fn differences(kept: &Desired, detected: &Desired) -> Vec<String> {
    let names = |d: &Desired| {
        d.private
            .iter()
            .map(|i| i.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    if kept.public.name != detected.public.name {
        out.push(format!(
            "public interface: {} (recorded) is kept; detection now finds {}",
            kept.public.name, detected.public.name
        ));
    }
    if names(kept) != names(detected) {
        out.push(format!(
            "private interfaces: {} (recorded) are kept; detection now finds {}",
            names(kept),
            names(detected)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;
    use crate::desired::{Interface, SnatMode};
    use crate::IfName;

    fn gateway(public: &str, private: &[&str], snat: &str) -> Desired {
        let iface = |n: &str| Interface {
            name: IfName::new(n).unwrap(),
            addresses: vec![],
        };
        Desired {
            public: iface(public),
            private: private.iter().map(|n| iface(n)).collect(),
            private_prefixes: vec!["10.0.0.0/24".parse().unwrap()],
            snat: SnatMode::To(snat.parse().unwrap()),
            routes: vec![],
            sysctls: Default::default(),
            uplink_default: None,
            mss_clamp: false,
            port_selection: Default::default(),
            timeouts: Default::default(),
            warnings: vec![],
            ipv6: None,
        }
    }

    #[test]
    fn recorded_roles_fill_only_what_the_admin_left_open() {
        let recorded = gateway("eth1", &["eth0"], "203.0.113.36");
        let none = Settings::from_flags(&Flags::default()).unwrap();
        let s = settings_with_recorded_roles(&none, Some(&recorded));
        assert_eq!(s.public.as_deref(), Some("eth1"));
        assert_eq!(s.private, ["eth0"]);
        let named = Settings::from_flags(&Flags {
            public: Some("wan9".into()),
            ..Flags::default()
        })
        .unwrap();
        let s = settings_with_recorded_roles(&named, Some(&recorded));
        assert_eq!(s.public.as_deref(), Some("wan9"));
        assert_eq!(settings_with_recorded_roles(&none, None), none);
    }

    #[test]
    fn differences_name_each_aspect() {
        let a = gateway("eth1", &["eth0"], "203.0.113.36");
        assert!(differences(&a, &a).is_empty());
        let b = gateway("eth2", &["eth0", "eth3"], "203.0.113.37");
        let d = differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            d[0],
            "public interface: eth1 (recorded) is kept; detection now finds eth2"
        );
    }
}
