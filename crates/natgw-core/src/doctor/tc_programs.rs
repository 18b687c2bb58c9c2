//! Other tools' eBPF programs on the gateway interfaces' TC hooks (Cilium, another NAT,
//! a traffic shaper): they see the gateway's packets outside netfilter, and next to
//! natgw's own programs their order decides who translates. The kernel runs a hook's
//! TCX programs in order until one returns anything but TCX_NEXT, and the old-style
//! tc (clsact) filters only after that; natgw's programs always end the chain. So a
//! program before natgw's can drop, redirect or rewrite packets before natgw
//! translates them (or end the chain so natgw never runs), and one after natgw's (or a
//! tc filter) is bypassed, silently breaking the tool that attached it. An XDP program
//! runs before all of them. natgw never
//! detaches them: the fix names them and suggests, commented, how an admin could.
//! Pure: the binary lists the hooks.

use serde::Serialize;

use super::fix::shell_word;
use super::{Finding, Fix};

/// natgw's own programs (the kernel keeps the first 15 bytes of a name).
pub const NATGW_PROGRAMS: [&str; 3] = ["natgw_egress", "natgw_ingress", "natgw_private"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A program: the kernel's id and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Program {
    pub id: u32,
    pub name: String,
}

/// An old-style tc filter of kind bpf on the clsact qdisc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcFilter {
    pub program: Program,
    /// `tc filter ... pref` and `handle`, which name it for `tc filter del`.
    pub pref: u16,
    pub handle: u32,
}

/// One hook of one gateway interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub interface: String,
    pub direction: Direction,
    /// TCX programs in the order the kernel runs them.
    pub tcx: Vec<Program>,
    /// Old-style tc filters (they run after the TCX programs).
    pub tc: Vec<TcFilter>,
    /// An XDP program (ingress only): it runs before every TC program.
    pub xdp: Option<Program>,
}

fn is_natgw(p: &Program) -> bool {
    NATGW_PROGRAMS.contains(&p.name.as_str())
}

