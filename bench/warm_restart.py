"""Warm restart: stop ``kloros-tasks up`` and start it again on an unchanged tree.

    .venv/bin/python bench/warm_restart.py [--quick] [--files N] [--single-worker]
                                           [--restarts N]

``up`` indexes a generated tree (10,000 files; quick 1,000) until idle, is stopped with
SIGTERM (its embedded Redis too, persisted in the state dir's append-only file), and
is started again on the same state dir and the same, untouched tree, ``--restarts``
times (default 1; the table shows the median of each phase).  From each start, a
timeline sampled every 10 ms: when the embedded ``redis-server`` process appeared
(``up``'s own start-up before it), when Redis answered (its data loaded), when the
first other child appeared, when every worker logged "ready", when the watcher
finished its reconciliation (first heartbeat), and when the pipeline was idle.  Then
the CPU seconds every process of ``up`` spent from its start to idle (utime + stime,
exited children included), by role.  Nothing should be re-analysed: the tasks the
workers received and the questions published after a restart should both be 0.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict

from _measure import machine, table
from _measure import workdir as make_workdir
from _pipeline import CLK_TCK, Up, cpu_ticks
from _trees import generate_tree

from kloros_tasks import names

FULL_FILES, QUICK_FILES = 10_000, 1_000
TICK = 0.01
PHASES = (
    ("redis", "redis-server process started (up's own start-up)"),
    ("answer", "Redis answering (data loaded)"),
    ("child", "first other child started"),
    ("workers", "every worker ready"),
    ("watcher", "watcher reconciled the tree"),
    ("idle", "pipeline idle"),
)


class Timeline(threading.Thread):
    """When each phase of a start was first seen, in seconds from ``up``'s start."""

    def __init__(self, up: Up) -> None:
        super().__init__(daemon=True)
        self.up, self.seen = up, {}
        self.before = up.started_at  # the start to time is the next one
        self.done = threading.Event()

    def _mark(self, phase: str, happened: bool) -> None:
        if phase not in self.seen and happened:
            self.seen[phase] = time.perf_counter() - self.up.started_at

    def run(self) -> None:
        while self.up.started_at == self.before and not self.done.wait(TICK / 10):
            pass
        while not self.done.wait(TICK) and not {"redis", "child", "workers"} <= set(self.seen):
            roles = [p.role for p in self.up.processes(include_proxy=False)]
            self._mark("redis", "redis-server" in roles)
            self._mark("child", any(r not in ("redis-server", "up (supervisor)")
                                    for r in roles))
            self._mark("workers", "workers" not in self.seen and self.up.workers_ready())


def cpu_by_role(up: Up) -> dict[str, float]:
    """CPU seconds of every live process of ``up`` (exited children in their parent's)."""
    out: dict[str, float] = defaultdict(float)
    for proc in up.processes(include_proxy=False):
        role = "worker pools" if proc.role.endswith(" pool") else (
            "workers" if proc.role.startswith("worker") else proc.role)
        out[role] += (cpu_ticks(proc.pid) or 0) / CLK_TCK
    return dict(out)


def one_start(up: Up, files: int) -> dict:
    """Start ``up`` again and time its phases; the CPU per role at idle."""
    timeline = Timeline(up)
    timeline.start()
    up.start()  # returns once Redis answers
    timeline.seen["answer"] = time.perf_counter() - up.started_at
    up.wait_for(up.workers_ready, 300, "the workers")
    up.wait_for(up.watcher_synced, 300, "the watcher's reconciliation")
    timeline.seen.setdefault("watcher", time.perf_counter() - up.started_at)
    idle = up.wait_idle(expect_seen=files) - up.started_at
    cpu = cpu_by_role(up)
    timeline.done.set()
    timeline.join()
    return {**timeline.seen, "idle": idle, "cpu": cpu}


def measure(files: int, single_worker: bool, concurrency: str | None,
            restarts: int) -> tuple[list[list[object]], list[dict]]:
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], single_worker=single_worker, concurrency=concurrency)
        starts: list[dict] = []
        try:
            up.start()
            cold = up.wait_idle(expect_seen=files) - up.started_at
            stream_before = up.client.xlen(names.STREAM)
            aof = None
            for _ in range(restarts):
                stop_s = up.stop()
                if aof is None:  # what the restart loads, after the stop
                    # (a rewritten base is an RDB file: appendonly.aof.N.base.rdb)
                    aof = sum(p.stat().st_size for p in (up.state / "redis").rglob("*.aof*")
                              if p.suffix in (".aof", ".rdb"))
                starts.append({**one_start(up, files), "stop": stop_s})
            received = len(up.worker_log_lines("] received"))
            republished = up.client.xlen(names.STREAM) - stream_before
        finally:
            up.stop()
    rows = [["first start: indexed, idle (for reference)", f"{cold:.1f} s", ""],
            ["append-only file loaded at the first restart", f"{(aof or 0) / 2**20:.1f} MiB",
             ""],
            ["stop (SIGTERM to up until it exited)",
             f"{statistics.median(s['stop'] for s in starts):.1f} s", "< 10 s"]]
    for phase, label in PHASES:
        values = [s[phase] for s in starts if phase in s]
        if values:
            rows.append([f"restart: {label}", f"{statistics.median(values):.2f} s"
                         + (f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1
                            else ""), "< 2 s" if phase == "idle" else ""])
    rows += [["tasks received by workers after the last restart", received, "0"],
             ["questions published after the restarts", republished, "0"]]
    return rows, starts


def cpu_rows(starts: list[dict]) -> list[list[object]]:
    roles = sorted({r for s in starts for r in s["cpu"]})
    rows = [[role, *(f"{s['cpu'].get(role, 0):.2f}" for s in starts)] for role in roles]
    rows.append(["all processes", *(f"{sum(s['cpu'].values()):.2f}" for s in starts)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES}-file tree")
    parser.add_argument("--files", type=int, help=f"default {FULL_FILES}")
    parser.add_argument("--single-worker", action="store_true", help="one worker, all queues")
    parser.add_argument("--concurrency", metavar="N|MAX,MIN",
                        help="up --concurrency (default: up's own)")
    parser.add_argument("--restarts", type=int, default=1, help="restarts measured (median)")
    args = parser.parse_args()
    files = args.files or (QUICK_FILES if args.quick else FULL_FILES)
    layout = "single-worker" if args.single_worker else "one worker per queue"
    print(f"# warm restart: {files}-file tree, {layout}"
          + (f", --concurrency {args.concurrency}" if args.concurrency else ""))
    print(f"machine: {machine()}\n")
    rows, starts = measure(files, args.single_worker, args.concurrency, max(1, args.restarts))
    print(table(["measure", "value", "target"], rows))
    print("\nCPU seconds from up's start to idle, by role, per restart:\n")
    print(table(["role", *(f"restart {i + 1}" for i in range(len(starts)))], cpu_rows(starts)))
    print(f"\nmachine after: {machine()}")
    print("\nidle: the watcher reconciled, every queue and unacked empty, no new question "
          "for 2 s (not counted); times from each `up` start")


if __name__ == "__main__":
    main()
