#!/usr/bin/env bash
# Installs the system packages natgw, its lab and its tests use (Debian/Ubuntu):
# iproute2 (ip), nftables (nft), conntrack (natgw run flushes connections translated to
# an old public address), iptables (doctor reads iptables-legacy; tests add
# foreign rules), iputils-ping (the lab's ICMP check), util-linux (setpriv, for the
# no-privilege test), coturn (a second STUN implementation for the interop tests),
# gcc (the linker Rust needs), prometheus (only for promtool: the tests check a real
# scrape with `promtool check metrics` and contrib/ rules with `promtool check rules`);
# for scripts/check-package.sh: dpkg-dev, lintian, systemd (systemd-analyze verify),
# man-db and mandoc (man page checks); clang and libbpf-dev (build.rs of natgw-ebpf
# compiles the eBPF data plane's C programs).
set -euo pipefail
packages=(iproute2 nftables iptables conntrack iputils-ping util-linux coturn gcc clang libbpf-dev)
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
# The package checks (scripts/check-package.sh).
packages+=(dpkg-dev lintian systemd man-db mandoc)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "system packages present: ${packages[*]} prometheus"
