#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 600), with the
# committed seeds and dictionaries, and keeps each run's log in fuzz/logs/
# and any crashing input in fuzz/artifacts/<target>/. One libFuzzer process
# at a time, so one core: the same as -jobs=1, with the output here rather
# than in fuzz-0.log. Exits non-zero if any target found a crash.
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(prpc_request grpc_messages log_record_decode snapshot_decode json_prpc credentials)
fi
mkdir -p logs
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    inputs=("corpus/$t")
    [ -d "seeds/$t" ] && inputs+=("seeds/$t")
    if [ -f "dicts/$t.dict" ]; then
        extra=("-dict=dicts/$t.dict")
    else
        # Structured inputs: let them grow sooner than libFuzzer's default.
        extra=("-len_control=20")
    fi
    echo "== $t: ${secs}s"
    cargo fuzz run --sanitizer none --debug-assertions --codegen-units 16 "$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${extra[@]}" >"logs/$t.log" 2>&1
    status=$?
    grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec" "logs/$t.log"
    if [ $status -ne 0 ]; then
        echo "!! $t exited with $status: see logs/$t.log and artifacts/$t/"
        grep -E "panicked at|^Test unit written" -A2 "logs/$t.log" | head -20
        failed=1
    fi
done
exit $failed
