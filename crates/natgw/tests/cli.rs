//! natgw's command line as an admin meets it, with no gateway behind it: malformed
//! values and unusable config files are refused (exit 2, one message naming the flag or
//! the file) before root or the network is needed, and the final error is logged in the
//! chosen format. No root needed. Under root every run gets a fresh, empty network
//! namespace (`unshare --net`), so even a value wrongly accepted changes nothing here;
//! each run is also capped in memory and time, so a regression fails instead of
//! exhausting the machine.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_natgw");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `timeout 30 prlimit --as=2GiB [unshare --net] natgw ARGS`, without inherited
/// logging settings.
fn natgw_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("timeout");
    command.args(["30", "prlimit", "--as=2147483648", "--"]);
    if is_root() {
        command.args(["unshare", "--net", "--"]);
    }
    command
        .arg(EXE)
        .args(args)
        .env_remove("NATGW_LOG")
        .env_remove("INVOCATION_ID")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run natgw")
}

fn natgw(args: &[&str]) -> Output {
    natgw_env(args, &[])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_refused(out: &Output, args: &[&str], expect: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

/// A directory of its own for each test, removed afterwards.
struct Scratch(PathBuf);
impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("natgw-cli-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn malformed_addresses_are_refused_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--snat-to", "203.0.113.300"], "'--snat-to <ADDR>'"),
        (
            &["plan", "--snat-to", "gateway.example.org"],
            "'--snat-to <ADDR>'",
        ),
        (
            &["node", "up", "--gateway", "10.0.0.300"],
            "'--gateway <ADDR>'",
        ),
        (
            &["node", "persist", "--gateway", "headnode", "--dry-run"],
            "'--gateway <ADDR>'",
        ),
        (
            &["probe", "--stun", "198.51.100.300:3478"],
            "'--stun <HOST[:PORT]>'",
        ),
        (
            &["probe", "--tcp", "198.51.100.10:http"],
            "'--tcp <HOST[:PORT]>'",
        ),
        (
            &["probe", "--tcp", "198.51.100.10:0"],
            "'--tcp <HOST[:PORT]>'",
        ),
        (&["probe", "--udp", "bad host:53"], "'--udp <HOST[:PORT]>'"),
        (&["probe", "--icmp", "198.51.100.10:80"], "'--icmp <HOST>'"),
        (
            &["stun-server", "--listen", "stun.example.org"],
            "'--listen <ADDR[:PORT]>'",
        ),
        (
            &[
                "stun-server",
                "--listen",
                "198.51.100.10",
                "--alt",
                "198.51.100.11:70000",
            ],
            "'--alt <ADDR[:PORT]>'",
        ),
        (
            &["status", "--log-format", "xml"],
            "'--log-format <FORMAT>'",
        ),
        (&["up", "--dataplane", "xdp"], "'--dataplane <PLANE>'"),
        (
            &["plan", "--dataplane", "EBPF"],
            "expected nftables or ebpf",
        ),
        (
            &[
                "stun-server",
                "--listen",
                "198.51.100.10",
                "--rate-limit",
                "0",
            ],
            "--rate-limit 0 is out of range",
        ),
        (
            &["stun-server", "--listen", "198.51.100.10", "--stats", "0"],
            "--stats 0 is out of range",
        ),
    ];
    for (args, flag) in cases {
        assert_refused(&natgw(args), args, flag);
    }
}

