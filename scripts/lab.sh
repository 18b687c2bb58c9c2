#!/usr/bin/env bash
# Installs what is missing, builds natgw and runs the `natgw lab` demo (as root: the lab
# builds network namespaces; nothing outside them is changed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
if [ "$(id -u)" -eq 0 ]; then
  exec target/release/natgw lab "$@"
else
  exec sudo target/release/natgw lab "$@"
fi
