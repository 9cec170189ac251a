#!/usr/bin/env python3
"""The stalls behind a swap run's tail (`SCOPE=cores loadtest/swap_profile.sh`).

  loadtest/swap_stalls.py OUT_DIR [CLUSTERS]

Reads OUT_DIR/run.json (loadtest --json), segd.log, clock-offset and perf.data.
Groups the run's slowest requests into clusters (requests that started within
20 ms of each other waited on the same stall) and, for the CLUSTERS (default 8)
worst, prints the push phase it fell in — receive, verify, commit, the second
after the swap, or outside — and, per core, how long each thread ran in the
stall, with the kernel stack of any that ran or waited over 1.5 ms. Where a
switch went unrecorded (the next switch on a core names another task than the
one last switched in), the time in between is "(unrecorded)", not idle.
"""
import collections
import datetime
import json
import re
import subprocess
import sys

CLUSTER_SECONDS = 0.020
LONG_RUN_SECONDS = 0.0015


def log_time(line):
    stamp = line.split()[0].rstrip("Z")
    moment = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def pushes(log_lines):
    """(start, received, verified, swapped) wall-clock times of each push."""
    found, receiving = [], None
    for line in log_lines:
        if "push received" in line:
            end = log_time(line)
            took = int(re.search(r"receive_ms=(\d+)", line).group(1)) / 1e3
            receiving = (end - took, end)
        elif "pack pushed" in line and receiving:
            swapped = log_time(line)
            commit = int(re.search(r"commit_ms=(\d+)", line).group(1)) / 1e3
            found.append((receiving[0], receiving[1], swapped - commit, swapped))
            receiving = None
    return found


def phase(moment, push_times):
    for start, received, verified, swapped in push_times:
        if start <= moment < received:
            return "receive (%.0f %% in)" % (100 * (moment - start) / (received - start))
        if received <= moment < verified:
            return "verify"
        if verified <= moment < swapped:
            return "commit"
        if swapped <= moment < swapped + 1.0:
            return "after the swap (+%.2f s)" % (moment - swapped)
    return "outside pushes"


def clusters(slowest):
    found = []
    for request in slowest:
        start = request["started_at_seconds"]
        for cluster in found:
            if abs(cluster["start"] - start) < CLUSTER_SECONDS:
                cluster["requests"] += 1
                break
        else:
            found.append({"start": start, "latency_us": request["latency_us"], "requests": 1})
    return found


SWITCH = re.compile(
    r"\s*\S+\s+\[(\d+)\]\s+([\d.]+):\s+prev_comm=(.*?) prev_pid=(\d+).*"
    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)


def switches(perf_data, start, end):
    script = subprocess.run(
        ["perf", "script", "-i", perf_data, "--time", "%.6f,%.6f" % (start, end),
         "-F", "cpu,time,tid,trace,ip,sym"],
        capture_output=True, text=True, check=False,
    ).stdout
    for block in script.split("\n\n"):
        lines = block.strip().split("\n")
        match = SWITCH.match(lines[0]) if lines and lines[0].strip() else None
        if match:
            stack = [line.split()[-1] for line in lines[1:]]
            yield (float(match.group(2)), int(match.group(1)), match.group(3),
                   int(match.group(4)), match.group(5), match.group(6), int(match.group(7)), stack)


def report_cluster(out_dir, cluster, run_start, offset, push_times):
    start = run_start + cluster["start"]
    end = start + cluster["latency_us"] / 1e6
    print("=== %d requests from %.3f s waited up to %.1f ms: %s" % (
        cluster["requests"], cluster["start"], cluster["latency_us"] / 1e3, phase(start, push_times)))
    # Look back 20 ms so that what each core was running when the stall began is known.
    on_cpu, ran = {}, collections.Counter()
    for moment, cpu, prev, prev_pid, state, nxt, next_pid, stack in switches(
            out_dir + "/perf.data", start - offset - 0.020, end - offset):
        moment += offset
        if cpu in on_cpu:
            since, comm, pid = on_cpu[cpu]
            if pid != prev_pid:
                # A switch on this core went unrecorded (this guest's perf
                # drops some switches out of the idle task): who ran since the
                # last event is not known, so it is not counted as idle.
                comm, pid = "(unrecorded)", -1
            inside = min(moment, end) - max(since, start)
            if inside > 0:
                ran[(cpu, comm, pid)] += inside
            if inside > LONG_RUN_SECONDS:
                print("  cpu%d %s/%d ran %.1f ms of it, then %s in %s" % (
                    cpu, comm, pid, inside * 1e3, state, " < ".join(stack[:6])))
        on_cpu[cpu] = (moment, nxt, next_pid)
    for (cpu, comm, pid), seconds in sorted(ran.items(), key=lambda item: -item[1])[:8]:
        print("    cpu%d %-18s %7d %6.2f ms" % (cpu, comm, pid, seconds * 1e3))


def main():
    out_dir = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    run = json.load(open(out_dir + "/run.json"))
    offset = float(open(out_dir + "/clock-offset").read())
    push_times = pushes(open(out_dir + "/segd.log").read().splitlines())
    split = run.get("swap_split") or {}
    if split:
        print("p99.9 during pushes %d us, outside %d us" % (
            split["during_swaps"]["p999_us"], split["outside_swaps"]["p999_us"]))
    for cluster in clusters(run["slowest_requests"])[:count]:
        report_cluster(out_dir, cluster, run["run_started_at_unix_seconds"], offset, push_times)


if __name__ == "__main__":
    main()
