#!/usr/bin/env bash
# Per-query kernel work of one cairn binary under unpinned DNS load (bench/README.md, "DNS on
# every core"): starts it with the DNS bench's catalog (1,000 services x 3), runs dnsperf on
# every core (-T <cores> -c <8 x cores>) and `perf stat` on the server meanwhile, and prints
# qps and, per query, system calls, context switches, migrations and the server's CPU time.
#
#   bash bench/dns/perf_stat.sh target/release/cairn [SECONDS]
#
# Needs perf (linux-perf), dnsperf and python3.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,9p' "$0"; exit 2; }
bin=$1
secs=${2:-6}
here=$(cd "$(dirname "$0")" && pwd)
cores=$(nproc)
work=$(mktemp -d /tmp/cairn-perf-stat.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
python3 "$here/gen.py" files "$work" >/dev/null
"$bin" agent -server -bootstrap-expect 1 -data-dir "$work/data" -http-port 0 -dns-port 0 -server-port 0 \
    -serf-lan-port 0 -serf-wan-port -1 -node bench -log-level info > "$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q "registered this server in the catalog" "$work/out.log" && break; sleep 0.1; done
http_port=$(sed -n 's/.*HTTP API listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/out.log" | head -n 1)
dns_port=$(sed -n 's/.*DNS listening (UDP and TCP) addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/out.log" | head -n 1)
[ -n "$dns_port" ] || { echo "perf_stat.sh: cairn did not start:" >&2; cat "$work/out.log" >&2; exit 1; }
python3 "$here/gen.py" load "$http_port" >/dev/null
dnsperf -s 127.0.0.1 -p "$dns_port" -d "$work/queries-a.txt" -l $((secs + 2)) -T "$cores" -c $((8 * cores)) \
    -q $((200 * cores)) > "$work/dnsperf.out" 2>&1 &
load=$!
sleep 1
perf stat -e raw_syscalls:sys_enter,context-switches,cpu-migrations,task-clock -p "$pid" -o "$work/stat.out" \
    -- sleep "$secs" >/dev/null 2>&1
wait "$load"
qps=$(sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' "$work/dnsperf.out")
python3 - "$work/stat.out" "$qps" "$secs" "$bin" <<'PY'
import re, sys
path, qps, secs, binary = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
counts = {}
for line in open(path):
    m = re.match(r"\s*([\d,.]+)\s+(?:msec\s+)?(\S+)", line)
    if m:
        try:
            counts[m.group(2)] = float(m.group(1).replace(",", ""))
        except ValueError:
            pass
queries = qps * secs
print(f"{binary}: {qps:,.0f} qps; per query: system calls {counts.get('raw_syscalls:sys_enter', 0) / queries:.2f}, "
      f"context switches {counts.get('context-switches', 0) / queries:.3f}, "
      f"migrations {counts.get('cpu-migrations', 0) / queries:.4f}, "
      f"server CPU {counts.get('task-clock', 0) * 1000 / queries:.2f} us")
PY
