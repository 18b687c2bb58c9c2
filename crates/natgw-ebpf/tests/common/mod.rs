//! Shared by the root-only tests of this crate.

/// Whether the test can run (root); otherwise prints why it is skipped. Under CI
/// (`CI=true`, which runs as root) a skip is a failure.
pub fn root_or_skip(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: CI runs as root, this must not skip"
        );
        eprintln!("SKIPPED {test}: loading eBPF programs and namespaces need root");
    }
    root
}

/// A network namespace of its own for BPF_PROG_TEST_RUN: the programs' route lookups
/// (hairpins, ICMP errors back to private hosts) happen in the calling thread's
/// namespace, so they must see a known one: 10.0.0.0/8 on a veth, forwarding on.
/// Removed on drop, also when a test panics.
#[allow(dead_code)]
pub struct TestNs {
    pub name: String,
}

#[allow(dead_code)]
impl TestNs {
    pub fn new() -> TestNs {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ngwd{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        natgw_lab::ip(&["netns", "add", &name]).expect("ip netns add");
        let ns = TestNs { name };
        let n = ns.name.as_str();
        for args in [
            &[
                "-n", n, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
            ][..],
            &["-n", n, "addr", "add", "10.0.0.1/8", "dev", "lan0"],
            &["-n", n, "link", "set", "lan0", "up"],
            &["-n", n, "link", "set", "lan1", "up"],
            &["-n", n, "link", "set", "lo", "up"],
        ] {
            natgw_lab::ip(args).expect("set up the test namespace");
        }
        ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("ip_forward in the test namespace");
        ns
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        natgw_lab::in_netns(&self.name, f).expect("enter the test namespace")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = natgw_lab::ip(&["netns", "del", &self.name]);
    }
}
