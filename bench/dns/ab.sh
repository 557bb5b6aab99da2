#!/usr/bin/env bash
# A/B of two cairn builds on the DNS fast path (see bench/README.md, "DNS A/B"): each runs
# as `agent -dev` pinned to core 0 with 3 instances of `web`, and udpload (core 1, 100
# queries outstanding) asks `web.service.consul A` for SECONDS; the two alternate for ROUNDS
# rounds and the medians are printed. Used to check what a change costs the hot path (the
# metrics' "no more than 2%").
#
#   bash bench/dns/ab.sh OLD_BINARY NEW_BINARY [--seconds 5] [--rounds 7]
#
# Build an older commit's binary with e.g.
#   git worktree add /tmp/old <commit> && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --manifest-path /tmp/old/Cargo.toml
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
a=$1 b=$2; shift 2
seconds=5
rounds=7
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) echo "ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cairn-dns-ab.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/udpload" "$here/udpload.c"
echo "web.service.consul A" >"$work/q.txt"

run() { # binary → qps
    taskset -c 0 "$1" agent -dev -http-port 28700 -dns-port 28701 -server-port 28702 -serf-lan-port 28703 \
        -serf-wan-port 28704 -log-level warn >"$work/agent.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf http://127.0.0.1:28700/v1/status/leader | grep -q 127 && break
        sleep 0.1
    done
    for i in 1 2 3; do
        curl -sf -X PUT http://127.0.0.1:28700/v1/catalog/register \
            -d "{\"Node\": \"n$i\", \"Address\": \"10.0.0.$i\", \"Service\": {\"Service\": \"web\", \"Port\": 80}}" >/dev/null
    done
    taskset -c 1 "$work/udpload" -s 127.0.0.1 -p 28701 -d "$work/q.txt" -l 1 -q 100 >/dev/null # warm-up
    taskset -c 1 "$work/udpload" -s 127.0.0.1 -p 28701 -d "$work/q.txt" -l "$seconds" -q 100 |
        sed -n 's/.*\bqps=\([0-9]*\).*/\1/p'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
: >"$work/a"; : >"$work/b"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then run "$a" >>"$work/a"; run "$b" >>"$work/b"; else run "$b" >>"$work/b"; run "$a" >>"$work/a"; fi
done
ma=$(median <"$work/a"); mb=$(median <"$work/b")
echo "A $a: $(tr '\n' ' ' <"$work/a")→ median $ma qps"
echo "B $b: $(tr '\n' ' ' <"$work/b")→ median $mb qps"
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "B/A = %.3f\n", b / a}'
