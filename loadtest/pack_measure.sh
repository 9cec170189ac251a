#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's "Pack format 2: memory, restart, swap" rows.
#
#   loadtest/pack_measure.sh STEP
#
# STEP is one of (run them in this order; each prints what it measured):
#   data      1M-user data set (loadtest gen, seed 42) and its packs: a format-2
#             pack (two versions, for swaps) and a format-1 pack, under $W/ds1m
#   memory    segd over the 1M format-2 pack: VmRSS/RssAnon/RssFile empty, after
#             the load, after a lookup sweep over every user; the same for the
#             format-1 pack (MEMORY_PACKS="v1 f1" names the packs of $W/ds1m
#             measured; add others built there, e.g. by an older segctl)
#   redis     Redis used_memory holding the same memberships (loadtest redis-load, ~3 min)
#   swap      3 swap-under-load runs (Lookup open loop 5k req/s, a push every 8 s)
#   big       10M-user data set, 200M memberships, as format-2 packs b1, b2 ($W/ds10m)
#   swap10m   3 swap-under-load runs on it (5k req/s, 60 s, a push every 20 s)
#   push      VmHWM rise while pushing the big pack into a serving segd
#   restart   restart to SERVING with the big pack: 3 warm, 3 cold (drop_caches)
#   clean     deletes $W
#
# Needs release binaries (`cargo build --release --bins -p segd -p loadtest`) and
# redis-server. Work files go to $W (default /tmp/pack-measure): ~0.5 GB for the
# 1M set, ~8.5 GB at the peak of `big` (the TSV is deleted once the pack is built).
# Ports 7780-7782 (segd) and 6391 (Redis), loopback only; LISTEN, ADMIN, METRICS
# (host:port) and REDIS_PORT override them. RUNS (default 3): runs of swap, swap10m;
# SWAP_NICE (default 0): the nice value of the generator's push thread (--swap-nice).
# SWAP_RAW=1 (swap10m): the control run. Pushes go as bare bytes over TCP to a
# `loadtest sink` at nice 10 on SINK (default 127.0.0.1:7783), which writes them
# over one file and syncs it, and not to segd: the readers under a push's bare
# receive-and-write, without anything segd's push path adds. SINK_DISCARD=1 as
# well: the sink writes nothing (the receive alone).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
B="${B:-$root/target/release}"
W="${W:-/tmp/pack-measure}"
LISTEN="${LISTEN:-127.0.0.1:7780}" ADMIN="${ADMIN:-127.0.0.1:7781}" METRICS="${METRICS:-127.0.0.1:7782}"
REDIS_PORT="${REDIS_PORT:-6391}"

status_line() { # PID LABEL: the memory fields of /proc/PID/status, in KiB
  awk -v label="$2" '/^(VmRSS|VmHWM|RssAnon|RssFile):/ {f[$1]=$2}
    END {printf "%s: VmRSS %d KiB, RssAnon %d KiB, RssFile %d KiB, VmHWM %d KiB\n",
      label, f["VmRSS:"], f["RssAnon:"], f["RssFile:"], f["VmHWM:"]}' "/proc/$1/status"
}

start_segd() { # DATA_DIR: starts segd, waits (bounded) for SERVING; sets SEGD_PID
  "$B/segd" serve --data-dir "$1" --listen $LISTEN --admin-listen $ADMIN \
    --metrics-listen $METRICS --fsync interval >"$1.log" 2>&1 &
  SEGD_PID=$!
  for _ in $(seq 600); do
    grep -q 'data directory loaded, serving' "$1.log" && return 0
    kill -0 $SEGD_PID 2>/dev/null || { cat "$1.log"; return 1; }
    sleep 0.1
  done
  echo "segd did not reach SERVING in 60 s" >&2; return 1
}

stop_segd() { kill "$SEGD_PID"; wait "$SEGD_PID" || true; }

fresh_dir() { rm -rf "$1" "$1.log"; mkdir -p "$1/packs"; }

sweep() { # a BatchLookup sweep over random users of every-user list: touches every page of the index
  "$B/loadtest" run --workload batch --batch-size 1000 --rps 0 --duration 8 --warmup 0 \
    --connections 2 --concurrency 4 --queries "$W/ds1m/all-users.txt" \
    --segments-file "$W/ds1m/segments.tsv" --addr "http://$LISTEN" 2>/dev/null | grep -E "achieved|^errors" || true
}

