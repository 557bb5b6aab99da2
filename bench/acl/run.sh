#!/usr/bin/env bash
# What ACLs cost (see bench/README.md, "ACLs on vs off"): one cairn binary runs as
# `agent -dev` pinned to core 0, first with ACLs off, then with `default_policy = "deny"` and
# every request (and DNS, through `acl.tokens.default`) acting with a token whose rules must
# be looked up — not the management token, which skips them. Per round and mode:
#   DNS: udpload (core 1, 100 queries outstanding) asks `web.service.consul A` (3 instances);
#   KV:  wrk (core 1, 1 thread, 16 connections) PUTs to 1,000 keys with X-Consul-Token.
# Modes alternate for ROUNDS rounds; medians are printed, and the median of each round's
# on/off ratio, which cancels the machine's slow drift (a shared 2-core VM drifts by tens of
# percent over minutes, more than the cost measured).
#
#   bash bench/acl/run.sh [--binary target/release/cairn] [--seconds 5] [--rounds 5]
#
# Needs gcc and wrk (apt-get install wrk); builds the release binary when not given one.
set -euo pipefail

seconds=5
rounds=5
binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        *) echo "acl/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "$binary" ]; then
    (cd "$root" && cargo build --release -q)
    binary="$root/target/release/cairn"
fi
command -v wrk >/dev/null || { echo "acl/run.sh: wrk is missing (apt-get install wrk)" >&2; exit 2; }
work=$(mktemp -d /tmp/cairn-acl-bench.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/udpload" "$root/bench/dns/udpload.c"
echo "web.service.consul A" >"$work/q.txt"

root_token=6a1f0c52-9d0e-4c8e-8f6e-0000000000aa
token=6a1f0c52-9d0e-4c8e-8f6e-0000000000bb
echo '{}' >"$work/off.json"
cat >"$work/on.json" <<JSON
{"acl": {"enabled": true, "default_policy": "deny",
         "tokens": {"initial_management": "$root_token", "default": "$token"}}}
JSON
cat >"$work/put.lua" <<'LUA'
wrk.method = "PUT"
wrk.body = "value"
wrk.headers["X-Consul-Token"] = os.getenv("TOKEN")
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, "/v1/kv/bench/" .. (n % 1000))
end
LUA
api=http://127.0.0.1:28710

start() { # mode
    taskset -c 0 "$binary" agent -dev -config-file "$work/$1.json" -http-port 28710 -dns-port 28711 \
        -server-port 28712 -serf-lan-port 28713 -serf-wan-port 28714 -log-level warn >"$work/agent.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "$api/v1/status/leader" | grep -q 127 && break
        sleep 0.1
    done
    if [ "$1" = on ]; then
        for _ in $(seq 100); do
            curl -sf -H "X-Consul-Token: $root_token" "$api/v1/acl/token/self" >/dev/null && break
            sleep 0.1
        done
        local rules='key_prefix \"\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }'
        local policy
        policy=$(curl -sf -X PUT -H "X-Consul-Token: $root_token" "$api/v1/acl/policy" \
            -d "{\"Name\": \"bench\", \"Rules\": \"$rules\"}" | sed -n 's/.*"ID":"\([^"]*\)".*/\1/p')
        curl -sf -X PUT -H "X-Consul-Token: $root_token" "$api/v1/acl/token" \
            -d "{\"SecretID\": \"$token\", \"Policies\": [{\"ID\": \"$policy\"}]}" >/dev/null
    fi
    for i in 1 2 3; do
        curl -sf -X PUT -H "X-Consul-Token: $root_token" "$api/v1/catalog/register" \
            -d "{\"Node\": \"n$i\", \"Address\": \"10.0.0.$i\", \"Service\": {\"Service\": \"web\", \"Port\": 80}}" >/dev/null
    done
}

stop() {
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

run() { # mode → "dns_qps kv_writes_per_s"
    start "$1"
    taskset -c 1 "$work/udpload" -s 127.0.0.1 -p 28711 -d "$work/q.txt" -l 1 -q 100 >/dev/null # warm-up
    local qps
    qps=$(taskset -c 1 "$work/udpload" -s 127.0.0.1 -p 28711 -d "$work/q.txt" -l "$seconds" -q 100 |
        sed -n 's/.*\bqps=\([0-9]*\).*/\1/p')
    local out
    out=$(TOKEN=$token taskset -c 1 wrk -t1 -c16 -d"${seconds}s" -s "$work/put.lua" "$api")
    if echo "$out" | grep -q "Non-2xx"; then
        echo "acl/run.sh: refused writes in mode $1:" >&2; echo "$out" >&2; exit 1
    fi
    local writes
    writes=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
    stop
    echo "$qps ${writes%.*}"
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
: >"$work/off"; : >"$work/on"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do run "$mode" >>"$work/$mode"; done
done
echo "command: bash bench/acl/run.sh --seconds $seconds --rounds $rounds (binary $binary)"
for mode in off on; do
    echo "ACLs $mode: DNS qps $(cut -d' ' -f1 "$work/$mode" | tr '\n' ' ')→ median $(cut -d' ' -f1 "$work/$mode" | median); KV writes/s $(cut -d' ' -f2 "$work/$mode" | tr '\n' ' ')→ median $(cut -d' ' -f2 "$work/$mode" | median)"
done
dns_ratio=$(awk -v a="$(cut -d' ' -f1 "$work/on" | median)" -v b="$(cut -d' ' -f1 "$work/off" | median)" 'BEGIN {printf "%.3f", a / b}')
kv_ratio=$(awk -v a="$(cut -d' ' -f2 "$work/on" | median)" -v b="$(cut -d' ' -f2 "$work/off" | median)" 'BEGIN {printf "%.3f", a / b}')
echo "on/off of the medians: DNS ${dns_ratio}x, KV writes ${kv_ratio}x"
paired() { # column → median of the per-round on/off ratios
    paste -d' ' <(cut -d' ' -f"$1" "$work/on") <(cut -d' ' -f"$1" "$work/off") | awk '{printf "%.4f\n", $1 / $2}' | median
}
echo "on/off per round, median: DNS $(paired 1)x, KV writes $(paired 2)x (target: cost under 5%, i.e. ≥ 0.950x)"
