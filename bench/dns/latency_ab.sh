#!/usr/bin/env bash
# Latency A/B of two cairn builds against Knot (see bench/README.md, "DNS latency: answer-cache
# rebuilds spread out"): Knot and both cairns serve bench/dns's catalog (1,000 services x 3),
# all pinned to core 0; udpload on core 1 sends A queries at fixed rates (-Q, open loop) to
# each in turn, three rounds in rotated order, and prints p50/p99/p99.9 per run. The p99 of a
# fixed rate is where cairn's own pauses show (a whole UDP loop held up by work bunched in
# time), beside Knot's for the machine's.
#
#   bash bench/dns/latency_ab.sh OLD_BINARY NEW_BINARY [--seconds 10] [--rates "20000 165000"]
#
# Needs knot, gcc, python3 and taskset (bench/dns/run.sh installs them); does not build cairn.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,11p' "$0"; exit 2; }
declare -A bin=([old]=$1 [new]=$2)
shift 2
seconds=10
rates="20000 165000"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rates) rates="$2"; shift 2 ;;
        *) echo "latency_ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cairn-dns-latency.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/udpload" "$here/udpload.c"
python3 "$here/gen.py" files "$work"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

declare -A port=()
port[knot]=$(free_port)
mkdir -p "$work/knot"
cat >"$work/knot/knot.conf" <<EOF
server:
    rundir: "$work/knot"
    listen: 127.0.0.1@${port[knot]}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "$work/knot"
zone:
  - domain: consul.
    storage: "$work"
    file: "consul.zone"
EOF
# Knot takes the system's default receive buffer; give it NSD's 2 MiB as bench/dns/run.sh does.
old_rmem=$(sysctl -n net.core.rmem_default)
sysctl -q -w net.core.rmem_default=2097152 2>/dev/null || true
taskset -c 0 knotd -c "$work/knot/knot.conf" >"$work/knot/out.log" 2>&1 &
pids+=($!)
sleep 1
sysctl -q -w net.core.rmem_default="$old_rmem" 2>/dev/null || true

for name in old new; do
    mkdir -p "$work/$name"
    taskset -c 0 "${bin[$name]}" agent -server -bootstrap-expect 1 -data-dir "$work/$name/data" -http-port 0 \
        -dns-port 0 -server-port 0 -serf-lan-port 0 -serf-wan-port -1 -node bench -log-level info \
        >"$work/$name/out.log" 2>&1 &
    pids+=($!)
done
for name in old new; do
    for _ in $(seq 300); do
        grep -q "registered this server in the catalog" "$work/$name/out.log" && break
        sleep 0.1
    done
    http=$(sed -n 's/.*HTTP API listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name/out.log" | head -n 1)
    port[$name]=$(sed -n 's/.*DNS listening (UDP and TCP) addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name/out.log" | head -n 1)
    if [ -z "$http" ] || [ -z "${port[$name]}" ]; then
        echo "latency_ab.sh: $name (${bin[$name]}) did not start:" >&2; cat "$work/$name/out.log" >&2; exit 1
    fi
    python3 "$here/gen.py" load "$http"
done

for rate in $rates; do
    for round in 1 2 3; do
        case $round in 1) order="knot old new" ;; 2) order="old new knot" ;; 3) order="new knot old" ;; esac
        for s in $order; do
            line=$(taskset -c 1 "$work/udpload" -s 127.0.0.1 -p "${port[$s]}" -d "$work/queries-a.txt" -l "$seconds" -Q "$rate")
            echo "rate=$rate round=$round $s $(tr ' ' '\n' <<<"$line" |
                grep -E '^(qps|lost|p50_us|p99_us|p999_us|client_stall_ms)=' | tr '\n' ' ')"
        done
    done
done
