#!/usr/bin/env bash
# cairn's DNS benchmark (see bench/README.md, section "DNS"): cairn holding 1,000 services x 3
# instances against Knot DNS and NSD serving a static zone with the same names and answers.
#
#   bash bench/dns/run.sh                  # 3 rounds, 10 s per measurement (~10 minutes)
#   bash bench/dns/run.sh --quick          # smoke run: 1 round, 2 s per measurement
#   bash bench/dns/run.sh --seconds 20 --rounds 5
#   bash bench/dns/run.sh --unpinned       # every server and client free to use every core
#
# Pinned (the default): every server runs pinned to core 0 and every load generator to core 1
# (taskset). Unpinned: nothing is pinned; Knot runs its default worker count (one UDP worker
# per core), NSD one server process per core (reuseport), cairn its default (one UDP thread
# per core), and dnsperf one thread per core — the way they are deployed, the load generator
# sharing the cores with the server. All servers stay up for the whole run; each measurement
# loads one of them while the others idle.
# Phases, each a number of rounds over [knot, nsd, cairn] with the order rotated every round:
#   1. max qps, A queries, dnsperf (the issue's method)
#   2. max qps, A queries, udpload (bench/dns/udpload.c: one busy-polling thread with
#      sendmmsg/recvmmsg, which drives the servers harder than dnsperf can from one core);
#      pinned only (unpinned, its busy core would be taken from the server)
#   3. max qps, SRV queries, dnsperf (and udpload, pinned)
#   4. max qps, A queries, dnsperf, with 10x the catalog (10,000 services x 3): cairn gets the
#      other 9,000 registered, Knot and NSD a second instance serving the larger zone
#   5. latency p50/p99/p99.9, A queries, udpload at a fixed rate of 50% of Knot's median
#      dnsperf max (the issue's rate), then (pinned) at 50% of Knot's median udpload max;
#      unpinned, udpload sleeps between turns (-y 50) instead of busy-polling a shared core
# Options: DNSPERF_ARGS (default "-c 4 -q 200" pinned, "-T <cores> -c <8 x cores> -q <200 x
# cores>" unpinned) and UDPLOAD_WINDOW (default 100 outstanding).
set -euo pipefail

seconds=10
rounds=3
unpinned=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --quick) seconds=2; rounds=1; shift ;;
        --unpinned) unpinned=1; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
run_args="--seconds $seconds --rounds $rounds${unpinned:+ --unpinned}"
cores=$(nproc)
if [ -n "$unpinned" ]; then
    on_server=()
    on_client=()
    dnsperf_args=${DNSPERF_ARGS:-"-T $cores -c $((8 * cores)) -q $((200 * cores))"}
else
    on_server=(taskset -c 0)
    on_client=(taskset -c 1)
    dnsperf_args=${DNSPERF_ARGS:-"-c 4 -q 200"}
fi
udpload_window=${UDPLOAD_WINDOW:-100}
big_services=10000

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ "$(nproc)" -lt 2 ]; then
    echo "run.sh: needs 2 cores (servers on core 0, load generators on core 1); this machine has $(nproc)" >&2
    exit 1
fi

# --- tools -------------------------------------------------------------------------------
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v knotd >/dev/null || missing+=(knot)
command -v nsd >/dev/null || missing+=(nsd)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v gcc >/dev/null || missing+=(gcc)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    "${sudo_cmd[@]}" apt-get install -y "${missing[@]}"
fi
# The packages may start system-wide knot/nsd services (on port 53); stop them so they hold no
# CPU. The benchmark runs its own instances on free high ports.
for svc in knot nsd; do
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        "${sudo_cmd[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
        "${sudo_cmd[@]}" service "$svc" stop >/dev/null 2>&1 || true
    fi
done

(cd "$repo" && cargo build --release --bin cairn)
cairn_bin="$repo/target/release/cairn"

work=$(mktemp -d /tmp/cairn-dns-bench.XXXXXX)
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
mkdir -p "$work/big"
python3 "$here/gen.py" files "$work/big" "$big_services"
cp "$work/big/queries-a.txt" "$work/queries-a10x.txt"

# shellcheck source=bench/dns/servers.sh
source "$here/servers.sh"

# NSD: one server process pinned (server-count 1), one per core unpinned (with reuseport, as
# Knot and cairn), RRL off. The same records as Knot and cairn: NSD adds the zone's NS
# record to every answer's authority section unless `minimal-responses: yes`, which also
# drops the SRV targets' A records from the additional section; so NSD serves the zone
# without its apex NS record and with minimal responses off: no authority section, the
# targets' addresses in the additional section, as the other two send.
start_nsd() { # NAME ZONE_DIR
    local name=$1 p count=1 reuseport=no
    p=$(free_port)
    mkdir -p "$work/$name"
    grep -v ' IN NS ' "$2/consul.zone" > "$work/$name/consul.zone"
    if [ -n "$unpinned" ]; then count=$cores; reuseport=yes; fi
    cat > "$work/$name/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$p
    do-ip6: no
    server-count: $count
    reuseport: $reuseport
    username: ""
    chroot: ""
    zonesdir: "$work/$name"
    database: ""
    zonelistfile: "$work/$name/zone.list"
    xfrdfile: "$work/$name/xfrd.state"
    xfrdir: "$work/$name"
    pidfile: "$work/$name/nsd.pid"
    logfile: "$work/$name/nsd.log"
    rrl-ratelimit: 0
    minimal-responses: no
remote-control:
    control-enable: no
zone:
    name: consul.
    zonefile: consul.zone
EOF
    "${on_server[@]}" nsd -d -c "$work/$name/nsd.conf" > "$work/$name/out.log" 2>&1 &
    pids+=($!)
    port[$name]=$p
}

