#!/usr/bin/env bash
# Builds the Debian package of natgw: target/debian/natgw_VERSION_ARCH.deb.
# The man pages, shell completions and example config are generated from the
# release binary itself (hidden `natgw package-assets`), so they match its CLI;
# cargo-deb adds the unit (packaging/natgw.service), copyright and changelog and
# compresses the man pages. Prints the path of the .deb on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (once; compiles for a few minutes)" >&2
  cargo install cargo-deb --locked
fi

cargo build --release --locked -p natgw
assets=target/release/package-assets
rm -rf "$assets"
# The man pages carry the date of the last commit, so a rebuild gives the same pages.
date=$(git log -1 --format=%cs 2>/dev/null || date -u +%F)
target/release/natgw package-assets --out "$assets" --date "$date"
# Debian wants man pages compressed at the highest level, reproducibly (-n: no
# name or time stamp); cargo-deb leaves files under target/release as they are.
gzip -9n "$assets"/man/*.8

# --no-build: package exactly the binary built and described above. cargo-deb
# prints the path of the .deb on stdout.
cargo deb -p natgw --no-build --locked
