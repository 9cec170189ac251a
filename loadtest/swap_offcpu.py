#!/usr/bin/env python3
"""Off-CPU and mmap_lock report of a `swap_profile.sh` recording.

    perf script -i OUT/perf.data --show-switch-events -F comm,tid,time,event,trace,ip,sym \
        | loadtest/swap_offcpu.py

Prints, per thread group (segd's readers `segd-worker`, the push thread
`segd-push`, `segd-retire`, the generator's `tokio-rt-worker`, ...):
  - off-CPU time (switch-out to switch-in) summed per kernel stack, for waits
    of at least MIN_MS, with the longest single wait;
  - the longest single waits of the readers, with when they happened;
  - mmap_lock waits (start_locking .. acquire_returned) and holds
    (acquire_returned .. released) of at least MIN_MS, per stack.
Times are seconds since the first event; the pushes show as the segd-push
thread's first and last event.
"""
import collections
import re
import sys

MIN_MS = 5.0
HEADER = re.compile(r"^\s*(.+?)\s+(\d+)\s+(\d+\.\d+):\s+(.*)$")
SKIP = ("__schedule", "schedule", "__traceiter", "__mmap_lock_do_trace", "perf_")


def group(comm):
    for prefix in ("segd-worker", "segd-admin", "segd-push", "segd-upload", "segd-retire", "tokio-rt-worker", "segd-fleet"):
        if comm.startswith(prefix):
            return prefix
    return comm


def stack_key(frames, depth=6):
    kept = [f for f in frames if not f.startswith(SKIP)]
    kernel = [f for f in kept if not f.startswith("u:")][:depth]
    user = [f[2:] for f in kept if f.startswith("u:")][:2]
    return " <- ".join(kernel) + ("  | " + " <- ".join(user) if user else "")


def add_span(timeline, column, start, end):
    """Adds the milliseconds of start..end to the 1-second bins they cover."""
    while start < end:
        second = int(start)
        upto = min(end, second + 1.0)
        timeline[second][column] += (upto - start) * 1e3
        start = upto


def events(lines):
    block = None
    for line in lines:
        match = HEADER.match(line)
        if match:
            if block:
                yield block
            comm, tid, time, rest = match.groups()
            block = {"comm": comm, "tid": int(tid), "t": float(time), "rest": rest, "frames": []}
        elif block is not None and line.strip():
            parts = line.split()
            if len(parts) >= 2:
                address, symbol = parts[0], parts[1]
                kernel = address.startswith("ffffffff")
                block["frames"].append(symbol if kernel else "u:" + symbol)
    if block:
        yield block


