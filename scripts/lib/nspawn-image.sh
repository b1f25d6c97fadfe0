#!/usr/bin/env bash
# Builds (once) the Debian 12 image that perf/tests/systemd_nspawn.rs boots with systemd-nspawn,
# and prints its path on stdout. Run as root; needs debootstrap (scripts/lib/debian-packages.txt).
#
#   scripts/lib/nspawn-image.sh            # build if missing, print the path
#   scripts/lib/nspawn-image.sh --path     # only print the path it would have
#
# The image is cached under /var/cache/flannel-rs/ (FLANNEL_NSPAWN_CACHE overrides) in a
# directory named after a hash of the suite, the mirror and the package list below, so a change
# of the list builds a new image and later runs reuse it. It holds systemd as PID 1, the tools the
# test runs inside, and every Depends of our .deb, so `dpkg -i flannel-rs_*.deb` works offline.
# The build goes to a temporary directory renamed into place at the end: an interrupted build
# leaves no half image behind that a later run would take for a good one.
set -euo pipefail

SUITE=bookworm
# systemd as init; the .deb's Depends (iproute2, iptables, adduser, systemd; libc6 and libgcc-s1
# are in minbase); the test's tools: ping (iputils-ping), nc (netcat-openbsd), ps/pgrep (procps),
# nft (nftables mode, the .deb's alternative Depends).
PACKAGES=(systemd systemd-sysv dbus iproute2 iptables nftables adduser iputils-ping procps netcat-openbsd)

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list), else Debian's.
mirror() {
  local f m
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    m=$(awk -v suite="$SUITE" '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri ~ /\/debian\/?$/) { print uri; exit } }
      /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $(i + 1) == suite && $i ~ /\/debian\/?$/) { print $i; exit } }
    ' "$f")
    if [ -n "$m" ]; then echo "${m%/}"; return; fi
  done
  echo "http://deb.debian.org/debian"
}

MIRROR=$(mirror)
CACHE=${FLANNEL_NSPAWN_CACHE:-/var/cache/flannel-rs}
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
IMAGE="$CACHE/nspawn-$SUITE-$KEY"

if [ "${1:-}" = "--path" ]; then
  echo "$IMAGE"
  exit 0
fi
if [ -x "$IMAGE/lib/systemd/systemd" ] && [ -e "$IMAGE/.flannel-rs-image-complete" ]; then
  echo "$IMAGE"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "nspawn-image: building $IMAGE needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "nspawn-image: debootstrap is missing (Debian package debootstrap)" >&2
  exit 1
}

mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf --one-file-system "$TMP"' EXIT
start=$(date +%s)
echo "nspawn-image: debootstrap $SUITE from $MIRROR into $IMAGE" >&2
include=$(IFS=,; echo "${PACKAGES[*]}")
if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$TMP" "$MIRROR" >"$TMP.log" 2>&1; then
  tail -n 30 "$TMP.log" >&2
  echo "nspawn-image: debootstrap failed (full log: $TMP.log)" >&2
  exit 1
fi
rm -f "$TMP.log"
# A quiet, fast boot: no getty on the console, nothing waiting on network-online, a fixed
# machine-id source (the test gives each boot its own with --uuid), a hostname.
ln -sf /dev/null "$TMP/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$TMP/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$TMP/etc/systemd/system/systemd-networkd-wait-online.service"
: >"$TMP/etc/machine-id"
echo flannel-host >"$TMP/etc/hostname"
# apt is never used inside (the test installs our .deb with dpkg -i, offline).
rm -rf "$TMP"/var/cache/apt/archives/*.deb "$TMP"/var/lib/apt/lists/*
touch "$TMP/.flannel-rs-image-complete"
mv -T "$TMP" "$IMAGE"
trap - EXIT
echo "nspawn-image: built in $(($(date +%s) - start)) s" >&2
echo "$IMAGE"
