#!/usr/bin/env bash
# Before/after swap runs, alternated so both binaries see the same noise:
#
#   loadtest/swap_ab.sh swap|swap10m BEFORE_DIR AFTER_DIR [ROUNDS]
#
# Each round runs `pack_measure.sh STEP` once with the binaries of BEFORE_DIR,
# then once with AFTER_DIR (each dir holds segd, segctl, loadtest), and keeps
# $W/ab-STEP-{before,after}-ROUND.{txt,json,svg} (AFTER_NAME renames "after";
# AFTER_ENV, e.g. SWAP_RAW=1, is set for the after side's runs only),
# printing the load average and the swap rows of each run. Needs `pack_measure.sh data` (and `big` for swap10m).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
W="${W:-/tmp/pack-measure}"
step=$1 before=$2 after=$3 rounds=${4:-3}
for round in $(seq "$rounds"); do
  for side in before "${AFTER_NAME:-after}"; do
    dir=$before; [ "$side" = before ] || dir=$after
    out="$W/ab-$step-$side-$round"
    echo "== $step $side round $round: $(uptime | sed 's/.*load/load/')"
    side_env=(); [ "$side" = before ] || read -ra side_env <<<"${AFTER_ENV:-}"
    env "${side_env[@]}" RUNS=1 B="$dir" W="$W" "$root/loadtest/pack_measure.sh" "$step" >"$out.txt" 2>&1
    name=$step; [ "$step" = swap10m ] || name=swap
    mv "$W/$name-1.json" "$out.json"; mv "$W/$name-1.svg" "$out.svg"
    grep -E "during swaps|outside swaps|errors during|^swap at|server CPU" "$out.txt" || true
  done
done
