#!/usr/bin/env bash
# Fuzzes each target in turn for MINUTES minutes (default 5) with libFuzzer through
# cargo-fuzz, on nightly Rust (installed by rustup only if the registry allows; otherwise this
# says so and stops). New inputs that reach new code join fuzz/corpus/<target> (commit them:
# CI replays every file there, `cargo test --test fuzz_corpus`); a crash is left in
# fuzz/artifacts/<target>/ — copy it to fuzz/regressions/<target>/ with the fix.
#   bash fuzz/run.sh 10                  # every target, 10 minutes each
#   TARGETS="dns_packet" bash fuzz/run.sh 30
#   SANITIZER=address bash fuzz/run.sh   # default none: Rust is memory safe, ASan costs ~3x
# Prints, per target, executions, executions per second and corpus size.
set -euo pipefail
minutes=${1:-5}
cd "$(dirname "$0")"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal ||
        { echo "fuzz/run.sh: cargo-fuzz needs nightly Rust, and rustup could not install it here" >&2; exit 2; }
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=${TARGETS:-"dns_packet dns_name config_files http_catalog_register http_txn http_service_register http_check_register rpc_frame gossip_packet snapshot_restore snapshot_records"}
sanitizer=${SANITIZER:-none}
mkdir -p logs
for target in $targets; do
    dict=()
    case $target in
        dns_*) dict=(-dict=dicts/dns.dict) ;;
        config_files | http_*) dict=(-dict=dicts/json.dict) ;;
    esac
    mkdir -p "corpus/$target"
    # One target per build: `cargo fuzz build` takes a single target name.
    cargo +nightly fuzz build -s "$sanitizer" "$target"
    status=0
    cargo +nightly fuzz run -s "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time=$((minutes * 60)) -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 "${dict[@]}" \
        >"logs/$target.log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || echo 0)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || echo 0)
    echo "$target: $execs executions, $rate/s, corpus $(ls "corpus/$target" | wc -l) files, exit $status"
    if [ "$status" -ne 0 ]; then
        tail -40 "logs/$target.log"
        echo "fuzz/run.sh: $target failed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