declare -A port=()
start_knot knot "$work"
start_nsd nsd "$work"

start_cairn cairn "$cairn_bin"

servers=(knot nsd cairn)

# --- correctness -------------------------------------------------------------------------
# Every server must give the same 3 addresses and 3 SRV records for a sample of names.
check_answers() { # NAME...
    local server name expect got srv
    for server in "${servers[@]}"; do
        for _ in $(seq 50); do
            dig +noedns +short +tries=1 +time=1 @127.0.0.1 -p "${port[$server]}" "$1.service.consul" A 2>/dev/null | grep -q . && break
            sleep 0.2
        done
    done
    for name in "$@"; do
        expect=""
        for server in "${servers[@]}"; do
            got=$(dig +noedns +short +tries=1 +time=2 @127.0.0.1 -p "${port[$server]}" "$name.service.consul" A | sort | tr '\n' ' ')
            srv=$(dig +noedns +short +tries=1 +time=2 @127.0.0.1 -p "${port[$server]}" "$name.service.consul" SRV | sort | tr '\n' ' ')
            if [ "$(wc -w <<< "$got")" -ne 3 ] || [ "$(grep -o '\.node\.' <<< "$srv" | wc -l)" -ne 3 ]; then
                echo "run.sh: $server: $name: expected 3 A and 3 SRV records, got A: $got SRV: $srv" >&2
                exit 1
            fi
            if [ -z "$expect" ]; then expect="$got$srv"; elif [ "$expect" != "$got$srv" ]; then
                echo "run.sh: $server answers $name differently: $got$srv vs $expect" >&2
                exit 1
            fi
        done
        echo "$name.service.consul: all servers: A $got"
    done
}
echo "== correctness (dig +noedns; answers sorted; response size for svc-1)"
check_answers svc-1 svc-500 svc-1000
for server in "${servers[@]}"; do
    size() { dig +noedns +tries=1 +time=2 @127.0.0.1 -p "${port[$server]}" svc-1.service.consul "$1" | sed -n 's/.*MSG SIZE  rcvd: //p'; }
    # Every server must send the same sections: 3 SRV records, no authority, the 3 targets' A
    # records as additionals.
    sections=$(dig +noedns +tries=1 +time=2 @127.0.0.1 -p "${port[$server]}" svc-1.service.consul SRV | grep -o 'ANSWER: [0-9]*, AUTHORITY: [0-9]*, ADDITIONAL: [0-9]*')
    if [ "$sections" != "ANSWER: 3, AUTHORITY: 0, ADDITIONAL: 3" ]; then
        echo "run.sh: $server: SRV answer for svc-1 has $sections; expected ANSWER: 3, AUTHORITY: 0, ADDITIONAL: 3" >&2
        exit 1
    fi
    printf '%-6s port %-5s  A response %s bytes, SRV response %s bytes (%s)\n' "$server" "${port[$server]}" "$(size A)" "$(size SRV)" "$sections"
done
for server in "${servers[@]}"; do
    echo "$server UDP socket: $(ss -ulnm "sport = :${port[$server]}" | grep -o 'rb[0-9]*' | head -n 1 | sed 's/rb/receive buffer /') bytes"
done

# --- measurement helpers -----------------------------------------------------------------
results="$work/results.tsv"
: > "$results"

cpu_snap() { awk '/^cpu[01] /{idle=$5+$6; tot=0; for(i=2;i<=NF;i++) tot+=$i; printf "%s %s ", tot, idle}' /proc/stat; }
# busy% of core 0 and core 1 between two snapshots
cpu_busy() {
    awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," "); split(b,y," ");
        printf "%.0f %.0f", 100*(1-(y[2]-x[2])/(y[1]-x[1])), 100*(1-(y[4]-x[4])/(y[3]-x[3]))}'
}

