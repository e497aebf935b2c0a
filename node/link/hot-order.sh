#!/usr/bin/env bash
# Regenerates node/link/hot.order, the functions the release linker places first (see
# node/build.rs): those a node runs while it starts, joins a grid on loopback and idles, then
# those it runs for a few uploads, downloads and status queries. Recorded with callgrind on the
# release `kith` binary and on the bench's (whose nodes are itself, and whose copy of the node
# library has other symbol hashes), two nodes of a loopback grid of five.
#
#   bash node/link/hot-order.sh        # needs valgrind (Debian: apt-get install valgrind)
#
# Then rebuild (`cargo build --release -p kith`) and compare an idle node's RSS. The list names
# the symbols of this build (their hashes follow the compiler and build settings; functions
# added or renamed later are missing): regenerate it when the bench's count of listed functions
# in its binary falls or the idle RSS it prints creeps up.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=node/link/hot.order
command -v valgrind >/dev/null || { echo "hot-order: needs valgrind" >&2; exit 1; }
# Two builds, as users and the README build them (one build of both would unify features and
# give the node library other symbol hashes than either binary has on its own).
cargo build --release -p kith
cargo build --release -p kith-simulations --bin bench
bin=$PWD/target/release/kith
bench=$PWD/target/release/bench
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

k() { "$bin" --dir "$tmp/n$1" "${@:2}"; }
# Waits up to $2 seconds for the command in $3.. to succeed.
deadline() {
    local what=$1 secs=$2 end=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || { echo "hot-order: $what not within ${secs} s" >&2; exit 1; }
        sleep 0.2
    done
}

grid=(--shares-needed 2 --shares-happy 3 --shares-total 4 --reserved 0)
# Node 0 (`kith run`) has the defaults a user gets (TCP and QUIC on every interface, UPnP
# probe, repairer); the others listen on loopback only, as the bench's do, and node 1 is a
# bench node.
k 0 init --nickname n0 "${grid[@]}" >/dev/null
for i in 1 2 3 4; do
    k "$i" init --nickname "n$i" --listen /ip4/127.0.0.1/tcp/0 "${grid[@]}" >/dev/null
done
# Nodes 0 and 1 run under callgrind, twice: joining and idling, then working.
record() { valgrind --tool=callgrind --demangle=no --callgrind-out-file="$@"; }
start_recorded() {
    KITH_LOG=warn record "$tmp/cg.$1.0" "$bin" --dir "$tmp/n0" run >>"$tmp/n0.log" 2>&1 &
    pids[0]=$!
    KITH_LOG=warn record "$tmp/cg.$1.1" "$bench" node "$tmp/n1" >>"$tmp/n1.log" 2>&1 &
    pids[1]=$!
    for i in 0 1; do deadline "node $i's API" 180 k "$i" status; done
}
stop_recorded() {
    for n in 0 1; do
        k "$n" stop >/dev/null
        deadline "node $n's exit" 120 bash -c "! kill -0 ${pids[n]}"
    done
}

start_recorded idle
for i in 2 3 4; do
    KITH_LOG=warn "$bin" --dir "$tmp/n$i" run >"$tmp/n$i.log" 2>&1 &
    pids[i]=$!
done
for i in 2 3 4; do deadline "node $i's API" 60 k "$i" status; done
for i in 1 2 3 4; do
    code=$(k $(((i - 1) / 2)) invite 2>/dev/null | tail -n 1)
    k "$i" join "$code" >/dev/null
done
five() { [ "$(k "$1" members | grep -c 12D3KooW)" -ge 5 ]; }
deadline "a grid of five" 180 five 0
deadline "a grid of five" 60 five 1
sleep 30 # idle: gossip rounds, pings, lease timers
stop_recorded

start_recorded work
head -c 5000 /dev/urandom >"$tmp/small"
head -c $((3 << 20)) /dev/urandom >"$tmp/big"
for n in 0 1; do
    for f in small big; do
        cap=$(k "$n" put "$tmp/$f" | tail -n 1)
        k "$n" get "$cap" >"$tmp/$f.back"
        cmp "$tmp/$f" "$tmp/$f.back"
        k "$n" check "$cap" >/dev/null
    done
    k "$n" status >/dev/null
    k "$n" friends >/dev/null
done
stop_recorded

# Mangled names of the binaries' functions, those of the idle phase first, each once.
nm --defined-only "$bin" "$bench" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$tmp/syms"
names() { cat "$@" | grep -oE '^c?fn=\([0-9]+\) .*' | sed -E 's/^c?fn=\([0-9]+\) //' | sort -u; }
idle=("$tmp"/cg.idle.*)
all=("$tmp"/cg.*)
names "${idle[@]}" | comm -12 "$tmp/syms" - >"$tmp/idle"
names "${all[@]}" | comm -12 "$tmp/syms" - | comm -23 - "$tmp/idle" >"$tmp/rest"
cat "$tmp/idle" "$tmp/rest" >"$out.tmp"
mv "$out.tmp" "$out"
echo "hot-order: $(wc -l <"$tmp/idle") idle and $(wc -l <"$tmp/rest") more functions in $out"
