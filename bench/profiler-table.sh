#!/bin/sh
# Replays the profiler preset (tasks that mostly have label sets of their
# own) at several sizes and prints one Markdown table row per size: what
# the scheduling core costs as distinct label sets and bots grow.
#
#   bench/profiler-table.sh GEN_TRACE_PY [ITERATIONS ...]   (default: 100 200)
#
# GEN_TRACE_PY is the trace generator of the shared bench folder. Uses the
# release binary (cargo build --release) and python3; traces go to a
# temporary directory that is removed afterwards. See docs/benchmarks.md.
set -eu
gen=${1:?usage: $0 GEN_TRACE_PY [ITERATIONS ...]}
shift
[ $# -gt 0 ] || set -- 100 200
bin=${QSCHEDULER:-target/release/qscheduler}
seed=${SEED:-2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "| iterations (queued / bots) | replay scheduler time | snapshot decode | median pass | assignments digest |"
echo "|---|---|---|---|---|"
for n in "$@"; do
    python3 "$gen" --preset profiler --seed "$seed" --iterations "$n" --out "$dir/trace.jsonl" 2>/dev/null
    "$bin" replay --trace "$dir/trace.jsonl" --json 2>/dev/null >"$dir/report.json"
    python3 - "$n" "$dir/report.json" <<'PY'
import json, sys
n, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
m = r["phases"]["measure"]
print(f"| {n} ({r['queued'] / 1000:.0f}k / {r['workers'] / 1000:.0f}k) | {r['scheduler_s']:.2f} s "
      f"| {r['snapshot_decode_ms'] / 1000:.2f} s | {m['median_ms']:.2f} ms | `{r['assignments_digest']}` |")
PY
done