def main():
    t0 = None
    out = {}  # tid -> (t, state, key, comm)
    off = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0, 0.0]))
    totals = collections.defaultdict(float)
    longest = []
    lock_start, lock_held = {}, {}
    lock_waits = collections.defaultdict(lambda: [0.0, 0, 0.0])
    lock_holds = collections.defaultdict(lambda: [0.0, 0, 0.0])
    long_lock = []
    push_span = {}
    last_in = {}  # tid -> switch-in time
    timeline = collections.defaultdict(lambda: collections.defaultdict(float))
    for event in events(sys.stdin):
        t = event["t"]
        t0 = t if t0 is None else t0
        t -= t0
        comm, tid, rest = event["comm"], event["tid"], event["rest"]
        g = group(comm)
        if g in ("segd-push", "segd-upload", "segd-retire", "segd-fleet"):
            span = push_span.setdefault((g, tid), [t, t])
            span[1] = t
        if rest.startswith("sched:sched_switch"):
            state = re.search(r"prev_state=(\S+)", rest).group(1)
            if tid in last_in:
                add_span(timeline, g + " cpu", last_in.pop(tid), t)
            out[tid] = (t, state, stack_key(event["frames"]), comm)
        elif rest.startswith("PERF_RECORD_SWITCH IN") and tid in out:
            t_out, state, key, comm_out = out.pop(tid)
            ms = (t - t_out) * 1e3
            last_in[tid] = t
            kind = "runq" if state.startswith("R") else state
            add_span(timeline, group(comm_out) + " " + kind, t_out, t)
            if state != "R" and state != "R+":
                totals[(group(comm_out), state)] += ms
            if ms >= MIN_MS and state not in ("R", "R+"):
                cell = off[group(comm_out)][(state, key)]
                cell[0] += ms
                cell[1] += 1
                cell[2] = max(cell[2], ms)
                if group(comm_out) == "segd-worker":
                    longest.append((ms, t_out, tid, state, key))
        elif "mmap_lock_start_locking" in rest:
            lock_start[tid] = (t, "write=true" in rest, stack_key(event["frames"]))
        elif "mmap_lock_acquire_returned" in rest and tid in lock_start:
            t_start, write, key = lock_start.pop(tid)
            ms = (t - t_start) * 1e3
            lock_held[tid] = (t, write, key)
            if ms >= MIN_MS:
                cell = lock_waits[(g, "write" if write else "read", key)]
                cell[0] += ms
                cell[1] += 1
                cell[2] = max(cell[2], ms)
                long_lock.append((ms, t_start, comm, "wait " + ("write" if write else "read"), key))
        elif "mmap_lock_released" in rest and tid in lock_held:
            t_got, write, key = lock_held.pop(tid)
            ms = (t - t_got) * 1e3
            if ms >= MIN_MS:
                cell = lock_holds[(g, "write" if write else "read", key)]
                cell[0] += ms
                cell[1] += 1
                cell[2] = max(cell[2], ms)
                long_lock.append((ms, t_got, comm, "hold " + ("write" if write else "read"), key))

    columns = ["segd-worker cpu", "segd-worker runq", "segd-worker D", "segd-push cpu",
               "segd-upload cpu", "segd-retire cpu", "tokio-rt-worker cpu", "tokio-rt-worker runq"]
    print("== per second: ms of " + ", ".join(columns))
    for second in sorted(timeline):
        row = timeline[second]
        print(f"  {second:4d} " + " ".join(f"{row[c]:7.0f}" for c in columns))
    print("== background threads (first .. last event, s)")
    for (g, tid), (a, b) in sorted(push_span.items(), key=lambda item: item[1][0]):
        print(f"  {g} {tid}: {a:.2f} .. {b:.2f}")
    print("== off-CPU ms (not runnable) per thread group and state, all waits")
    for (g, state), ms in sorted(totals.items(), key=lambda item: -item[1])[:20]:
        print(f"  {g:18} {state:3} {ms:10.1f}")
    for g, cells in sorted(off.items()):
        print(f"== {g}: waits >= {MIN_MS} ms per stack (total ms, count, longest ms)")
        for (state, key), (ms, n, top) in sorted(cells.items(), key=lambda item: -item[1][0])[:8]:
            print(f"  {ms:9.1f} {n:5} {top:8.1f} {state:2} {key}")
    print("== the 15 longest reader (segd-worker) waits: ms, at s, tid, state, stack")
    for ms, at, tid, state, key in sorted(longest, reverse=True)[:15]:
        print(f"  {ms:8.1f} {at:7.2f} {tid} {state} {key}")
    for title, cells in (("waits", lock_waits), ("holds", lock_holds)):
        print(f"== mmap_lock {title} >= {MIN_MS} ms (total ms, count, longest ms)")
        for (g, mode, key), (ms, n, top) in sorted(cells.items(), key=lambda item: -item[1][0])[:12]:
            print(f"  {ms:9.1f} {n:5} {top:8.1f} {g} {mode} {key}")
    print("== the 15 longest mmap_lock waits/holds: ms, at s, thread, what, stack")
    for ms, at, comm, what, key in sorted(long_lock, reverse=True)[:15]:
        print(f"  {ms:8.1f} {at:7.2f} {comm} {what} {key}")


if __name__ == "__main__":
    main()