/// One warning for every foreign program on the gateway's hooks; `None` when the hooks
/// could not be read (no interface roles).
pub fn finding(hooks: Option<&[Hook]>) -> Finding {
    const ID: &str = "tc-programs";
    let Some(hooks) = hooks else {
        return Finding::skip(ID, "the gateway's interfaces are not known");
    };
    let mut found = Vec::new();
    let mut commands: Vec<String> = Vec::new();
    for hook in hooks {
        let dev = shell_word(&hook.interface);
        let dir = hook.direction.name();
        let natgw = hook.tcx.iter().position(is_natgw);
        if let Some(p) = &hook.xdp {
            found.push(format!(
                "{} xdp: program {} {:?} runs before every TC program, natgw's too: it can drop, redirect or rewrite packets before natgw translates them",
                hook.interface, p.id, p.name
            ));
            commands.push(format!("ip link set dev {dev} xdp off"));
        }
        for (i, p) in hook.tcx.iter().enumerate() {
            if is_natgw(p) {
                continue;
            }
            let place = match natgw {
                Some(n) if i < n => format!(
                    "runs before {}: it can drop, redirect or rewrite packets before natgw translates them, or end the chain so natgw never sees them",
                    hook.tcx[n].name
                ),
                Some(n) => format!(
                    "runs after {}, which ends the chain: it never sees the gateway's packets (the tool that attached it is bypassed)",
                    hook.tcx[n].name
                ),
                None => "sees the gateway's packets outside netfilter, where it can drop, redirect or rewrite them".to_string(),
            };
            found.push(format!(
                "{} tcx {dir}: program {} {:?} {place}",
                hook.interface, p.id, p.name
            ));
            commands.push(format!("bpftool net detach tcx_{dir} dev {dev}"));
        }
        for f in &hook.tc {
            let place = if natgw.is_some() {
                "runs only after the TCX programs continue the chain, which natgw's do not: it is bypassed"
            } else {
                "sees the gateway's packets outside netfilter, where it can drop, redirect or rewrite them"
            };
            found.push(format!(
                "{} tc {dir} filter (pref {}): program {} {:?} {place}",
                hook.interface, f.pref, f.program.id, f.program.name
            ));
            commands.push(format!(
                "tc filter del dev {dev} {dir} pref {} handle 0x{:x} bpf",
                f.pref, f.handle
            ));
        }
    }
    if found.is_empty() {
        let mut names: Vec<&str> = hooks.iter().map(|h| h.interface.as_str()).collect();
        names.dedup();
        return Finding::pass(
            ID,
            format!(
                "no other tool's eBPF program on the TC hooks of {}",
                names.join(", ")
            ),
        );
    }
    commands.dedup();
    let fix = Fix::say(
        "natgw does not detach other tools' programs: remove them with the tool that attached them,",
    )
    .then_say("or, if nothing needs them (see `bpftool net show`), an admin could run:")
    .then_say(commands.join("\n"))
    .then_say("(detaching a TCX hook removes natgw's program there too: run `natgw up` afterwards)");
    Finding::warn(ID, found.join("; "), fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn prog(id: u32, name: &str) -> Program {
        Program {
            id,
            name: name.into(),
        }
    }

    fn hook(interface: &str, direction: Direction, tcx: Vec<Program>) -> Hook {
        Hook {
            interface: interface.into(),
            direction,
            tcx,
            tc: Vec::new(),
            xdp: None,
        }
    }

    #[test]
    fn natgws_own_programs_pass() {
        let hooks = [
            hook("wan0", Direction::Ingress, vec![prog(7, "natgw_ingress")]),
            hook("wan0", Direction::Egress, vec![prog(6, "natgw_egress")]),
            hook("lan0", Direction::Ingress, vec![prog(8, "natgw_private")]),
            hook("lan0", Direction::Egress, vec![]),
        ];
        let f = finding(Some(&hooks));
        assert_eq!(f.status, Status::Pass, "{f:?}");
        assert!(f.detail.contains("wan0, lan0"), "{f:?}");
        assert_eq!(finding(None).status, Status::Skip);
    }

    #[test]
    fn foreign_programs_are_named_with_their_place_and_a_commented_fix() {
        let mut wan_in = hook(
            "wan0",
            Direction::Ingress,
            vec![
                prog(41, "cil_from_netdev"),
                prog(7, "natgw_ingress"),
                prog(42, "shaper"),
            ],
        );
        wan_in.tc.push(TcFilter {
            program: prog(43, "old_style"),
            pref: 49152,
            handle: 1,
        });
        let mut lan_in = hook("l'an;0", Direction::Ingress, vec![prog(8, "natgw_private")]);
        lan_in.xdp = Some(prog(45, "xdp_fw"));
        let hooks = [
            wan_in,
            hook("l'an;0", Direction::Egress, vec![prog(44, "mirror")]),
            lan_in,
        ];
        let f = finding(Some(&hooks));
        assert_eq!(f.status, Status::Warn);
        for part in [
            "wan0 tcx ingress: program 41 \"cil_from_netdev\" runs before natgw_ingress",
            "wan0 tcx ingress: program 42 \"shaper\" runs after natgw_ingress",
            "wan0 tc ingress filter (pref 49152): program 43 \"old_style\" runs only after",
            "l'an;0 tcx egress: program 44 \"mirror\" sees the gateway's packets outside netfilter",
            "l'an;0 xdp: program 45 \"xdp_fw\" runs before every TC program",
        ] {
            assert!(f.detail.contains(part), "{part}\n{}", f.detail);
        }
        let fix = f.fix.unwrap();
        // Only comments: pasting the fix changes nothing.
        assert!(fix.lines().all(|l| l.starts_with("# ")), "{fix}");
        assert!(
            fix.contains("# bpftool net detach tcx_ingress dev wan0"),
            "{fix}"
        );
        assert!(
            fix.contains("# tc filter del dev wan0 ingress pref 49152 handle 0x1 bpf"),
            "{fix}"
        );
        assert!(
            fix.contains(r"# bpftool net detach tcx_egress dev 'l'\''an;0'"),
            "{fix}"
        );
        assert!(
            fix.contains(r"# ip link set dev 'l'\''an;0' xdp off"),
            "{fix}"
        );
    }
}
