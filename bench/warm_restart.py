"""Warm restart: stop ``kloros-tasks up`` and start it again on an unchanged tree.

    .venv/bin/python bench/warm_restart.py [--quick] [--files N] [--single-worker]

``up`` indexes a generated tree (10,000 files; quick 1,000) until idle, is stopped with
SIGTERM (its embedded Redis too, persisted in the state dir's append-only file), and
is started again on the same state dir and the same, untouched tree.  From that
second start: when Redis answers (its data loaded), when every worker logged
"ready", when the watcher finished its reconciliation (first heartbeat), and when
the pipeline is idle.  Nothing should be re-analysed: the tasks the workers
received and the questions published after the restart should both be 0.
"""

from __future__ import annotations

import argparse
import time

from _measure import machine, table
from _measure import workdir as make_workdir
from _pipeline import Up
from _trees import generate_tree

from kloros_tasks import names

FULL_FILES, QUICK_FILES = 10_000, 1_000


def _first(up: Up, condition, what: str) -> float:
    up.wait_for(condition, 300, what)
    return time.perf_counter() - up.started_at


def measure(files: int, single_worker: bool,
            concurrency: str | None = None) -> list[list[object]]:
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], single_worker=single_worker, concurrency=concurrency)
        try:
            up.start()
            cold = up.wait_idle(expect_seen=files) - up.started_at
            stream_before = up.client.xlen(names.STREAM)
            stop_s = up.stop()
            up.start()
            redis_s = time.perf_counter() - up.started_at
            workers_s = _first(up, up.workers_ready, "the workers")
            watcher_s = _first(up, up.watcher_synced, "the watcher's reconciliation")
            idle_s = up.wait_idle(expect_seen=files) - up.started_at
            received = len(up.worker_log_lines("] received"))
            republished = up.client.xlen(names.STREAM) - stream_before
        finally:
            up.stop()
    return [
        ["first start: indexed, idle (for reference)", f"{cold:.1f} s", ""],
        ["stop (SIGTERM to up until it exited)", f"{stop_s:.1f} s", "< 10 s"],
        ["restart: Redis answering (data loaded)", f"{redis_s:.2f} s", ""],
        ["restart: every worker ready", f"{workers_s:.2f} s", ""],
        ["restart: watcher reconciled the tree", f"{watcher_s:.2f} s", ""],
        ["restart: pipeline idle", f"{idle_s:.2f} s", "< 2 s"],
        ["tasks received by workers after the restart", received, "0"],
        ["questions published after the restart", republished, "0"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES}-file tree")
    parser.add_argument("--files", type=int, help=f"default {FULL_FILES}")
    parser.add_argument("--single-worker", action="store_true", help="one worker, all queues")
    parser.add_argument("--concurrency", metavar="N|MAX,MIN",
                        help="up --concurrency (default: up's own)")
    args = parser.parse_args()
    files = args.files or (QUICK_FILES if args.quick else FULL_FILES)
    layout = "single-worker" if args.single_worker else "one worker per queue"
    print(f"# warm restart: {files}-file tree, {layout}"
          + (f", --concurrency {args.concurrency}" if args.concurrency else ""))
    print(f"machine: {machine()}\n")
    print(table(["measure", "value", "target"], measure(files, args.single_worker, args.concurrency)))
    print("\nidle: the watcher reconciled, every queue and unacked empty, no new question "
          "for 2 s (not counted); times from the second `up` start")


if __name__ == "__main__":
    main()
