#!/usr/bin/env bash
# Which stalls set the readers' tail during a 10M swap run, and whose were they?
# One swap-under-load run as `pack_measure.sh swap10m` (2 pushes in 47 s) with
# `perf record -a -g -e sched:sched_switch` on both cores alongside, then
# loadtest/swap_stalls.py: for each cluster of the run's slowest requests
# (`slowest_requests` in the JSON), the push phase it fell in (from segd's log)
# and what each core ran meanwhile.
#
#   loadtest/swap_stalls.sh OUT_DIR   (needs `pack_measure.sh data big`, root for perf)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
B="${B:-$root/target/release}" W="${W:-/tmp/pack-measure}" O="${1:?OUT_DIR}"
L=127.0.0.1:7780 A=127.0.0.1:7781 M=127.0.0.1:7782
mkdir -p "$O"; d=$W/stalls; rm -rf $d $d.log; mkdir -p $d/packs
$B/segd serve --data-dir $d --listen $L --admin-listen $A --metrics-listen $M --fsync interval >$d.log 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q 'data directory loaded, serving' $d.log && break; sleep 0.1; done
# Served, previous and retired versions first, as in `pack_measure.sh swap10m`.
for v in big big-b2 big; do
  $B/segctl push --allow-older-version --admin-addr http://$A $W/ds10m/$v.segpack >/dev/null
done
uptime | tee "$O/uptime"
$B/loadtest run --workload lookup --rps 5000 --duration 44 --warmup 3 --connections 2 \
  --concurrency 32 --queries $W/ds10m/queries.txt --segments-file $W/ds10m/segments.tsv \
  --addr http://$L --swap-every 20 --pack $W/ds10m/big-b2.segpack --pack $W/ds10m/big.segpack \
  --admin-addr http://$A --server-pid $pid --json "$O/run.json" >"$O/run.txt" 2>&1 &
gen=$!
sleep 12 # the generator reads both packs (2 GB) before it starts; the first push is at ~20 s
# perf's clock is CLOCK_MONOTONIC; the JSON and segd's log are on the wall clock.
python3 -c "import time; print(time.time() - time.clock_gettime(time.CLOCK_MONOTONIC))" >"$O/clock-offset"
timeout 40 perf record -q -k mono -o "$O/perf.data" -a -g -e sched:sched_switch 2>"$O/perf.err" &
perf_pid=$!
wait $gen || true
wait $perf_pid || true
kill $pid; wait $pid || true
cp $d.log "$O/segd.log"
grep -E "during swaps|outside swaps|errors during|^swap:" "$O/run.txt" || true
rm -rf $d $d.log
python3 "$root/loadtest/swap_stalls.py" "$O"
