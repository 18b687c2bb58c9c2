#!/usr/bin/env bash
# CI: builds the Debian package (scripts/package.sh) and checks it the way a Debian
# maintainer would: the expected files are in it, lintian reports no error, the
# unit passes `systemd-analyze verify`, the man pages render without warnings and
# the bash completion parses. Needs the tools from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

deb=$(scripts/package.sh | tail -n 1)
echo "package: $deb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-package: FAIL: $*" >&2; exit 1; }

# Contents.
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$work/list"
expected=(
  /usr/sbin/natgw
  /usr/lib/systemd/system/natgw.service
  /etc/natgw/natgw.toml
  /usr/share/doc/natgw/copyright
  /usr/share/doc/natgw/changelog.Debian.gz
  /usr/share/man/man8/natgw.8.gz
  /usr/share/bash-completion/completions/natgw
  /usr/share/zsh/vendor-completions/_natgw
  /usr/share/fish/vendor_completions.d/natgw.fish
)
# One man page per visible subcommand, as the binary lists them.
for sub in up plan down install uninstall status doctor node probe stun-server lab; do
  expected+=("/usr/share/man/man8/natgw-$sub.8.gz")
done
for path in "${expected[@]}"; do
  grep -qxF "$path" "$work/list" || fail "$path is not in the package"
done
dpkg-deb -f "$deb" Depends | grep -q nftables || fail "Depends lacks nftables"
dpkg-deb --info "$deb" conffiles | grep -qxF /etc/natgw/natgw.toml \
  || fail "/etc/natgw/natgw.toml is not a conffile"
# Installing never enables or starts the gateway: postinst re-enables the unit only
# where the admin had enabled it (`debian-installed`), and deb-systemd-invoke starts
# only enabled units; removal stops a running one.
postinst=$(dpkg-deb --info "$deb" postinst)
grep -q 'if deb-systemd-helper debian-installed natgw.service' <<<"$postinst" \
  || fail "postinst would enable natgw.service on a fresh install"
dpkg-deb --info "$deb" prerm | grep -q 'deb-systemd-invoke stop natgw.service' \
  || fail "prerm does not stop natgw.service on removal"
echo "contents: ${#expected[@]} expected paths present; /etc/natgw/natgw.toml is a conffile; the package does not enable the unit"

# Lintian: errors fail; the remaining tags are printed.
rc=0
lintian --fail-on error "$deb" >"$work/lintian" 2>&1 || rc=$?
grep -v 'running with root privileges' "$work/lintian" || true
[ "$rc" -eq 0 ] || fail "lintian reports errors (exit $rc)"
echo "lintian: no errors"

dpkg-deb -x "$deb" "$work/root"
cmp "$work/root/usr/lib/systemd/system/natgw.service" packaging/natgw.service \
  || fail "the packaged unit differs from packaging/natgw.service"

# The unit, with ExecStart pointing at the packaged binary (verify checks that the
# command exists). Any message is a failure: verify exits 0 on some warnings.
sed "s|/usr/sbin/natgw|$work/root/usr/sbin/natgw|" packaging/natgw.service >"$work/natgw.service"
verify=$(systemd-analyze verify --man=no --generators=no "$work/natgw.service" 2>&1) \
  || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
echo "systemd-analyze verify: natgw.service ok"

# Man pages: mandoc finds no error, man renders natgw(8) without a warning.
for page in "$work"/root/usr/share/man/man8/*.8.gz; do
  zcat "$page" | mandoc -T lint -W error >/dev/null 2>"$work/lint" \
    || fail "mandoc: $(basename "$page"): $(cat "$work/lint")"
done
man --warnings -l "$work/root/usr/share/man/man8/natgw.8.gz" >"$work/natgw.txt" 2>"$work/man.err"
[ ! -s "$work/man.err" ] || fail "man natgw.8: $(cat "$work/man.err")"
grep -q 'natgw-install' "$work/natgw.txt" || fail "natgw(8) does not list natgw-install"
echo "man pages: $(ls "$work"/root/usr/share/man/man8 | wc -l) pages lint clean; natgw(8) renders"

bash -n "$work/root/usr/share/bash-completion/completions/natgw" || fail "bash completion does not parse"
echo "completions: bash parses"

echo "check-package: ok in $((SECONDS - start)) s"
