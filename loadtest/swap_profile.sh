#!/usr/bin/env bash
# What do readers wait on during a swap? One swap-under-load run on the 10M set
# (as `pack_measure.sh swap10m`, 2 pushes in 50 s) with, alongside:
#   - perf: every context switch of segd and of the load generator, with its
#     kernel stack (sched:sched_switch -g, --switch-events for the switch-in),
#     and every mmap_lock acquisition of either (mmap_lock:* tracepoints);
#   - vmstat 1 and /proc/PID/status of segd once a second.
# Then loadtest/swap_offcpu.py sums the off-CPU time of the reader threads
# (segd-worker) per kernel stack, inside and outside the pushes.
#
# SCOPE=cores: instead, every context switch on both cores, of every thread of
# every process (`perf record -a -g -e sched:sched_switch`), then
# loadtest/swap_stalls.py: each cluster of the run's slowest requests, the push
# phase it fell in (from segd's log) and what each core ran meanwhile.
#
#   [SCOPE=cores] loadtest/swap_profile.sh OUT_DIR   (needs `pack_measure.sh data big`, root for perf)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
B="${B:-$root/target/release}" W="${W:-/tmp/pack-measure}" O="${1:?OUT_DIR}"
L=127.0.0.1:7780 A=127.0.0.1:7781 M=127.0.0.1:7782
mkdir -p "$O"; d=$W/profile; rm -rf $d $d.log; mkdir -p $d/packs
$B/segd serve --data-dir $d --listen $L --admin-listen $A --metrics-listen $M --fsync interval >$d.log 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q 'data directory loaded, serving' $d.log && break; sleep 0.1; done
# Served, previous and retired versions first, as in `pack_measure.sh swap10m`.
for v in big big-b2 big; do
  $B/segctl push --allow-older-version --admin-addr http://$A $W/ds10m/$v.segpack >/dev/null
done
uptime | tee "$O/uptime"
$B/loadtest run --workload lookup --rps 5000 --duration 50 --warmup 3 --connections 2 \
  --concurrency 32 --queries $W/ds10m/queries.txt --segments-file $W/ds10m/segments.tsv \
  --addr http://$L --swap-every 20 --pack $W/ds10m/big-b2.segpack --pack $W/ds10m/big.segpack \
  --admin-addr http://$A --server-pid $pid --json "$O/run.json" >"$O/run.txt" 2>&1 &
gen=$!
sleep 12 # the generator reads both packs (2.4 GB) before it starts; the first push is at ~20 s
date +%s.%N >"$O/perf-start"
if [ "${SCOPE:-}" = cores ]; then
  # perf's clock is CLOCK_MONOTONIC; the JSON and segd's log are on the wall clock.
  python3 -c "import time; print(time.time() - time.clock_gettime(time.CLOCK_MONOTONIC))" >"$O/clock-offset"
  timeout 50 perf record -q -k mono -o "$O/perf.data" -a -g -e sched:sched_switch 2>"$O/perf.err" &
else
  timeout 50 perf record -q -o "$O/perf.data" -g --switch-events -p "$pid,$gen" \
    -e sched:sched_switch -e mmap_lock:mmap_lock_start_locking -e mmap_lock:mmap_lock_acquire_returned -e mmap_lock:mmap_lock_released \
    2>"$O/perf.err" &
fi
perf_pid=$!
timeout 50 vmstat -t 1 >"$O/vmstat.txt" &
for _ in $(seq 50); do
  kill -0 $pid 2>/dev/null || break
  { date +%s.%N; grep -E 'VmRSS|RssFile|RssAnon|voluntary' /proc/$pid/status; } >>"$O/status.txt" || true
  sleep 1
done
wait $gen || true
wait $perf_pid || true
kill $pid; wait $pid || true
grep -E "during swaps|outside swaps|errors during|^swap:" "$O/run.txt" || true
cp $d.log "$O/segd.log"
rm -rf $d $d.log
if [ "${SCOPE:-}" = cores ]; then python3 "$root/loadtest/swap_stalls.py" "$O"; fi
