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
# The eBPF plane's UDP binding that must outlive 130 s of silence: ignored by default,
# run here in the background of the rest of the suite (cargo holds its build lock only
# while building, so the two runs overlap), its result checked at the end.
cargo test -p natgw --test ebpf --locked --no-run "${runner[@]}"
idle_log=$(mktemp)
cargo test -p natgw --test ebpf --locked "${runner[@]}" -- \
  --ignored --exact ebpf_udp_binding_is_alive_after_130_s_idle >"$idle_log" 2>&1 &
idle=$!
suite_status=0
cargo test --workspace --locked "${runner[@]}" || suite_status=$?
idle_status=0
wait "$idle" || idle_status=$?
cat "$idle_log"
rm -f "$idle_log"
[ "$suite_status" -eq 0 ] || exit "$suite_status"
exit "$idle_status"
