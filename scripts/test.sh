#!/usr/bin/env bash
# Runs natgw's whole test suite: unit tests and the end-to-end tests in network
# namespaces (those need root; as a normal user the test binaries run under sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
runner=()
if [ "$(id -u)" -ne 0 ]; then
  runner=(--config 'target."cfg(all())".runner = ["sudo", "-E"]')
fi
cargo test --workspace --locked "${runner[@]}"