/// `--dataplane` is checked like the config key, before root or the system is needed.
#[test]
fn dataplane_flag_refusals_name_the_flag_and_override_the_key() {
    let scratch = Scratch::new("dataplane-flag");
    let config = scratch.0.join("natgw.toml");
    std::fs::write(
        &config,
        "dataplane = \"ebpf\"\nport_range = \"61000-65535\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["up", "--config", config, "--masquerade"],
            "natgw.toml:1: dataplane = \"ebpf\" does not support masquerade yet",
        ),
        (
            &["plan", "--dataplane", "ebpf", "--masquerade"],
            "--dataplane ebpf does not support masquerade yet; give snat_to, or leave it out to use the public interface's address, or use --dataplane nftables",
        ),
        (
            &["run", "--config", config, "--dataplane", "nftables"],
            "natgw.toml:2: port_range applies only to dataplane = \"ebpf\"; give --dataplane ebpf or remove port_range",
        ),
    ];
    for (args, expect) in cases {
        assert_refused(&natgw(args), args, expect);
    }
}

#[test]
fn host_names_are_still_accepted_where_they_were() {
    // Parsed, then probed: a failed probe is exit 1 with a per-probe line, not exit 2.
    let args = [
        "probe",
        "--tcp",
        "localhost:9",
        "--udp",
        "localhost",
        "--timeout",
        "0.5",
    ];
    let out = natgw(&args);
    assert_ne!(out.status.code(), Some(2), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tcp localhost:9") && stdout.contains("udp localhost"),
        "{stdout}"
    );
}

