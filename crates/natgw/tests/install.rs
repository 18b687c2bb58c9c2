//! `natgw install` / `uninstall` end to end: detection in a lab's headnode writes the
//! config and the unit under `--root`; a fresh lab (a simulated reboot: new
//! namespaces, nothing but that config) gets its gateway from the config alone.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use natgw_lab::{tcp_exchange, udp_exchange, Lab, Listener, Spec, HEAD_PUBLIC, SERVER};

/// How the service starts the gateway at boot (the unit's ExecStart), with the
/// config's path appended: the daemon, which `bring_up` spawns and stops once the
/// gateway works.
const START: &[&str] = &["run", "--config"];

const UNIT: &str = include_str!("../../../packaging/natgw.service");
const CONFIG: &str = "etc/natgw/natgw.toml";
const UNIT_PATH: &str = "etc/systemd/system/natgw.service";
const EBPF_DROPIN: &str = include_str!("../../../packaging/natgw-ebpf.conf");
const EBPF_DROPIN_PATH: &str = "etc/systemd/system/natgw.service.d/ebpf.conf";

/// The capabilities `CapabilityBoundingSet=` lines in `unit` grant, as setpriv wants them.
fn bounding_set(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect()
}

fn server() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER), 7000)
}

fn install(lab: &Lab, args: &[&str]) -> Output {
    natgw(lab, &[&["install"], args].concat())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Starts the gateway as the service would and waits until n1 gets out translated;
/// a command that exits (`up`) must exit 0, one that stays (`run`) is stopped after.
fn bring_up(lab: &Lab, config: &Path) {
    let args: Vec<&str> = START
        .iter()
        .copied()
        .chain([config.to_str().unwrap()])
        .collect();
    let mut child = natgw_command(lab, "head", &args, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start natgw");
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success(), "{:?}: {}", args, text(&out));
            break udp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2));
        }
        match udp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)) {
            Ok(seen) => {
                let _ = child.kill();
                let _ = child.wait();
                break Ok(seen);
            }
            Err(e) if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("{args:?}: n1 does not get out: {e}");
            }
            Err(_) => {}
        }
    };
    let seen = seen.unwrap_or_else(|e| panic!("n1 UDP after {args:?}: {e}"));
    assert_eq!(
        seen.ip(),
        IpAddr::V4(HEAD_PUBLIC),
        "server saw UDP from {seen}"
    );
    let tcp = tcp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("n1 TCP: {e}"));
    assert_eq!(
        tcp.ip(),
        IpAddr::V4(HEAD_PUBLIC),
        "server saw TCP from {tcp}"
    );
}

/// A directory for the installed files that outlives the first lab.
struct Root(PathBuf);
impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn installed_config_brings_the_gateway_up_after_a_simulated_reboot() {
    let Some(first) = lab_or_skip(
        "installed_config_brings_the_gateway_up_after_a_simulated_reboot",
        Spec::nodes(1),
    ) else {
        return;
    };
    let root = Root(scratch(&first, "root"));
    let root_arg = root.0.to_str().unwrap();
    let config = root.0.join(CONFIG);
    let unit = root.0.join(UNIT_PATH);

    // --dry-run prints both files and writes nothing.
    let out = install(&first, &["--root", root_arg, "--dry-run"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("#public = \"wan0\""),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("Type=notify"), "{}", text(&out));
    assert!(!root.0.join("etc").exists(), "--dry-run wrote files");

    let out = install(&first, &["--root", root_arg]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(&format!("created {}", config.display())));
    assert!(stdout(&out).contains(&format!("created {}", unit.display())));
    // Detected in the headnode, written commented out: detection decides at boot.
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("\n#public = \"wan0\"\n"), "{written}");
    assert!(written.contains("\n#private = [\"lan0\"]\n"), "{written}");
    assert!(
        written.contains("\n#snat_to = \"203.0.113.1\"\n"),
        "{written}"
    );
    natgw_core::Config::parse(&written, &config).expect("the written config parses");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), UNIT);
    assert_eq!((mode(&config), mode(&unit)), (0o644, 0o644));

    // A second install keeps the admin's edits byte for byte.
    let edited = written.replace("#mss_clamp = false", "mss_clamp = true");
    std::fs::write(&config, &edited).unwrap();
    let out = install(&first, &["--root", root_arg]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("kept {}", config.display())),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    std::fs::write(&config, &written).unwrap();

    // Simulated reboot: the first lab's namespaces are gone, a fresh topology has
    // nothing of natgw's but the config on disk.
    drop(first);
    let second = lab(Spec::nodes(1));
    let _server = Listener::start(&second.ns("pub"), server()).unwrap();
    assert!(
        tcp_exchange(&second.ns("n1"), server(), Duration::from_millis(500)).is_err(),
        "control: without natgw n1 cannot get out"
    );
    assert!(!state_path(&second).exists());
    bring_up(&second, &config);

    // uninstall removes the unit, keeps the config.
    let out = natgw(&second, &["uninstall", "--root", root_arg]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(&format!("removed {}", unit.display())));
    assert!(stdout(&out).contains(&format!("kept {}", config.display())));
    assert!(!unit.exists());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    let out = natgw(&second, &["uninstall", "--root", root_arg]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("not installed"), "{}", text(&out));
}

