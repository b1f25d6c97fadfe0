#!/usr/bin/env bash
# Unpaced UDP through ours, two builds alternating: for each of ROUNDS rounds and each build, a
# fresh `flannel-demo --keep` testbed and two 4 s `iperf3 -u -b 0` tests per payload size (64
# and 1400 bytes); prints the received rate (kpps) and the loss (from the sender's count).
#
#   perf/tools/udp-ab.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS]
#
# Each BIN_DIR holds a `cargo build --release --workspace` output (flannel-demo, flanneld,
# flannel-dataplane, flannelctl, flannel-loadgen). ROUNDS defaults to 3. Root only; stops each
# testbed it started.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "udp-ab.sh: must run as root (network namespaces)" >&2; exit 1; }
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-3}
demo=
log=$(mktemp /tmp/udp-ab-demo.XXXXXX)
trap '[ -n "$demo" ] && kill -INT $demo 2>/dev/null; wait 2>/dev/null; rm -f "$log"' EXIT
one() {
  local bin=$1 label=$2
  setsid "$bin/flannel-demo" --keep --bin-dir "$bin" >"$log" 2>&1 3>&- 4>&- &
  demo=$!
  for _ in $(seq 1 120); do grep -q "stays up" "$log" && break; sleep 1; done
  grep -q "stays up" "$log" || { cat "$log" >&2; exit 1; }
  local P dst port res r
  P=$(grep -o "ip netns exec fl[0-9]*h1-c" "$log" | head -1 | awk '{print $4}' | sed 's/h1-c//')
  dst=$(grep "host 2  underlay" "$log" | grep -o "container [0-9.]*" | awk '{print $2}')
  port=$((6000 + RANDOM % 90))
  res="$label"
  for sz in 64 1400 64 1400; do
    port=$((port + 1))  # a fresh port: a datagram still queued from the last test cannot reach it
    ip netns exec "${P}h2-c" timeout 20 iperf3 -s -1 -p $port >/dev/null 2>&1 &
    sleep 0.3
    r=$(ip netns exec "${P}h1-c" iperf3 -c "$dst" -p $port -u -b 0 -l $sz -t 4 -J 2>/dev/null |
      python3 -c "
import json, sys
s = json.load(sys.stdin)['end']['sum']
sent, lost = s['packets'], s['lost_packets']
print('%d B: %.1f kpps, %.0f %% lost' % ($sz, (sent - lost) / s['seconds'] / 1e3, 100 * lost / max(sent, 1)))")
    res="$res | $r"
    sleep 0.7
  done
  echo "$res"
  kill -INT $demo
  wait $demo || true
  demo=
}
for round in $(seq 1 "$rounds"); do
  one "$old" "round $round old"
  one "$new" "round $round new"
done