#[test]
fn config_that_is_not_a_small_regular_file_is_refused() {
    let scratch = Scratch::new("config");
    let fifo = scratch.0.join("natgw.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let big = scratch.0.join("big.toml");
    // Valid TOML that only its size makes wrong: a comment over 4 MiB.
    let mut text = String::from("public = \"eth1\"\n#");
    text.push_str(&"x".repeat(4 << 20));
    std::fs::write(&big, text).unwrap();

    let dir = scratch.0.display().to_string();
    let (fifo, big) = (fifo.display().to_string(), big.display().to_string());
    let cases = [
        (
            "/dev/zero",
            "config file /dev/zero is a character device, not a regular file".to_string(),
        ),
        (
            dir.as_str(),
            format!("config file {dir} is a directory, not a regular file"),
        ),
        (
            fifo.as_str(),
            format!("config file {fifo} is a FIFO, not a regular file"),
        ),
        (
            big.as_str(),
            format!("config file {big} is larger than the limit of 4 MiB"),
        ),
    ];
    for (path, message) in &cases {
        for command in ["plan", "up"] {
            let args = [command, "--config", path];
            let out = natgw(&args);
            assert_refused(&out, &args, message);
            assert_eq!(
                stderr(&out).lines().count(),
                1,
                "one clear line: {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn the_final_error_is_one_json_line_with_json_logs() {
    let args = ["--log-format", "json", "plan", "--config", "/dev/zero"];
    let out = natgw(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let event: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(event["level"], "ERROR", "{event}");
    assert_eq!(event["exit_code"], 2, "{event}");
    assert_eq!(event["outcome"], "refused", "{event}");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .starts_with("config file /dev/zero is a character device"),
        "{event}"
    );
}

#[test]
fn verbose_and_natgw_log_raise_the_level_and_human_errors_stay_one_line() {
    let args = ["plan", "--config", "/dev/zero"];
    let quiet = natgw(&args);
    assert_eq!(
        stderr(&quiet),
        "natgw: error: config file /dev/zero is a character device, not a regular file; give --config the path of a TOML file\n"
    );

    let verbose = natgw(&["-vv", "plan", "--config", "/dev/zero"]);
    let err = stderr(&verbose);
    assert!(
        err.lines().any(|l| l.starts_with("natgw: debug: starting")),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("natgw: error:"))
            .count(),
        1,
        "{err}"
    );

    let env = natgw_env(&args, &[("NATGW_LOG", "debug")]);
    assert!(
        stderr(&env).contains("natgw: debug: starting"),
        "{}",
        stderr(&env)
    );
    let off = natgw_env(
        &["-vv", "plan", "--config", "/dev/zero"],
        &[("NATGW_LOG", "off")],
    );
    assert_eq!(
        stderr(&off),
        stderr(&quiet),
        "NATGW_LOG wins over -v; the error still shows"
    );

    let bad = natgw_env(&["status"], &[("NATGW_LOG", "natgw=[[")]);
    assert_refused(
        &bad,
        &["status"],
        "NATGW_LOG=\"natgw=[[\" is not a log filter",
    );
}

/// Runs natgw in a private mount (and network) namespace whose /run is a fresh tmpfs,
/// with `journal_dir` (if any) mounted where journald's socket lives. The host's /run
/// is never touched.
fn natgw_under_systemd(journal_dir: Option<&Path>, args: &[&str]) -> Output {
    let script = r#"mount -t tmpfs natgw-test /run || exit 99
if [ -n "$1" ]; then
  mkdir -p /run/systemd/journal && mount --bind "$1" /run/systemd/journal || exit 99
fi
shift
exec "$@""#;
    Command::new("timeout")
        .args([
            "30",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--net",
            "--",
        ])
        .args(["sh", "-c", script, "sh"])
        .arg(journal_dir.map_or(String::new(), |d| d.display().to_string()))
        .arg(EXE)
        .args(args)
        .env_remove("NATGW_LOG")
        .env_remove("JOURNAL_STREAM")
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .stdin(Stdio::null())
        .output()
        .expect("run natgw in a mount namespace")
}

/// The fields of one journald native-protocol datagram (`NAME=value\n`, or
/// `NAME\n` + 64-bit little-endian length + value + `\n`).
fn journal_fields(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while let Some(end) = data.iter().position(|&b| b == b'\n' || b == b'=') {
        let name = String::from_utf8_lossy(&data[..end]).into_owned();
        let value;
        if data[end] == b'=' {
            let stop = end + 1 + data[end + 1..].iter().position(|&b| b == b'\n').unwrap();
            value = &data[end + 1..stop];
            data = &data[stop + 1..];
        } else {
            let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap()) as usize;
            value = &data[end + 9..end + 9 + len];
            data = &data[end + 10 + len..];
        }
        fields.insert(name, String::from_utf8_lossy(value).into_owned());
    }
    fields
}

#[test]
fn under_systemd_the_final_error_goes_to_the_journal() {
    if !is_root() {
        eprintln!("SKIPPED under_systemd_the_final_error_goes_to_the_journal: needs root (mount namespace)");
        return;
    }
    let scratch = Scratch::new("journal");
    let socket = UnixDatagram::bind(scratch.0.join("socket")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let out = natgw_under_systemd(Some(&scratch.0), &["plan", "--config", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // stderr is a pipe here, not the journal stream: the admin still sees the line.
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    let mut buf = vec![0; 65536];
    let event = loop {
        let n = socket.recv(&mut buf).expect("an event in the journal");
        // The layer first sends an empty datagram to see whether journald listens.
        if n > 0 {
            break journal_fields(&buf[..n]);
        }
    };
    assert_eq!(
        event.get("PRIORITY").map(String::as_str),
        Some("3"),
        "{event:?}"
    );
    assert_eq!(
        event.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("natgw"),
        "{event:?}"
    );
    assert_eq!(
        event.get("F_EXIT_CODE").map(String::as_str),
        Some("2"),
        "{event:?}"
    );
    assert_eq!(
        event.get("F_OUTCOME").map(String::as_str),
        Some("refused"),
        "{event:?}"
    );
    assert!(
        event["MESSAGE"].starts_with("config file /dev/zero is a character device"),
        "{event:?}"
    );
}

#[test]
fn under_systemd_without_a_journal_logs_go_to_stderr() {
    if !is_root() {
        eprintln!("SKIPPED under_systemd_without_a_journal_logs_go_to_stderr: needs root (mount namespace)");
        return;
    }
    let out = natgw_under_systemd(None, &["plan", "--config", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "natgw: error: config file /dev/zero is a character device, not a regular file; give --config the path of a TOML file\n"
    );
}
