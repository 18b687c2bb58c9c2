#!/usr/bin/env bash
# Installs the system packages natgw, its lab and its tests use (Debian/Ubuntu):
# iproute2 (ip), nftables (nft), conntrack (natgw run flushes connections translated to
# an old public address), iptables (doctor reads iptables-legacy; tests add
# foreign rules), iputils-ping (the lab's ICMP check), util-linux (setpriv, for the
# no-privilege test), coturn (a second STUN implementation for the interop tests),
# stun-client (the classic RFC 3489 client `stun`, for the interop tests),
# gcc (the linker Rust needs), prometheus (only for promtool: the tests check a real
# scrape with `promtool check metrics` and contrib/ rules with `promtool check rules`);
# for scripts/check-package.sh: dpkg-dev, lintian, systemd (systemd-analyze verify),
# man-db and mandoc (man page checks); linux-perf for `natgw bench --profile`;
# keepalived and conntrackd (the HA pair: natgw runs them itself, per instance, inside
# namespaces in the tests and the lab); clang and libbpf-dev (build.rs of natgw-ebpf
# compiles the eBPF data plane's C programs).
set -euo pipefail
packages=(iproute2 nftables iptables conntrack iputils-ping util-linux coturn stun-client gcc clang libbpf-dev)
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
# The package checks (scripts/check-package.sh).
packages+=(dpkg-dev lintian systemd man-db mandoc)
packages+=(linux-perf)
# HA daemons: natgw starts them with its own config files; their packaged services must not
# start on the host (conntrackd's default config would sync the root namespace's connections).
ha_packages=(keepalived conntrackd)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
if ! dpkg -s "${ha_packages[@]}" >/dev/null 2>&1; then
  # policy-rc.d exit 101 = "do not start services" for the duration of this install only.
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    own_policy=true
  fi
  "${sudo[@]}" apt-get install -y -qq "${ha_packages[@]}" >/dev/null
  if $own_policy; then "${sudo[@]}" rm -f "$policy"; fi
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now keepalived.service conntrackd.service >/dev/null 2>&1 || true
  fi
fi
packages+=("${ha_packages[@]}")
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "system packages present: ${packages[*]} prometheus"
