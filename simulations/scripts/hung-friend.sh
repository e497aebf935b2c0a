#!/usr/bin/env bash
# What one hung friend costs: five real daemons on loopback (2-of-5, happy 4), one of them
# stopped with SIGSTOP (a closed laptop lid, a frozen process); times `kith cp -r` of N small
# files, `kith put` of a small file, `kith ls` and `kith check` with all five up and with the fifth
# stopped.
#
#   cargo build --release -p kith && simulations/scripts/hung-friend.sh [target/release/kith] [N]
#
# Everything lives in a temporary directory that is removed at the end; the daemons are
# stopped (and the stopped one continued first) whatever happens.
set -euo pipefail
K=$(realpath "${1:-target/release/kith}")
N=${2:-50}
T=$(mktemp -d)
export KITH_LOG=warn
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
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
"$K" --dir "$T/ann" alias add home "$("$K" --dir "$T/ann" mkdir | tail -1)" >/dev/null
mkdir "$T/a" "$T/b"
for i in $(seq "$N"); do head -c 4096 /dev/urandom >"$T/a/f$i"; head -c 4096 /dev/urandom >"$T/b/f$i"; done
for f in one two three; do head -c 4096 /dev/urandom >"$T/$f"; done
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "print(f'{$e-$s:.2f} s')"; }
stop() { kill -STOP "${pids[4]}"; }
# Continues the fifth server and has it answer a check (which waits for every server's
# listing), so that ann no longer counts it as silent.
resume() { kill -CONT "${pids[4]}"; "$K" --dir "$T/ann" check "$cap" >/dev/null; }
cap=$("$K" --dir "$T/ann" put "$T/one" | tail -1)
echo "| operation (5 daemons, 2-of-5, happy 4) | all up | fifth stopped, first operation to meet it | fifth known silent |"
echo "|---|---|---|---|"
up=$(secs "$K" --dir "$T/ann" cp -r "$T/a" home:a); stop
first=$(secs "$K" --dir "$T/ann" cp -r "$T/b" home:b)
echo "| kith cp -r, $N x 4 KiB | $up | $first | |"
known=$(secs "$K" --dir "$T/ann" put "$T/two"); resume
up=$(secs "$K" --dir "$T/ann" put "$T/three" --random-key); stop
first=$(secs "$K" --dir "$T/ann" put "$T/three" --random-key)
echo "| kith put, 4 KiB | $up | $first | $known |"
resume
up=$(secs "$K" --dir "$T/ann" ls home:a); stop
first=$(secs "$K" --dir "$T/ann" ls home:a)
known=$(secs "$K" --dir "$T/ann" ls home:b)
echo "| kith ls, $N entries | $up | $first | $known |"
resume
up=$(secs "$K" --dir "$T/ann" check "$cap"); stop
first=$(secs "$K" --dir "$T/ann" check "$cap")
known=$(secs "$K" --dir "$T/ann" check "$cap")
echo "| kith check (unhealthy while the fifth is stopped) | $up | $first | $known |"