#[test]
fn install_with_a_config_keeps_its_settings_and_refuses_one_that_does_not_resolve() {
    let Some(lab) = lab_or_skip(
        "install_with_a_config_keeps_its_settings_and_refuses_one_that_does_not_resolve",
        Spec::nodes(1),
    ) else {
        return;
    };
    let dir = Root(scratch(&lab, "given"));
    let given = dir.0.join("admin.toml");
    std::fs::write(&given, "public = \"wan0\"\nmss_clamp = true\n").unwrap();
    let root = dir.0.join("root");
    std::fs::create_dir(&root).unwrap();
    let root_arg = root.to_str().unwrap();

    let out = install(
        &lab,
        &["--root", root_arg, "--config", given.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let written = std::fs::read_to_string(root.join(CONFIG)).unwrap();
    // Given: set. Detected: commented out.
    assert!(written.contains("\npublic = \"wan0\"\n"), "{written}");
    assert!(written.contains("\nmss_clamp = true\n"), "{written}");
    assert!(written.contains("\n#private = [\"lan0\"]\n"), "{written}");

    // A config naming an interface that is not there: exit 2, nothing written.
    let other = dir.0.join("other-root");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(&given, "public = \"wan9\"\n").unwrap();
    let out = install(
        &lab,
        &[
            "--root",
            other.to_str().unwrap(),
            "--config",
            given.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("\"wan9\" does not exist"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read_dir(&other).unwrap().next().is_none(),
        "wrote files"
    );
}

/// No root needed: nothing here touches the network (detection only reads it).
#[test]
fn a_symlink_under_the_root_is_not_followed_out_of_it() {
    let base =
        Root(std::env::temp_dir().join(format!("natgw-install-symlink-{}", std::process::id())));
    let root = base.0.join("root");
    let outside = base.0.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
    let out = Command::new(binary())
        .args(["install", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "{} is a symlink or not a directory; natgw does not follow symlinks",
            root.join("etc").display()
        )),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "wrote outside the root"
    );

    let out = Command::new(binary())
        .args([
            "install",
            "--root",
            base.0.join("missing").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        text(&out)
    );
}

/// The unit bounds natgw to the capabilities in CapabilityBoundingSet: with only
/// those (and no new privileges), `up` must still build the gateway and `down` undo it
/// on the nftables plane; the eBPF plane needs more, and says so before any change.
fn the_units_capabilities_run_the_gateway_or_refuse_up_front(plane: Plane) {
    let Some(lab) = plane.lab(Spec::nodes(1)) else {
        return;
    };
    let caps = bounding_set(UNIT);
    assert_eq!(caps, ["+net_admin", "+net_raw"]);
    let bounded_by = |caps: &[String], args: &[&str]| {
        let set = format!("-all,{}", caps.join(","));
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("head"),
                "setpriv",
                "--no-new-privs",
            ])
            .args(["--bounding-set", &set, "--inh-caps", "-all", "--"])
            .arg(binary())
            .args(args)
            .output()
            .expect("run setpriv")
    };
    let bounded = |args: &[&str]| bounded_by(&caps, args);
    let _server = Listener::start(&lab.ns("pub"), server()).unwrap();
    if plane.is_ebpf() {
        // Not enough for the programs: refused before anything changes, with the fix
        // (the unit's drop-in), instead of failing half-way.
        let before = headnode_snapshot(&lab);
        let out = bounded(&plane.args(&["up"]));
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(
                "natgw runs without CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN: the kernel refuses"
            ) && stderr(&out).contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN"),
            "{}",
            text(&out)
        );
        // The service itself (what the unit starts) refuses the same way at start;
        // `timeout` bounds a daemon that would not.
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("head"), "timeout", "30", "setpriv"])
            .args([
                "--no-new-privs",
                "--bounding-set",
                &format!("-all,{}", caps.join(",")),
            ])
            .args(["--inh-caps", "-all", "--"])
            .arg(binary())
            .args(plane.args(&["run"]))
            .output()
            .expect("run setpriv");
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("natgw runs without CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN"),
            "{}",
            text(&out)
        );
        assert_eq!(headnode_snapshot(&lab), before);
        // With the drop-in `natgw install` writes for this plane, the unit's set is
        // enough: the gateway comes up and goes down again.
        let with_dropin = [caps.clone(), bounding_set(EBPF_DROPIN)].concat();
        assert_exit(&bounded_by(&with_dropin, &plane.args(&["up"])), 0);
        let seen = udp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2)).unwrap();
        assert_eq!(seen.ip(), IpAddr::V4(HEAD_PUBLIC));
        assert_exit(&bounded_by(&with_dropin, &["down"]), 0);
        assert!(udp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());
        return;
    }
    assert_exit(&bounded(&plane.args(&["up"])), 0);
    let seen = udp_exchange(&lab.ns("n1"), server(), Duration::from_secs(2)).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(HEAD_PUBLIC));
    assert_exit(&bounded(&["down"]), 0);
    assert!(udp_exchange(&lab.ns("n1"), server(), Duration::from_millis(500)).is_err());
}
both_planes!(the_units_capabilities_run_the_gateway_or_refuse_up_front);

