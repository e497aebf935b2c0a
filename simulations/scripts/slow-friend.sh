#!/usr/bin/env bash
# What one slow friend costs a large upload: five real daemons on loopback (2-of-5, happy 4),
# the fifth behind a real bandwidth limit (a tc token bucket on `lo` for the packets sent to
# its port: a home link or a Tor circuit slower than the others); times `kith put` of a
# SIZE MiB file with all five at loopback speed and with the fifth limited to RATE, then the
# `kith check --repair` that places the shares an upload left behind.
#
#   cargo build --release -p kith && sudo simulations/scripts/slow-friend.sh [target/release/kith] [SIZE_MiB] [RATE]
#
# Needs root (tc). Defaults: 128 MiB, 40mbit. The qdisc on `lo` is removed and the daemons
# stopped whatever happens; everything else lives in a temporary directory removed at the end.
set -euo pipefail
K=$(realpath "${1:-target/release/kith}")
SIZE=${2:-128}
RATE=${3:-40mbit}
T=$(mktemp -d)
export KITH_LOG=warn
pids=()
cleanup() {
  tc qdisc del dev lo root 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
if tc qdisc show dev lo | grep -q "qdisc prio 1: root"; then
  echo "lo already has a prio root qdisc; not touching it" >&2; exit 1
fi
init() { "$K" --dir "$T/$1" init --nickname "$1" --listen /ip4/127.0.0.1/tcp/0 --reserved 0 "${@:2}" >/dev/null; }
start() {
  "$K" --dir "$T/$1" run >/dev/null 2>"$T/$1.log" & pids+=($!)
  for _ in $(seq 600); do [ -f "$T/$1/api.json" ] && return; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}
init ann --shares-needed 2 --shares-happy 4 --shares-total 5
start ann
for n in ben cat dan eve; do
  init "$n"
  "$K" --dir "$T/$n" join "$("$K" --dir "$T/ann" invite --expires 1h 2>/dev/null | tail -1)" >/dev/null
  start "$n"
done
connected() { "$K" --dir "$T/ann" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["connected_peers"]))'; }
for _ in $(seq 600); do [ "$(connected)" = 4 ] && break; sleep 0.1; done
# Eve's listening port: every connection to her (dialed by her from it, or to it) carries the
# bytes sent to her to that port.
port=$("$K" --dir "$T/eve" id | head -1 | sed -E 's|.*/tcp/([0-9]+)/.*|\1|')
head -c "$((SIZE << 20))" /dev/urandom >"$T/a"
head -c "$((SIZE << 20))" /dev/urandom >"$T/b"
put() {
  local s e
  s=$(date +%s.%N)
  "$K" --dir "$T/ann" put --json "$1" >"$T/out" 2>/dev/null
  e=$(date +%s.%N)
  python3 - "$s" "$e" "$T/out" "$SIZE" <<'EOF'
import json, sys
s, e, out, size = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
r = json.JSONDecoder().raw_decode(open(out).read())[0]
print(f"{e - s:.2f} s ({size / (e - s):.1f} MiB/s), {len(r['placement'])} shares, "
      f"{len(r['left_behind'])} server(s) left behind")
EOF
}
cap() { python3 -c 'import sys; print(open(sys.argv[1]).read().strip().splitlines()[-1])' "$T/out"; }
echo "| kith put, $SIZE MiB (5 daemons, 2-of-5, happy 4) | time |"
echo "|---|---|"
echo "| all five at loopback speed | $(put "$T/a") |"
tc qdisc add dev lo root handle 1: prio
tc qdisc add dev lo parent 1:3 handle 30: tbf rate "$RATE" burst 1mb latency 200ms
tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport "$port" 0xffff flowid 1:3
echo "| the fifth limited to $RATE | $(put "$T/b") |"
c=$(cap)
s=$(date +%s.%N)
"$K" --dir "$T/ann" check --repair "$c" >"$T/repair" 2>&1 || true
e=$(date +%s.%N)
echo "| then \`kith check --repair\` (fifth still limited) | $(python3 -c "print(f'{$e-$s:.2f} s')"): $(tail -1 "$T/repair") |"
