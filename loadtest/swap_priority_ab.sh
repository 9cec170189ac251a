#!/usr/bin/env bash
# A/B of the deprioritised push: "same" = segd and the generator both at nice 10, so the
# push thread (nice 10) has the readers' priority, as before 512b485; "yield" = both at nice 0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
B="${B:-$root/target/release}" W="${W:-/tmp/pack-measure}"  # W: after `pack_measure.sh data`
L=127.0.0.1:7780 A=127.0.0.1:7781 M=127.0.0.1:7782
run_mode() { # MODE ROUND
  local mode=$1 round=$2 n=0
  [ "$mode" = same ] && n=10
  local d=$W/ab-$mode; rm -rf $d $d.log; mkdir -p $d/packs
  nice -n $n $B/segd serve --data-dir $d --listen $L --admin-listen $A --metrics-listen $M --fsync interval >$d.log 2>&1 &
  local pid=$!
  for _ in $(seq 300); do grep -q 'data directory loaded, serving' $d.log && break; sleep 0.1; done
  $B/segctl push --admin-addr http://$A $W/ds1m/v1.segpack >/dev/null
  echo "== $mode round $round: $(uptime | sed 's/.*load/load/')"
  nice -n $n $B/loadtest run --workload lookup --rps 5000 --duration 40 --warmup 3 --connections 2 \
    --concurrency 32 --queries $W/ds1m/queries.txt --segments-file $W/ds1m/segments.tsv \
    --addr http://$L --swap-every 8 --pack $W/ds1m/v2.segpack --pack $W/ds1m/v1.segpack \
    --admin-addr http://$A --server-pid $pid --json $W/ab-$mode-$round.json --chart $W/ab-$mode-$round.svg >$W/ab-$mode-$round.txt 2>&1
  grep -E "during swaps|outside swaps|errors during|took" $W/ab-$mode-$round.txt | head -12
  kill $pid; wait $pid || true
}
for r in 1 2 3; do run_mode same $r; run_mode yield $r; done
