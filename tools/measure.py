#!/usr/bin/env python3
"""Runs commands alternately, several times each, and prints median wall time and peak RSS.

usage: measure.py RUNS LABEL=COMMAND [LABEL=COMMAND ...]
Commands run through /bin/sh with output discarded; alternating them (A B A B ...) spreads the
noise of a shared machine over all of them alike. Prints one JSON object per label.
"""
import json, os, statistics, subprocess, sys, time

def run_once(cmd):
    start = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        sys.exit(f"measure.py: command failed ({status}): {cmd}")
    return elapsed, usage.ru_maxrss * 1024

def main():
    runs = int(sys.argv[1])
    jobs = [arg.split("=", 1) for arg in sys.argv[2:]]
    results = {label: [] for label, _ in jobs}
    for _ in range(runs):
        for label, cmd in jobs:
            results[label].append(run_once(cmd))
    for label, cmd in jobs:
        times = [t for t, _ in results[label]]
        rss = [r for _, r in results[label]]
        print(json.dumps({"label": label, "median_s": statistics.median(times), "min_s": min(times),
                          "max_s": max(times), "peak_rss_bytes": max(rss), "runs": runs, "command": cmd}))

main()
