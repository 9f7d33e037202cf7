"""Edit-to-question latency through ``kloros-tasks up``, on the Redis channel and on ChemBus.

    .venv/bin/python bench/latency.py [--quick] [--edits N] [--single-worker] [--files N]

A generated tree (100 files by default) is watched by ``kloros-tasks up`` with the
bridge and a ``kloros-tasks chem-proxy``.  Each edit toggles ``pkg000/toggle.py``
between three and four undocumented functions, so it publishes exactly one envelope
(``knowledge.missing_docstrings`` opened, or ``curiosity.question_resolved``).  Each is
timed from just before the write to the envelope's arrival (a) on the Redis channel,
(b) on a ZeroMQ SUB socket connected to the proxy's XPUB side; (b - a) is what the
bridge and the proxy add.  Edits are one at a time: the next is written when no task
is queued or running.  The watcher's debounce window (KLOROS_DEBOUNCE_MS, 50 ms by
default) is part of every figure.
"""

from __future__ import annotations

import argparse

from _measure import REDIS, ZMQ, EditTimer, Listener, machine, run_edits, summary_ms, table
from _measure import workdir as make_workdir
from _pipeline import Up
from _trees import generate_tree

FULL_EDITS, QUICK_EDITS = 200, 30


def measure(files: int, edits: int, single_worker: bool,
            concurrency: str | None = None) -> tuple[list[list[object]], dict]:
    """Start the pipeline on a fresh tree, time ``edits`` edits; table rows and counts."""
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], single_worker=single_worker, chembus=True,
                concurrency=concurrency)
        listener = None
        try:
            up.start()
            listener = Listener(up.url, up.xpub)
            up.wait_idle(expect_seen=files)
            timer = EditTimer(root, listener, (REDIS, ZMQ))
            times = run_edits(up, timer, edits)
        finally:
            if listener is not None:
                listener.close()
            up.stop()
    a, b = times.seconds[REDIS], times.seconds[ZMQ]
    added = [y - x for x, y in zip(a, b, strict=False)] if len(a) == len(b) else []
    rows = [
        ["(a) write -> Redis channel", len(a), *summary_ms(a)],
        ["(b) write -> ZeroMQ SUB (bridge + proxy)", len(b), *summary_ms(b)],
        ["(b - a) added by bridge + proxy", len(added), *summary_ms(added)],
    ]
    return rows, {"lost": times.lost, "extra": times.extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EDITS} edits")
    parser.add_argument("--edits", type=int, help=f"edits to time (default {FULL_EDITS})")
    parser.add_argument("--files", type=int, default=100, help="size of the generated tree")
    parser.add_argument("--single-worker", action="store_true", help="one worker, all queues")
    parser.add_argument("--concurrency", metavar="N|MAX,MIN",
                        help="up --concurrency (default: up's own)")
    args = parser.parse_args()
    edits = args.edits or (QUICK_EDITS if args.quick else FULL_EDITS)
    print(f"# latency: {edits} edits, {args.files}-file tree, "
          f"{'single-worker' if args.single_worker else 'one worker per queue'} layout"
          + (f", --concurrency {args.concurrency}" if args.concurrency else ""))
    print(f"machine: {machine()}\n")
    rows, counts = measure(args.files, edits, args.single_worker, args.concurrency)
    print(table(["path", "edits", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms"], rows))
    print(f"\nlost (no envelope within 15 s): Redis {counts['lost'][REDIS]}, "
          f"ZeroMQ {counts['lost'][ZMQ]}; other envelopes seen on Redis: {counts['extra']}")
    print("targets: p50 < 100 ms and p99 < 300 ms end to end (b); original daemons: < 1 s")


if __name__ == "__main__":
    main()
