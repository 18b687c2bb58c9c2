#!/usr/bin/env bash
# Runs natgw's whole test suite: unit tests and the end-to-end tests in network
# namespaces (those need root; as a normal user the test binaries run under sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# ifupdown's own parser checks natgw's edits of /etc/network/interfaces. Its package
# is only unpacked (never installed: installing it would manage this host's network).
if [ -z "${NATGW_IFQUERY:-}" ] && ! command -v ifquery >/dev/null; then
  unpacked=target/ifupdown
  if [ ! -x "$unpacked/sbin/ifquery" ]; then
    mkdir -p target/debs
    (cd target/debs && apt-get download ifupdown >/dev/null)
    dpkg-deb -x target/debs/ifupdown_*.deb "$unpacked"
  fi
  export NATGW_IFQUERY="$PWD/$unpacked/sbin/ifquery"
fi
runner=()
if [ "$(id -u)" -ne 0 ]; then
  runner=(--config 'target."cfg(all())".runner = ["sudo", "-E"]')
fi
cargo test --workspace --locked "${runner[@]}"