# order of servers in round r (1-based): rotated by r-1
order() {
    local r=$1 n=${#servers[@]} i
    for i in $(seq 0 $((n - 1))); do echo "${servers[$(((i + r - 1) % n))]}"; done
}

# one dnsperf max-qps run; appends: phase mix server round qps lost busy0 busy1
run_dnsperf() {
    local mix=$1 server=$2 round=$3 out="$work/dnsperf.out" a b busy
    a=$(cpu_snap)
    # shellcheck disable=SC2086
    "${on_client[@]}" dnsperf -s 127.0.0.1 -p "${port[$server]}" -d "$work/queries-$mix.txt" -l "$seconds" $dnsperf_args > "$out" 2>&1
    b=$(cpu_snap)
    busy=$(cpu_busy "$a" "$b")
    local qps lost
    qps=$(sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' "$out")
    lost=$(sed -n 's/.*Queries lost: *\([0-9]*\).*/\1/p' "$out")
    printf 'dnsperf\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mix" "$server" "$round" "${qps%.*}" "$lost" "${busy// /$'\t'}" >> "$results"
    printf '  round %s %-6s dnsperf %-3s %8s qps  lost %-6s core0 %s%% core1 %s%%\n' "$round" "$server" "$mix" "${qps%.*}" "$lost" ${busy}
}

# one udpload run (-q N closed loop or -Q RATE fixed rate); appends the key=value line
run_udpload() {
    local phase=$1 mix=$2 server=$3 round=$4 mode=$5 a b busy line
    a=$(cpu_snap)
    # shellcheck disable=SC2086
    line=$("${on_client[@]}" "$work/udpload" -s 127.0.0.1 -p "${port[$server]}" -d "$work/queries-$mix.txt" -l "$seconds" $mode)
    b=$(cpu_snap)
    busy=$(cpu_busy "$a" "$b")
    printf '%s\t%s\t%s\t%s\t%s busy0=%s busy1=%s\n' "$phase" "$mix" "$server" "$round" "$line" ${busy} >> "$results"
    # client stalls only mean something at a fixed rate: a closed-loop turn can take 0.2 ms
    local keys='qps|lost|p50_us|p99_us|p999_us'
    if [ "$phase" != udpload ]; then keys="$keys|client_stall_ms"; fi
    printf '  round %s %-6s %-12s %-3s %s  core0 %s%% core1 %s%%\n' "$round" "$server" "$phase" "$mix" \
        "$(tr ' ' '\n' <<< "$line" | grep -E "^($keys)=" | tr '\n' ' ')" ${busy}
}

median_of() { # phase mix server field -> median over rounds
    python3 "$here/report.py" median "$results" "$@"
}

load_line() { echo "load: $(uptime | sed 's/.*load average/load average/')"; }

# --- header ------------------------------------------------------------------------------
echo
echo "== DNS benchmark"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); cairn commit $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- src Cargo.toml || echo ' (src modified)')"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), kernel $(uname -r)"
echo "servers: $(knotd --version | head -n 1); $(nsd -v 2>&1 | head -n 1); cairn (1,000 services x 3 instances)"
echo "clients: $(dnsperf -h 2>&1 | sed -n 's/^Version /dnsperf /p') ($dnsperf_args); udpload (-q $udpload_window)"
echo "run: bash bench/dns/run.sh $run_args"
if [ -n "$unpinned" ]; then
    echo "unpinned: every server and load generator free to use all $cores cores; $rounds round(s) x ${seconds}s; orders rotate per round"
else
    echo "all servers on core 0, load generators on core 1; $rounds round(s) x ${seconds}s; orders rotate per round"
fi

# --- phases ------------------------------------------------------------------------------
for mix in a srv; do
    echo; echo "== max qps, ${mix^^} queries, dnsperf $dnsperf_args"; load_line
    for r in $(seq "$rounds"); do
        for s in $(order "$r"); do run_dnsperf "$mix" "$s" "$r"; done
    done
    if [ -n "$unpinned" ]; then continue; fi
    echo; echo "== max qps, ${mix^^} queries, udpload -q $udpload_window"; load_line
    for r in $(seq "$rounds"); do
        for s in $(order "$r"); do run_udpload udpload "$mix" "$s" "$r" "-q $udpload_window"; done
    done
done

rate1=$(python3 -c "print(int($(median_of dnsperf a knot qps) / 2))")
rates=("$rate1")
if [ -z "$unpinned" ]; then
    rates+=("$(python3 -c "print(int($(median_of udpload a knot qps) / 2))")")
fi
for rate in "${rates[@]}"; do
    echo; echo "== latency, A queries, udpload -Q $rate${unpinned:+ -y 50}"; load_line
    for r in $(seq "$rounds"); do
        for s in $(order "$r"); do run_udpload "fixed-$rate" a "$s" "$r" "-Q $rate${unpinned:+ -y 50}"; done
    done
done

# 10x the catalog: cairn gets the other 9,000 services registered; Knot and NSD serve the
# larger zone from second instances (the first ones are stopped to leave them no CPU).
echo; echo "== 10x the catalog: $big_services services x 3"
python3 "$here/gen.py" load "${http_port[cairn]}" "$big_services"
for pid in "${pids[@]:0:2}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
start_knot knot10 "$work/big"
start_nsd nsd10 "$work/big"
port[knot]=${port[knot10]}
port[nsd]=${port[nsd10]}
check_answers svc-1 svc-5000 "svc-$big_services"
echo; echo "== max qps, A queries, $big_services services, dnsperf $dnsperf_args"; load_line
for r in $(seq "$rounds"); do
    for s in $(order "$r"); do run_dnsperf a10x "$s" "$r"; done
done
load_line

echo
python3 "$here/report.py" table "$results" "${rates[@]}"
