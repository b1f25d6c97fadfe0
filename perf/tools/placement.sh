#!/usr/bin/env bash
# TCP 1 stream through ours with the iperf3 client and server pinned to chosen CPUs: does
# where the applications run decide the speed? Brings up a `flannel-demo --keep` testbed
# (two simulated hosts, real etcd), then for each round and placement (client CPU, server CPU;
# "x" = left to the scheduler) runs one 5 s iperf3 and prints Gbit/s, retransmits and every
# data-plane thread that used more than 0.05 CPU-s (from /proc/<pid>/task/*/schedstat) with the
# CPU it was last on.
#
#   perf/tools/placement.sh [BIN_DIR] [--shift]
#
# BIN_DIR: the release binaries (default target/release; `cargo build --release --workspace`).
# --shift: send one UDP datagram to a fresh port before each test, so the stream's new flow
# takes the next worker in turn (without it, every test's stream lands on the same worker).
# Root only; stops the testbed it started on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${1:-target/release}")
shift_flow=0
[ "${2:-}" = "--shift" ] && shift_flow=1
[ "$(id -u)" = 0 ] || { echo "placement.sh: must run as root (network namespaces)" >&2; exit 1; }
log=$(mktemp /tmp/placement-demo.XXXXXX)
setsid "$bin/flannel-demo" --keep --bin-dir "$bin" >"$log" 2>&1 3>&- 4>&- &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$log" /tmp/placement.$$.*' EXIT
for _ in $(seq 1 120); do grep -q "stays up" "$log" && break; sleep 1; done
grep -q "stays up" "$log" || { cat "$log" >&2; exit 1; }
P=$(grep -o "ip netns exec fl[0-9]*h1-c" "$log" | head -1 | awk '{print $4}' | sed 's/h1-c//')
dst=$(grep "host 2  underlay" "$log" | grep -o "container [0-9.]*" | awk '{print $2}')
dps=$(pgrep -f "$bin/flannel-dataplane" | tr '\n' ' ')
snap() {
  for p in $dps; do
    for t in /proc/"$p"/task/*; do
      echo "$p/${t##*/}:$(cat "$t"/comm) $(awk '{print $1}' "$t"/schedstat) $(awk '{print $39}' "$t"/stat)"
    done
  done | sort
}
port=5600
for round in 1 2; do
  for pl in "0 0" "0 1" "1 0" "1 1" "x x"; do
    read -r c s <<<"$pl"
    port=$((port + 1))
    pin_c=(); pin_s=()
    [ "$c" != x ] && pin_c=(taskset -c "$c")
    [ "$s" != x ] && pin_s=(taskset -c "$s")
    ip netns exec "${P}h2-c" "${pin_s[@]}" timeout 30 iperf3 -s -1 -p $port >/dev/null 2>&1 &
    sleep 0.3
    if [ $shift_flow = 1 ]; then
      ip netns exec "${P}h1-c" bash -c "echo x > /dev/udp/$dst/$((port + 3000))"
      sleep 0.2
    fi
    snap >/tmp/placement.$$.a
    ip netns exec "${P}h1-c" "${pin_c[@]}" iperf3 -c "$dst" -p $port -t 5 -J >/tmp/placement.$$.json 2>&1
    snap >/tmp/placement.$$.b
    g=$(python3 -c "import json; j=json.load(open('/tmp/placement.$$.json')); print('%.2f Gbit/s, %s retransmits' % (j['end']['sum_received']['bits_per_second']/1e9, j['end']['sum_sent'].get('retransmits')))")
    w=$(join /tmp/placement.$$.a /tmp/placement.$$.b | awk '{d=($4-$2)/1e9; if (d>0.05) printf "%s %.2fs@cpu%s  ", $1, d, $5}')
    echo "round $round, client cpu$c, server cpu$s: $g | $w"
  done
done
