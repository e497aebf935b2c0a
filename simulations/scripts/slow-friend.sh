#!/usr/bin/env bash
# What one slow friend costs a large upload: five real daemons (2-of-5, happy 4); four share
# this machine's network stack, the fifth runs in its own network namespace behind a veth
# whose direction towards it is limited by a token bucket (tc tbf) to RATE: a home link or a
# Tor circuit slower than the others. Times `kith put` of a SIZE MiB file with the fifth at
# full speed and limited, the `kith check --repair` that places shares an upload left
# behind, and the next upload (which puts the fifth aside from the start, for ten minutes).
#
#   cargo build --release -p kith && simulations/scripts/slow-friend.sh [target/release/kith] [SIZE_MiB] [RATE]
#
# Needs root (ip netns, tc). Defaults: 128 MiB, 40mbit. The namespace and veth are removed
# and the daemons stopped whatever happens; everything else lives in a temporary directory
# removed at the end.
set -euo pipefail
K=$(realpath "${1:-target/release/kith}")
SIZE=${2:-128}
RATE=${3:-40mbit}
NS=kith-slow
HOST=10.99.0.1
SLOW=10.99.0.2
T=$(mktemp -d)
export KITH_LOG=warn
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del ks-host 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
ip netns add "$NS"
ip link add ks-host type veth peer name ks-slow
ip link set ks-slow netns "$NS"
ip addr add "$HOST/24" dev ks-host
ip link set ks-host up
ip -n "$NS" addr add "$SLOW/24" dev ks-slow
ip -n "$NS" link set ks-slow up
ip -n "$NS" link set lo up
limit() { tc qdisc replace dev ks-host root tbf rate "$1" burst 1mb latency 200ms; }
unlimit() { tc qdisc del dev ks-host root 2>/dev/null || true; }

# Every node listens on an address the namespace can reach; the four in this namespace reach
# each other through `lo` (a local address), the fifth only through the veth.
# (`kith init` picks the listening port, so it runs where the node will.)
init() { ${IN_NS:-} "$K" --dir "$T/$1" init --nickname "$1" --listen "/ip4/$2/tcp/0" --reserved 0 "${@:3}" >/dev/null; }
start() {
  ${3:-} "$K" --dir "$T/$1" run >/dev/null 2>"$T/$1.log" & pids+=($!)
  for _ in $(seq 600); do [ -f "$T/$1/api.json" ] && return; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}
init ann "$HOST" --shares-needed 2 --shares-happy 4 --shares-total 5
start ann "$HOST"
for n in cat dan eve ben; do
  if [ "$n" = ben ]; then addr=$SLOW; in_ns="ip netns exec $NS"; else addr=$HOST; in_ns=""; fi
  IN_NS=$in_ns init "$n" "$addr"
  $in_ns "$K" --dir "$T/$n" join "$("$K" --dir "$T/ann" invite --expires 1h 2>/dev/null | tail -1)" >/dev/null
  start "$n" "$addr" "$in_ns"
done
connected() { "$K" --dir "$T/ann" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["connected_peers"]))'; }
for _ in $(seq 600); do [ "$(connected)" = 4 ] && break; sleep 0.1; done
[ "$(connected)" = 4 ] || { echo "ann did not connect to the four others" >&2; exit 1; }
put() {
  local s e
  head -c "$((SIZE << 20))" /dev/urandom >"$T/file"
  s=$(date +%s.%N)
  "$K" --dir "$T/ann" put --json "$T/file" >"$T/out" 2>/dev/null
  e=$(date +%s.%N)
  python3 - "$s" "$e" "$T/out" "$SIZE" <<'EOF'
import json, sys
s, e, out, size = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
r = json.JSONDecoder().raw_decode(open(out).read())[0]
left = len(r.get("left_behind", []))
aside = len(r.get("put_aside", []))
print(f"{e - s:.2f} s ({size / (e - s):.1f} MiB/s) | {len(r['placement'])} | {left} | {aside} |")
EOF
}
cap() { tail -1 "$T/out"; }
echo "| kith put, $SIZE MiB (5 daemons, 2-of-5, happy 4) | time | shares placed | servers left behind | servers put aside |"
echo "|---|---|---|---|---|"
echo "| the fifth at full speed | $(put) "
limit "$RATE"
echo "| the fifth limited to $RATE | $(put) "
s=$(date +%s.%N)
"$K" --dir "$T/ann" check --repair "$(cap)" >"$T/repair" 2>&1 || true
e=$(date +%s.%N)
repair_took=$(python3 -c "print(f'{$e-$s:.2f} s')")
echo "| the fifth still limited, the next upload | $(put) "
echo
echo "between the two: \`kith check --repair\` of the first: $repair_took: $(tail -1 "$T/repair")"
