//! The IPv6 check: the mode the gateway resolves to, and what IPv6 forwarding needs
//! (forwarding on, router advertisements still accepted on a public side configured by
//! them, an IPv6 default route).

use super::{Finding, Fix, Repair};
use crate::config::Settings;
use crate::detect::Roles;
use crate::ipv6::{accept_ra, resolve, IPV6_FORWARD};
use crate::join;
use crate::observed::Observed;

const ID: &str = "ipv6";

pub fn ipv6(settings: &Settings, o: &Observed, roles: &Roles) -> Finding {
    let mut warnings = Vec::new();
    let gateway = match resolve(
        &settings.ipv6,
        o,
        roles.public,
        &roles.private,
        &mut warnings,
    ) {
        Ok(Some(gateway)) => gateway,
        Ok(None) => {
            return match warnings.first() {
                Some(warning) => Finding::warn(
                    ID,
                    warning.clone(),
                    Fix::say("add an IPv6 default route to the public interface, or set [ipv6] mode = \"off\" to silence this"),
                ),
                None => Finding::pass(ID, "IPv6 is off: natgw leaves it alone"),
            };
        }
        Err(e) => {
            return Finding::fail(
                ID,
                e.to_string(),
                Fix::say("set the [ipv6] keys the message names"),
            )
        }
    };
    let value = |key: &str| o.sysctls.get(key).map(String::as_str);
    if value(IPV6_FORWARD) != Some("1") {
        return Finding::fail(
            ID,
            format!(
                "IPv6 {} but {IPV6_FORWARD} = {}",
                gateway.translation,
                value(IPV6_FORWARD).unwrap_or("?")
            ),
            Fix::say("turn IPv6 forwarding on (the previous value is recorded):")
                .then_run(&["natgw", "up"]),
        )
        .repaired_by(Repair::ApplyGateway);
    }
    let public = roles.public.name.as_str();
    if gateway.accept_ra && value(&accept_ra(public)) != Some("2") {
        return Finding::fail(
            ID,
            format!(
                "{public} is configured by router advertisements, which the kernel ignores while forwarding unless accept_ra = 2 (it is {})",
                value(&accept_ra(public)).unwrap_or("?")
            ),
            Fix::run(&["natgw", "up"]).then_say("or by hand:").then_run(&[
                "sysctl",
                "-w",
                &format!("net/ipv6/conf/{public}/accept_ra=2"),
            ]),
        )
        .repaired_by(Repair::ApplyGateway);
    }
    let off: Vec<&str> = std::iter::once(roles.public)
        .chain(roles.private.iter().copied())
        .map(|l| l.name.as_str())
        .filter(|name| value(&format!("net.ipv6.conf.{name}.forwarding")) == Some("0"))
        .collect();
    if !off.is_empty() {
        return Finding::fail(
            ID,
            format!(
                "IPv6 forwarding is on globally but off on {}",
                off.join(", ")
            ),
            off.iter().fold(Fix::default(), |fix, n| {
                fix.then_run(&["sysctl", "-w", &format!("net/ipv6/conf/{n}/forwarding=1")])
            }),
        );
    }
    let detail = format!(
        "IPv6 {} for {}; forwarding on",
        gateway.translation,
        join(&gateway.outbound_prefixes)
    );
    if !gateway.uplink_default {
        return Finding::warn(
            ID,
            format!("{detail}, but {public} has no IPv6 default route"),
            Fix::say(format!("add a default route via your IPv6 upstream router: ip -6 route add default via ROUTER dev {public}")),
        );
    }
    Finding::pass(ID, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::roles;
    use crate::doctor::Status;
    use crate::fixtures::{addr, headnode, route};

    fn dual_stack() -> Observed {
        let mut o = headnode();
        o.addresses.push(addr(2, "2001:db8:1::1/64"));
        o.addresses.push(addr(3, "fd00:77::1/64"));
        o.routes.push(route("::/0", Some("2001:db8:1::fe"), 2));
        o.sysctls.insert(IPV6_FORWARD.into(), "1".into());
        o
    }

    fn check(o: &Observed) -> Finding {
        let settings = Settings::default();
        ipv6(&settings, o, &roles(&settings, o).unwrap())
    }

    #[test]
    fn healthy_nat66_passes_and_names_the_mode() {
        let f = check(&dual_stack());
        assert_eq!(f.status, Status::Pass, "{f:?}");
        assert!(f.detail.contains("nat66 to 2001:db8:1::1"), "{f:?}");
        let f = check(&headnode());
        assert_eq!(
            (f.status, f.detail.as_str()),
            (Status::Pass, "IPv6 is off: natgw leaves it alone")
        );
    }

    #[test]
    fn forwarding_off_and_ignored_advertisements_fail() {
        let mut o = dual_stack();
        o.sysctls.insert(IPV6_FORWARD.into(), "0".into());
        let f = check(&o);
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.repair, Some(Repair::ApplyGateway));

        let mut o = dual_stack();
        o.routes.last_mut().unwrap().protocol = 9;
        o.sysctls
            .insert("net.ipv6.conf.wan0.accept_ra".into(), "1".into());
        let f = check(&o);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("net/ipv6/conf/wan0/accept_ra=2"));
        o.sysctls
            .insert("net.ipv6.conf.wan0.accept_ra".into(), "2".into());
        assert_eq!(check(&o).status, Status::Pass);
    }

    #[test]
    fn ambiguity_fails_and_a_missing_default_route_warns() {
        let mut o = dual_stack();
        o.addresses.push(addr(2, "2001:db8:1::2/64"));
        let f = check(&o);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("set [ipv6] mode"), "{f:?}");

        let mut o = dual_stack();
        o.routes.retain(|r| r.destination.addr().is_ipv4());
        let f = check(&o);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("no IPv6 default route"), "{f:?}");
    }
}
