#!/usr/bin/env bash
# Cross-datacenter DNS on loopback (see bench/README.md, "Federation"): two one-server
# datacenters joined through the WAN pool, dc1's server asked for
#   local     web.service.consul              (answered from dc1's catalog)
#   remote    web.service.dc2.consul          (sent to dc2's server over the server RPC)
#   query     web-q.query.consul              (a prepared query, dc1 healthy)
#   failover  web-failover.query.consul       (a prepared query whose dc1 instances are
#                                              critical: executed in dc2)
# each 3 instances. Two modes: "pinned" (both servers on core 0, the load generator on
# core 1) and "all-cores" (no pinning). Per case: max qps (udpload, 100 queries
# outstanding), then latency p50/p99/p99.9 at a fixed rate of half that case's max.
#
#   bash bench/federation/run.sh              # 10 s per measurement (~3 minutes)
#   bash bench/federation/run.sh --quick      # 2 s per measurement
set -euo pipefail

seconds=10
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --quick) seconds=2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
if [ "$(nproc)" -lt 2 ]; then
    echo "run.sh: needs 2 cores; this machine has $(nproc)" >&2
    exit 1
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
missing=()
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v gcc >/dev/null || missing+=(gcc)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then "${sudo_cmd[@]}" apt-get install -y "${missing[@]}"; fi

(cd "$repo" && cargo build --release --bin cairn)
cairn="$repo/target/release/cairn"
work=$(mktemp -d /tmp/cairn-federation-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/udpload" "$repo/bench/dns/udpload.c"

# Ports: dc1 at 28xxx, dc2 at 29xxx (HTTP x500, DNS x600, RPC x300, LAN x301, WAN x302).
start() { # dc base pin
    local dc=$1 base=$2 pin=$3 join=()
    if [ "$dc" = dc2 ]; then join=(-join-wan 127.0.0.1:28302); fi
    $pin "$cairn" agent -server -bootstrap-expect 1 -datacenter "$dc" -node "s-$dc" -bind 127.0.0.1 \
        -data-dir "$work/$dc" -http-port "${base}500" -dns-port "${base}600" -server-port "${base}300" \
        -serf-lan-port "${base}301" -serf-wan-port "${base}302" -log-level warn "${join[@]}" \
        >"$work/$dc.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${base}500/v1/status/leader" | grep -q 127 && return 0
        sleep 0.1
    done
    echo "run.sh: $dc did not start:" >&2; cat "$work/$dc.log" >&2; exit 1
}

register() { # http-port node address status
    curl -sf -X PUT "http://127.0.0.1:$1/v1/catalog/register" -d "{\"Node\": \"$2\", \"Address\": \"$3\",
        \"Service\": {\"Service\": \"web\", \"Port\": 80},
        \"Check\": {\"CheckID\": \"web\", \"Name\": \"web\", \"Status\": \"$4\", \"ServiceID\": \"web\"}}" >/dev/null
}

setup() { # pin
    start dc1 28 "$1"
    start dc2 29 "$1"
    for i in 1 2 3; do
        register 28500 "a$i" "10.1.0.$i" passing
        register 29500 "b$i" "10.2.0.$i" passing
    done
    curl -sf -X POST http://127.0.0.1:28500/v1/query -d '{"Name": "web-q", "Service": {"Service": "web"}}' >/dev/null
    # The failover query wants node meta rack=f, which only dc2's nodes carry: dc1 has no
    # instance for it, so every execution fails over to dc2 (dc1's "web" stays healthy for
    # the other cases).
    for i in 1 2 3; do
        curl -sf -X PUT http://127.0.0.1:29500/v1/catalog/register -d "{\"Node\": \"b$i\", \"Address\": \"10.2.0.$i\",
            \"NodeMeta\": {\"rack\": \"f\"}}" >/dev/null
    done
    curl -sf -X POST http://127.0.0.1:28500/v1/query -d '{"Name": "web-failover",
        "Service": {"Service": "web", "NodeMeta": {"rack": "f"}, "Failover": {"Datacenters": ["dc2"]}}}' >/dev/null
    for name in web.service.consul web.service.dc2.consul web-q.query.consul web-failover.query.consul; do
        for _ in $(seq 100); do
            [ "$(dig +short @127.0.0.1 -p 28600 "$name" A | wc -l)" -eq 3 ] && continue 2
            sleep 0.1
        done
        echo "run.sh: $name does not answer 3 records" >&2; exit 1
    done
}

teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
    rm -rf "$work/dc1" "$work/dc2"
}

cases="local:web.service.consul remote:web.service.dc2.consul query:web-q.query.consul failover:web-failover.query.consul"
load() { # pin file mode...
    local pin=$1 file=$2; shift 2
    $pin "$work/udpload" -s 127.0.0.1 -p 28600 -d "$file" -l "$seconds" "$@"
}
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p"; }

echo "cairn $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores, $seconds s per measurement"
printf '%-10s %-9s %10s %10s %10s %10s %8s\n' mode case max_qps p50_us p99_us p99.9_us lost
for mode in pinned all-cores; do
    if [ "$mode" = pinned ]; then server_pin="taskset -c 0"; load_pin="taskset -c 1"; else server_pin=""; load_pin=""; fi
    setup "$server_pin"
    for c in $cases; do
        name=${c#*:}
        echo "$name A" >"$work/q.txt"
        max=$(load "$load_pin" "$work/q.txt" -q 100 | field qps)
        rate=$((${max%.*} / 2))
        line=$(load "$load_pin" "$work/q.txt" -Q "$rate")
        printf '%-10s %-9s %10s %10s %10s %10s %8s\n' "$mode" "${c%%:*}" "${max%.*}" \
            "$(echo "$line" | field p50_us)" "$(echo "$line" | field p99_us)" \
            "$(echo "$line" | field p999_us)" "$(echo "$line" | field lost)"
    done
    teardown
done
echo "latency at a fixed rate of half the same case's max qps"
