//! The gateway remembers what it is: once `up` resolved the roles, later commands of
//! that namespace start from the recorded roles instead of detecting again, so a lost
//! default route or a downed interface is reported as such, and a detection that now
//! finds something else is shown, never silently adopted.

use crate::config::{Ipv6Mode, Settings};
use crate::desired::{Desired, Ipv6Translation};
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
        recall_ipv6(&mut settings, recorded);
    }
    Recalled { settings, gone }
}

/// The recorded IPv6 mode (and its nat66 address or nptv6 prefix) where the admin set
/// none: a second global address or a new default route does not switch it silently.
fn recall_ipv6(settings: &mut Settings, recorded: &Desired) {
    let ipv6 = &mut settings.ipv6;
    if ipv6.mode.is_some() || ipv6.address.is_some() || ipv6.public_prefix.is_some() {
        return;
    }
    let Some(gateway) = &recorded.ipv6 else {
        ipv6.mode = Some(Ipv6Mode::Off);
        return;
    };
    ipv6.mode = Some(gateway.translation.mode());
    match gateway.translation {
        Ipv6Translation::Nat66 { address } => ipv6.address = Some(address),
        Ipv6Translation::Nptv6 { public, .. } => ipv6.public_prefix = Some(public),
        Ipv6Translation::Routed => {}
    }
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
    let ipv6 = |d: &Desired| {
        d.ipv6
            .as_ref()
            .map_or("off".to_string(), |g| g.translation.to_string())
    };
    if ipv6(kept) != ipv6(detected) {
        out.push(format!(
            "ipv6: {} (recorded) is kept; detection now finds {} (set [ipv6] mode, or run natgw down and up, to change it)",
            ipv6(kept),
            ipv6(detected)
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
            ha_public_vip: None,
            dataplane: Default::default(),
            ipv6: None,
            public_ingress_hook: false,
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
    fn the_recorded_ipv6_mode_is_kept_unless_configured() {
        let mut recorded = gateway("eth1", &["eth0"], "203.0.113.36");
        let none = Settings::from_flags(&Flags::default()).unwrap();
        let s = settings_with_recorded_roles(&none, Some(&recorded));
        assert_eq!(s.ipv6.mode, Some(Ipv6Mode::Off), "off stays off");
        recorded.ipv6 = Some(crate::Ipv6Gateway {
            translation: Ipv6Translation::Nat66 {
                address: "2001:db8:1::1".parse().unwrap(),
            },
            private_prefixes: vec!["fd00:77::/64".parse().unwrap()],
            outbound_prefixes: vec!["fd00:77::/64".parse().unwrap()],
            uplink_default: true,
            accept_ra: false,
        });
        let s = settings_with_recorded_roles(&none, Some(&recorded));
        assert_eq!(s.ipv6.mode, Some(Ipv6Mode::Nat66));
        assert_eq!(s.ipv6.address, Some("2001:db8:1::1".parse().unwrap()));
        let configured = Settings::from_flags(&Flags {
            ipv6_mode: Some(Ipv6Mode::Routed),
            ..Flags::default()
        })
        .unwrap();
        let s = settings_with_recorded_roles(&configured, Some(&recorded));
        assert_eq!(
            (s.ipv6.mode, s.ipv6.address),
            (Some(Ipv6Mode::Routed), None)
        );
        let fresh = gateway("eth1", &["eth0"], "203.0.113.36");
        let d = differences(&recorded, &fresh);
        assert_eq!(
            d,
            ["ipv6: nat66 to 2001:db8:1::1 (recorded) is kept; detection now finds off (set [ipv6] mode, or run natgw down and up, to change it)"]
        );
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
