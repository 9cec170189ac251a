#!/usr/bin/env bash
# Where a `Lookup` spends the server's CPU, in ns per request: segd over a
# fresh data directory, DATA_DIR/v1.segpack pushed to it (as compare.sh
# does), a 9 s closed-loop `Lookup` run (2 conn x 16), and `perf record` of
# segd for the middle 5 s. Prints req/s, the server CPU per request and the
# ns per request of the functions that find the user (`InPack::of`), decode
# the request and allocate. Needs perf and root.
#
#   loadtest/lookup_profile.sh SEGD_BINARY DATA_DIR [OUT_DIR]
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 SEGD_BINARY DATA_DIR [OUT_DIR]" >&2
  exit 2
fi
segd=$1 data=$2 out=${3:-$(mktemp -d)}
root="$(cd "$(dirname "$0")/.." && pwd)"
loadtest=${LOADTEST:-$root/target/release/loadtest}
segctl=${SEGCTL:-$root/target/release/segctl}
rm -rf "$out/data"
mkdir -p "$out/data"
"$segd" serve --data-dir "$out/data" --listen 127.0.0.1:7790 --admin-listen 127.0.0.1:7791 \
  --metrics-listen 127.0.0.1:7792 --fsync interval >"$out/segd.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  "$segctl" health --addr http://127.0.0.1:7790 >/dev/null 2>&1 && break
  sleep 0.1
done
"$segctl" push --admin-addr http://127.0.0.1:7791 "$data/v1.segpack" >/dev/null
"$loadtest" run --workload lookup --concurrency 16 --rps 0 --duration 9 --warmup 1 --connections 2 \
  --queries "$data/queries.txt" --segments-file "$data/segments.tsv" \
  --addr http://127.0.0.1:7790 --server-pid "$pid" --json "$out/run.json" >/dev/null 2>&1 &
run=$!
sleep 3
perf record -F 2999 -p "$pid" -o "$out/perf.data" -- sleep 5 >/dev/null 2>&1
wait "$run"
perf report -i "$out/perf.data" --no-children --sort symbol -g none --stdio --percent-limit 0.01 \
  >"$out/report.txt" 2>/dev/null
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
run = json.load(open(f"{out}/run.json"))
report = open(f"{out}/report.txt").read()
total_ns = int(re.search(r"Event count \(approx.\): (\d+)", report).group(1))
requests = run["achieved_rps"] * 5  # the 5 s perf recorded
rows = re.findall(r"^\s*([\d.]+)%\s+\[.\]\s+(.*)$", report, re.M)
def ns(pattern):
    share = sum(float(pct) for pct, symbol in rows if re.search(pattern, symbol))
    return share / 100 * total_ns / requests
print(f"{run['achieved_rps']:.0f} req/s, server cpu {run['server_cpu_us_per_request']:.1f} us/req "
      f"(perf: {total_ns / requests:.0f} ns/req); InPack::of {ns(r'InPack::of'):.0f} ns, "
      f"request decode {ns(r'LookupRequest|decode_varint'):.0f} ns, "
      f"allocator {ns(r'mi_|_mi_|grow_one|realloc'):.0f} ns per request")
PY
