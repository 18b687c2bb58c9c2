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
