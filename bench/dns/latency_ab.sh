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
    if [ -n "${restore_rmem:-}" ]; then "${sudo_cmd[@]}" sysctl -q -w net.core.rmem_default="$old_rmem" || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/udpload" "$here/udpload.c"
python3 "$here/gen.py" files "$work"
unpinned=""
on_server=(taskset -c 0)
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
declare -A port=()
# shellcheck source=bench/dns/servers.sh
source "$here/servers.sh"
start_knot knot "$work"
start_cairn old "${bin[old]}"
start_cairn new "${bin[new]}"

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
