#!/usr/bin/env bash
# Builds and runs cairn's HTTP benchmark (see bench/README.md). Arguments go to the bench:
#   bash bench/run.sh                      # every section, 5 s per write cell
#   bash bench/run.sh --only writes --seconds 3
#   bash bench/run.sh --only cluster --unpinned   # every process free to use every core
# The bench runs on core 1 and starts every server (cairn, etcd) on core 0, unless --unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null; then
    # Debian's etcd 3.4; the bench starts its own single-member instance on a temp dir.
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get install -y etcd-server etcd-client
fi

if [ "$(nproc)" -lt 2 ]; then
    echo "run.sh: needs 2 cores (servers on core 0, the bench on core 1); this machine has $(nproc)" >&2
    exit 1
fi

# Builds the release cairn binary too: the bench finds it through CARGO_BIN_EXE_cairn.
cargo build --release --bench http_bench
bench_bin=$(cargo bench --bench http_bench --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
if [ -z "$bench_bin" ] || [ ! -x "$bench_bin" ]; then
    echo "run.sh: cannot find the http_bench executable" >&2
    exit 1
fi

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); cairn commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' (src modified)'); $(etcd --version | head -n 1)"
echo "run: bash bench/run.sh $*"
case " $* " in
    *" --unpinned "*) exec "$bench_bin" "$@" ;;
    *) exec taskset -c 1 "$bench_bin" "$@" ;;
esac
