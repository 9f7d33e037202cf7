"""Incremental cost: the same one-file edit in a small and a large tree.

    .venv/bin/python bench/incremental.py [--quick] [--small N] [--large N] [--edits N]

For each size, ``kloros-tasks up`` (one worker per queue, bridge and chem-proxy) indexes
a generated tree until idle; then the toggle edit of latency.py (one envelope per
edit) is made ``--edits`` times, one at a time, timed from the write to the envelope
on the Redis channel and on the ZeroMQ subscriber.  The knowledge worker's own run
time for each edit's task comes from its log.  Ratio = large / small of the medians;
a change should cost the changed file plus the keys it touched, whatever the tree.
"""

from __future__ import annotations

import argparse
import re
import statistics

from _measure import REDIS, ZMQ, EditTimer, Listener, machine, run_edits, table
from _measure import workdir as make_workdir
from _pipeline import Up
from _trees import generate_tree

SMALL, FULL_LARGE, QUICK_LARGE = 100, 10_000, 1_000
EDITS = 20
TASK_TIME = re.compile(r"kloros\.knowledge\.analyze\[[^\]]+\] succeeded in ([0-9.]+)s")


def measure(files: int, edits: int) -> dict[str, float]:
    """Medians (seconds) for one tree size: Redis, ZeroMQ, and the knowledge task."""
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], chembus=True)
        listener = None
        try:
            up.start()
            listener = Listener(up.url, up.xpub)
            up.wait_idle(expect_seen=files)
            timer = EditTimer(root, listener, (REDIS, ZMQ))
            log = up.state / "logs" / "worker-knowledge.log"
            before = len(TASK_TIME.findall(up.log_since_start(log)))
            times = run_edits(up, timer, edits, warmup=2)
            tasks = [float(t) for t in TASK_TIME.findall(up.log_since_start(log))[before + 2:]]
        finally:
            if listener is not None:
                listener.close()
            up.stop()
    return {
        REDIS: statistics.median(times.seconds[REDIS]) if times.seconds[REDIS] else 0.0,
        ZMQ: statistics.median(times.seconds[ZMQ]) if times.seconds[ZMQ] else 0.0,
        "task": statistics.median(tasks) if tasks else 0.0,
        "n": len(times.seconds[REDIS]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"large tree of {QUICK_LARGE}")
    parser.add_argument("--small", type=int, default=SMALL)
    parser.add_argument("--large", type=int, help=f"default {FULL_LARGE}")
    parser.add_argument("--edits", type=int, default=EDITS)
    args = parser.parse_args()
    large = args.large or (QUICK_LARGE if args.quick else FULL_LARGE)
    print(f"# incremental cost: one edit, {args.small}-file vs {large}-file tree, "
          f"median of {args.edits} edits")
    print(f"machine: {machine()}\n")
    small_m, large_m = measure(args.small, args.edits), measure(large, args.edits)
    rows = []
    for key, label in ((REDIS, "write -> Redis channel"), (ZMQ, "write -> ZeroMQ SUB"),
                       ("task", "knowledge task run time")):
        ratio = large_m[key] / small_m[key] if small_m[key] else float("nan")
        rows.append([label, f"{small_m[key] * 1000:.1f}", f"{large_m[key] * 1000:.1f}",
                     f"{ratio:.2f}", "< 1.2"])
    print(table(["median", f"{args.small} files ms", f"{large} files ms", "ratio", "target"],
                rows))
    print(f"\nedits timed: {small_m['n']} and {large_m['n']}")


if __name__ == "__main__":
    main()
