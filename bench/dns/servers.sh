# Starting the benchmark's servers, shared by bench/dns/run.sh and bench/dns/latency_ab.sh
# (sourced, not run). The caller sets: work (temp dir), unpinned ("" = pinned), on_server
# (a command prefix such as `taskset -c 0`, or empty), sudo_cmd (`sudo` or empty), and the
# arrays pids=() and `declare -A port=()`; each start adds its pid to pids and its DNS port
# to port[NAME].

# A port free for both UDP and TCP on 127.0.0.1.
free_port() {
    python3 -c '
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); port = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port)); print(port); break
    except OSError:
        pass
'
}

# Knot, pinned: one UDP worker, one TCP worker, one background worker (it has one core);
# unpinned: its defaults (a UDP and a TCP worker per core).
# Knot 3.2 has no option for its UDP receive buffer and takes the system default
# (net.core.rmem_default, 208 KiB on Debian: ~300 queued queries), so it drops queries
# whenever its core stalls for a few ms, where cairn (8 MiB) and NSD (2 MiB) queue them.
# The default is raised to NSD's 2 MiB while knotd creates its sockets, then restored
# (KNOT_RMEM=0 to skip; needs root). The caller's cleanup restores it too when
# restore_rmem is set.
knot_rmem=${KNOT_RMEM:-2097152}
old_rmem=$(sysctl -n net.core.rmem_default)
start_knot() { # NAME ZONE_DIR: a Knot serving ZONE_DIR/consul.zone, its port in port[NAME]
    local name=$1 zones=$2 p workers=""
    p=$(free_port)
    mkdir -p "$work/$name"
    if [ -z "$unpinned" ]; then
        workers=$'    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1'
    fi
    cat > "$work/$name/knot.conf" <<EOC
server:
    rundir: "$work/$name"
    listen: 127.0.0.1@$p
$workers
log:
  - target: stderr
    any: warning
database:
    storage: "$work/$name"
zone:
  - domain: consul.
    storage: "$zones"
    file: "consul.zone"
EOC
    if [ "$knot_rmem" != 0 ]; then
        "${sudo_cmd[@]}" sysctl -q -w net.core.rmem_default="$knot_rmem"
        restore_rmem=1
    fi
    "${on_server[@]}" knotd -c "$work/$name/knot.conf" > "$work/$name/out.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do
        dig +noedns +short +tries=1 +time=1 @127.0.0.1 -p "$p" svc-1.service.consul A 2>/dev/null | grep -q . && break
        sleep 0.1
    done
    if [ -n "${restore_rmem:-}" ]; then
        "${sudo_cmd[@]}" sysctl -q -w net.core.rmem_default="$old_rmem"
        restore_rmem=
    fi
    port[$name]=$p
}

# cairn, a one-server agent on free ports (pinned, under taskset -c 0 it sees one core, so it
# runs one UDP socket and one runtime worker; unpinned, one of each per core), with the
# catalog of gen.py (SERVICES, default 1,000) registered over HTTP. Sets port[NAME] and
# http_port[NAME].
declare -A http_port=()
start_cairn() { # NAME BINARY [SERVICES]
    local name=$1 binary=$2 log="$work/$1/out.log"
    mkdir -p "$work/$name"
    "${on_server[@]}" "$binary" agent -server -bootstrap-expect 1 -data-dir "$work/$name/data" \
        -http-port 0 -dns-port 0 -server-port 0 -serf-lan-port 0 -serf-wan-port -1 -node bench -log-level info \
        > "$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do
        grep -q "registered this server in the catalog" "$log" && break
        sleep 0.1
    done
    if ! grep -q "registered this server in the catalog" "$log"; then
        echo "$(basename "$0"): cairn ($binary) did not become ready:" >&2; cat "$log" >&2; exit 1
    fi
    http_port[$name]=$(sed -n 's/.*HTTP API listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
    port[$name]=$(sed -n 's/.*DNS listening (UDP and TCP) addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
    # shellcheck disable=SC2086
    python3 "$here/gen.py" load "${http_port[$name]}" ${3:-}
}