/// The drop-in for the eBPF plane is written when the config selects that plane and
/// only then: removed again when the admin's config goes back to nftables, and by
/// `uninstall`.
#[test]
fn install_writes_the_ebpf_drop_in_only_for_the_ebpf_plane() {
    let Some(lab) = lab_or_skip(
        "install_writes_the_ebpf_drop_in_only_for_the_ebpf_plane",
        Spec::nodes(1),
    ) else {
        return;
    };
    let dir = Root(scratch(&lab, "dropin"));
    let given = dir.0.join("admin.toml");
    std::fs::write(&given, "public = \"wan0\"\ndataplane = \"ebpf\"\n").unwrap();
    let root = dir.0.join("root");
    std::fs::create_dir(&root).unwrap();
    let root_arg = root.to_str().unwrap();
    let dropin = root.join(EBPF_DROPIN_PATH);

    let out = install(
        &lab,
        &["--root", root_arg, "--config", given.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    assert_eq!(std::fs::read_to_string(&dropin).unwrap(), EBPF_DROPIN);
    assert_eq!(mode(&dropin), 0o644);
    assert!(stdout(&out).contains("created"), "{}", text(&out));

    // The admin's config (never overwritten) now selects the nftables plane.
    std::fs::write(root.join(CONFIG), "public = \"wan0\"\n").unwrap();
    let out = install(&lab, &["--root", root_arg]);
    assert_exit(&out, 0);
    assert!(!dropin.exists(), "{}", text(&out));
    assert!(stdout(&out).contains("removed"), "{}", text(&out));

    // And back; `uninstall` takes the drop-in with the unit.
    std::fs::write(
        root.join(CONFIG),
        "public = \"wan0\"\ndataplane = \"ebpf\"\n",
    )
    .unwrap();
    let report = json(&install(&lab, &["--root", root_arg, "--json"]));
    assert_eq!(report["ebpf_dropin"]["action"], "created", "{report}");
    assert!(dropin.exists());
    // A config that does not parse says nothing about the plane: the drop-in stays.
    std::fs::write(root.join(CONFIG), "dataplane = \"bpf\"\n").unwrap();
    let report = json(&install(&lab, &["--root", root_arg, "--json"]));
    assert_eq!(report["ebpf_dropin"]["action"], "kept", "{report}");
    assert!(dropin.exists());
    // `uninstall` takes the drop-in, also when the unit in /etc is gone already (it
    // would apply to the packaged unit).
    std::fs::remove_file(root.join(UNIT_PATH)).unwrap();
    assert_exit(&natgw(&lab, &["uninstall", "--root", root_arg]), 0);
    assert!(!dropin.exists() && !root.join(UNIT_PATH).exists());
}

/// The drop-in's ExecStartPre mounts natgw's bpffs, once, where natgw looks for it.
/// Run in a mount namespace of its own with any bpffs there unmounted first, so the
/// host's mounts stay as they are.
#[test]
fn the_ebpf_drop_in_mounts_the_bpffs_once() {
    if !root_or_skip("the_ebpf_drop_in_mounts_the_bpffs_once") {
        return;
    }
    let pre = EBPF_DROPIN
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=+/bin/sh -c "))
        .expect("the drop-in's ExecStartPre");
    let command = pre.trim_matches('\'');
    let script = format!(
        "umount /run/natgw/bpffs 2>/dev/null; {command} && {command} && findmnt -n -o FSTYPE /run/natgw/bpffs"
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-e",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out).trim(),
        "bpf",
        "one bpffs mounted there: {}",
        text(&out)
    );
}

/// Installing on the real system needs root: without it, exit 2 before anything.
#[test]
fn install_and_uninstall_on_the_real_root_need_root() {
    for command in ["install", "uninstall"] {
        let mut run = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(binary());
            c
        } else {
            Command::new(binary())
        };
        let out = run.arg(command).output().unwrap();
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("needs root"), "{}", text(&out));
    }
}