step_data() {
  mkdir -p "$W"
  "$B/loadtest" gen --users 1000000 --segments 1000 --avg-segments-per-user 20 --out "$W/ds1m" --seed 42
  local at
  at=$(python3 -c "import json; print(json.load(open('$W/ds1m/dataset.json'))['built_at_unix_seconds'])")
  for v in v1 v2; do
    "$B/segctl" build --pack synth --version $v --built-at "$at" --input "$W/ds1m/memberships.tsv" \
      --segments "$W/ds1m/segments.tsv" --output "$W/ds1m/$v.segpack"
  done
  "$B/segctl" build --pack synth --version v1 --format 1 --built-at "$at" \
    --input "$W/ds1m/memberships.tsv" --segments "$W/ds1m/segments.tsv" --output "$W/ds1m/f1.segpack"
  seq 0 999999 | sed 's/^/u:/' >"$W/ds1m/all-users.txt"
  wc -l "$W/ds1m/memberships.tsv"
  ls -l "$W/ds1m"/*.segpack
}

step_memory() {
  local d="$W/mem"
  fresh_dir "$d"; start_segd "$d"; status_line $SEGD_PID "empty data dir"; stop_segd
  for f in ${MEMORY_PACKS:-v1 f1}; do
    fresh_dir "$d"; cp "$W/ds1m/$f.segpack" "$d/packs/synth.segpack"
    echo "== $f.segpack, $(stat -c %s "$d/packs/synth.segpack") bytes"
    "$B/segctl" inspect "$W/ds1m/$f.segpack" | grep -E '^(format|entries|memberships):' || true
    start_segd "$d"; status_line $SEGD_PID "after load"
    sweep; status_line $SEGD_PID "after sweep"
    stop_segd
  done
}

step_redis() {
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$W/redis.log" 2>&1 &
  local redis=$!
  for _ in $(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
  "$B/loadtest" redis-load --redis-url "redis://127.0.0.1:$REDIS_PORT/" --data "$W/ds1m"
  redis-cli -p $REDIS_PORT info memory | grep -E '^used_memory:|^used_memory_rss:'
  redis-cli -p $REDIS_PORT dbsize
  redis-cli -p $REDIS_PORT shutdown nosave || true
  wait $redis || true
}

rotation() { # RUN UNSERVED SERVED: sets PACKS, the two --pack files of run RUN, the unserved one first
  # Each run pushes an odd number of times (5 in swap, 3 in swap10m), so the version
  # served flips from run to run; without the flip every rerun began with a no-op push.
  if [ $(($1 % 2)) = 1 ]; then PACKS=("$2" "$3"); else PACKS=("$3" "$2"); fi
}

step_swap() {
  local d="$W/swap"
  fresh_dir "$d"; start_segd "$d"
  for v in v1 v2 v1; do # served, previous and retired versions: see step_swap10m
    "$B/segctl" push --allow-older-version --admin-addr "http://$ADMIN" "$W/ds1m/$v.segpack"
  done
  for run in $(seq "${RUNS:-3}"); do
    uptime
    rotation "$run" "$W/ds1m/v2.segpack" "$W/ds1m/v1.segpack"
    "$B/loadtest" run --workload lookup --rps 5000 --duration 40 --warmup 3 --connections 2 \
      --concurrency 32 --queries "$W/ds1m/queries.txt" --segments-file "$W/ds1m/segments.tsv" \
      --addr "http://$LISTEN" --swap-every 8 --pack "${PACKS[0]}" --pack "${PACKS[1]}" \
      --admin-addr "http://$ADMIN" --swap-nice "${SWAP_NICE:-0}" --server-pid $SEGD_PID --json "$W/swap-$run.json" \
      --chart "$W/swap-$run.svg"
  done
  stop_segd
}

step_swap10m() { # as step_swap on the 10M set: a 1.2 GB push every 20 s
  local d="$W/swap10m"
  fresh_dir "$d"; start_segd "$d"
  # Three pushes first, so the data directory holds a served, a previous and
  # a retired version, as on a server that has taken pushes before (the first
  # pushes into a fresh directory have no old version to free memory for them).
  for v in big big-b2 big; do
    "$B/segctl" push --allow-older-version --admin-addr "http://$ADMIN" "$W/ds10m/$v.segpack"
  done
  local raw=() sink_pid=""
  if [ "${SWAP_RAW:-0}" = 1 ]; then
    local sink="${SINK:-127.0.0.1:7783}"
    local written=(--file "$d/raw-upload")
    [ "${SINK_DISCARD:-0}" = 1 ] && written=(--discard)
    cp "$W/ds10m/big.segpack" "$d/raw-upload" # a file to write over, as segd's retired version
    "$B/loadtest" sink --listen "$sink" "${written[@]}" --nice 10 &
    sink_pid=$!
    raw=(--swap-raw-tcp "$sink")
  fi
  for run in $(seq "${RUNS:-3}"); do
    uptime
    rotation "$run" "$W/ds10m/big-b2.segpack" "$W/ds10m/big.segpack"
    "$B/loadtest" run --workload lookup --rps 5000 --duration 60 --warmup 3 --connections 2 \
      --concurrency 32 --queries "$W/ds10m/queries.txt" --segments-file "$W/ds10m/segments.tsv" \
      --addr "http://$LISTEN" --swap-every 20 "${raw[@]}" \
      --pack "${PACKS[0]}" --pack "${PACKS[1]}" --admin-addr "http://$ADMIN" --swap-nice "${SWAP_NICE:-0}" --server-pid $SEGD_PID \
      --json "$W/swap10m-$run.json" --chart "$W/swap10m-$run.svg"
  done
  [ -z "$sink_pid" ] || { kill "$sink_pid"; wait "$sink_pid" || true; }
  stop_segd
  rm -rf "$d"
}

step_big() {
  "$B/loadtest" gen --users 10000000 --segments 1000 --avg-segments-per-user 20 --out "$W/ds10m" --seed 42
  local at
  at=$(python3 -c "import json; print(json.load(open('$W/ds10m/dataset.json'))['built_at_unix_seconds'])")
  for v in b1 b2; do # two versions, for swap10m
    /usr/bin/time -v "$B/segctl" build --pack big --version $v --built-at "$at" \
      --input "$W/ds10m/memberships.tsv" --segments "$W/ds10m/segments.tsv" \
      --output "$W/ds10m/big-$v.segpack" 2>&1 | grep -E 'Elapsed|Maximum resident' || true
  done
  mv "$W/ds10m/big-b1.segpack" "$W/ds10m/big.segpack"
  rm -f "$W/ds10m/memberships.tsv"
  "$B/segctl" inspect "$W/ds10m/big.segpack" | head -20
  ls -l "$W/ds10m/big.segpack"
}

step_push() {
  local d="$W/push"
  fresh_dir "$d"; start_segd "$d"
  status_line $SEGD_PID "before push"
  echo 5 >"/proc/$SEGD_PID/clear_refs" # resets VmHWM to the current RSS
  status_line $SEGD_PID "VmHWM reset"
  /usr/bin/time -f 'push wall %e s' "$B/segctl" push --admin-addr "http://$ADMIN" "$W/ds10m/big.segpack"
  status_line $SEGD_PID "after push"
  echo "pushed file: $(stat -c %s "$W/ds10m/big.segpack") bytes"
  stop_segd
  rm -rf "$d"
}

step_restart() {
  local d="$W/restart"
  fresh_dir "$d"; ln "$W/ds10m/big.segpack" "$d/packs/big.segpack"
  for mode in warm warm warm cold cold cold; do
    [[ $mode == cold ]] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
    [[ $mode == warm ]] && cat "$d/packs/big.segpack" >/dev/null
    python3 - "$B/segd" "$d" "$mode" "$LISTEN" "$ADMIN" "$METRICS" <<'PY'
import subprocess, sys, time
segd, data_dir, mode, listen, admin, metrics = sys.argv[1:7]
start = time.monotonic()
proc = subprocess.Popen([segd, "serve", "--data-dir", data_dir, "--listen", listen,
                         "--admin-listen", admin, "--metrics-listen", metrics],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in proc.stdout:
    if "data directory loaded, serving" in line:
        print(f"{mode}: process start to SERVING {1000 * (time.monotonic() - start):.0f} ms")
        break
    if time.monotonic() - start > 120:
        print("no SERVING in 120 s"); break
with open(f"/proc/{proc.pid}/status") as status:
    print("  " + ", ".join(l.strip() for l in status if l.startswith(("VmRSS", "RssAnon", "RssFile"))))
proc.terminate(); proc.wait(timeout=60)
PY
  done
  rm -rf "$d" "$d.log"
}

case "${1:-}" in
  data) step_data ;; memory) step_memory ;; redis) step_redis ;; swap) step_swap ;; big) step_big ;;
  swap10m) step_swap10m ;; push) step_push ;; restart) step_restart ;; clean) rm -rf "$W" ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
