//! Compiles the eBPF programs in bpf/ with clang (Debian: `clang`, `libbpf-dev`; see
//! scripts/install-deps.sh). `NATGW_CLANG` names another clang.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/nat.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=NATGW_CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("nat.bpf.o");
    let clang = std::env::var("NATGW_CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {src} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): install clang and libbpf-dev (scripts/install-deps.sh) or set NATGW_CLANG"
        ),
    }
}
