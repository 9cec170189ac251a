#!/usr/bin/env bash
# Side-by-side rows of BENCHMARKS.md: segd against Redis on one data set, each
# workload run ROUNDS times, alternated, with the server's CPU per request.
#
#   loadtest/compare.sh SEGD_BINARY DATA_DIR REDIS_PORT [ROUNDS] [WORKLOADS...]
#
# DATA_DIR is a `loadtest gen` output holding v1.segpack (segctl build) and
# already loaded into the Redis on 127.0.0.1:REDIS_PORT (`loadtest
# redis-load`). segd is started on ports 7790-7792 with a fresh data directory,
# the pack pushed to it, and stopped at the end. WORKLOADS (default: all) are
# names from the table below. One line per run: label, req/s, user lookups/s,
# p50 / p99, server CPU µs per request, generator CPU cores.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 SEGD_BINARY DATA_DIR REDIS_PORT [ROUNDS] [WORKLOADS...]" >&2
  exit 2
fi
segd=$1 data=$2 redis_port=$3 rounds=${4:-3}
shift $(($# < 4 ? $# : 4))
root="$(cd "$(dirname "$0")/.." && pwd)"
loadtest=${LOADTEST:-$root/target/release/loadtest}
segctl=${SEGCTL:-$root/target/release/segctl}
duration=${DURATION:-10}
work=$(mktemp -d)
trap 'kill "$segd_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/data/packs"
"$segd" serve --data-dir "$work/data" --listen 127.0.0.1:7790 --admin-listen 127.0.0.1:7791 \
  --metrics-listen 127.0.0.1:7792 --fsync interval >"$work/segd.log" 2>&1 &
segd_pid=$!
for _ in $(seq 600); do
  "$segctl" health --addr http://127.0.0.1:7790 >/dev/null 2>&1 && break
  kill -0 "$segd_pid" || { cat "$work/segd.log"; exit 1; }
  sleep 0.1
done
# Pushed, as packs reach a server in production: segd writes the file itself
# (in the 2 MiB blocks it maps with huge pages), where a `cp` would leave the
# page cache in the copy's small folios.
"$segctl" push --admin-addr http://127.0.0.1:7791 "$data/v1.segpack" >/dev/null
redis_pid=$(redis-cli -p "$redis_port" info server | tr -d '\r' | sed -n 's/^process_id://p')

common=(--rps 0 --duration "$duration" --warmup 2 --connections 2 --queries "$data/queries.txt"
  --segments-file "$data/segments.tsv")
segd_args=(--addr http://127.0.0.1:7790 --server-pid "$segd_pid")
redis_args=(--target redis --redis-url "redis://127.0.0.1:$redis_port/" --server-pid "$redis_pid")
declare -A workloads=(
  [health]="--workload health --concurrency 16 ${segd_args[*]}"
  [lookup]="--workload lookup --concurrency 16 ${segd_args[*]}"
  [redis-lookup]="--workload lookup --concurrency 16 ${redis_args[*]}"
  [batch]="--workload batch --batch-size 1000 --concurrency 4 ${segd_args[*]}"
  [redis-batch]="--workload batch --batch-size 1000 --concurrency 4 ${redis_args[*]}"
  [decide]="--workload decide --concurrency 16 ${segd_args[*]}"
  [decide-registered]="--workload decide --concurrency 16 --registered-line-items --admin-addr http://127.0.0.1:7791 ${segd_args[*]}"
  [redis-decide]="--workload decide --concurrency 16 ${redis_args[*]}"
)
order=(health lookup redis-lookup batch redis-batch decide decide-registered redis-decide)
[[ $# -gt 0 ]] && order=("$@")

for round in $(seq "$rounds"); do
  for name in "${order[@]}"; do
    # shellcheck disable=SC2086 # the table holds word lists
    "$loadtest" run --json "$work/$name.json" "${common[@]}" ${workloads[$name]} >/dev/null 2>&1 || {
      echo "$name round $round failed" >&2
      continue
    }
    python3 - "$name" "$round" "$work/$name.json" <<'PY'
import json, sys
name, round_, path = sys.argv[1:]
r = json.load(open(path))
cpu = r.get("server_cpu_us_per_request")
gen = r.get("generator_cpu_cores")
print(f"{name:18} round {round_}: {r['achieved_rps']:8.0f} req/s {r['user_lookups_per_second']:9.0f} lookups/s "
      f"p50 {r['latency']['p50_us']:6} us p99 {r['latency']['p99_us']:6} us "
      f"server cpu {cpu if cpu is None else round(cpu, 1)} us/req gen cpu {gen if gen is None else round(gen, 2)} "
      f"errors {r['errors']}", flush=True)
PY
  done
done
