#!/usr/bin/env bash
# Installs the system packages natgw, its lab and its tests use (Debian/Ubuntu):
# iproute2 (ip), nftables (nft), iptables (doctor reads iptables-legacy; tests add foreign rules), iputils-ping (lab's ICMP check), util-linux (setpriv,
# used by the no-privilege test), gcc (the linker Rust needs).
set -euo pipefail
packages=(iproute2 nftables iptables iputils-ping util-linux gcc)
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
echo "system packages present: ${packages[*]}"
