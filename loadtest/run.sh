#!/usr/bin/env bash
# The helper BENCHMARKS.md's loadtest rows use.
#
#   loadtest/run.sh LABEL ARGS...
#
# runs `target/release/loadtest run --json LABEL.json ARGS...` (or $LOADTEST; build it first:
# `cargo build --release -p loadtest`), keeps the JSON report as LABEL.json in
# the current directory, and prints one summary line from it: achieved rate,
# user lookups/s, errors, latency p50/p99/p99.9/max and the generator's CPU.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 LABEL [loadtest run ARGS...]" >&2
  exit 2
fi
label=$1
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
"${LOADTEST:-$root/target/release/loadtest}" run --json "$label.json" "$@"
python3 - "$label" <<'PY'
import json, sys
label = sys.argv[1]
with open(f"{label}.json") as file:
    report = json.load(file)
latency = report["latency"]
cores = report.get("generator_cpu_cores")
print(
    f"{label}: {report['achieved_rps']:.0f} req/s, "
    f"{report['user_lookups_per_second']:.0f} user lookups/s, "
    f"{report['errors']} errors, "
    f"p50 {latency['p50_us']} us p99 {latency['p99_us']} us "
    f"p99.9 {latency['p999_us']} us max {latency['max_us']} us, "
    f"generator cpu {cores if cores is None else round(cores, 2)} cores"
)
PY
