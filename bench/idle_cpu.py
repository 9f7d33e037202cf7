"""Idle CPU: every process of ``kloros-tasks up`` over a quiet window.

    .venv/bin/python bench/idle_cpu.py [--quick] [--seconds N]
                                       [--layout per-detector|single-worker|both]

``up`` (with the bridge, a chem-proxy and a ZeroMQ subscriber) indexes a generated
tree (``--files``, 100: nothing idle depends on its size but the watcher's
reconciliation, every 600 s); once idle, every autoscaled pool back to its fewest
processes (the autoscaler ends the others 30 s after the last task; a pool process's
CPU, spent in the scan, is counted to its parent when the parent reaps it) and 5 s
later, utime+stime of every process (reaped pool processes included) is read from
/proc/PID/stat, again after ``--seconds`` (60; quick 15) with nothing changing, and
the difference is shown as percent of one core.  The
exploration scan is hourly here (KLOROS_EXPLORATION_INTERVAL=3600), so the window
holds no host scan; at the default 300 s interval each scan adds its own cost.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from _measure import Listener, machine, table
from _measure import workdir as make_workdir
from _pipeline import CLK_TCK, Up, cmdline, cpu_ticks, parent_map
from _trees import generate_tree

FILES = 100
FULL_SECONDS, QUICK_SECONDS = 60, 15
SETTLE = 5.0
SHRINK_WAIT = 120.0  # the autoscaler's keepalive (30 s) and then some


def at_rest(up: Up) -> bool:
    """Every autoscaled worker's pool is down to its fewest processes."""
    parents = parent_map()
    for proc in up.processes():
        argv = cmdline(proc.pid)
        if "--autoscale" in argv:
            fewest = int(argv[argv.index("--autoscale") + 1].split(",")[1])
            if sum(1 for pp in parents.values() if pp == proc.pid) > fewest:
                return False
    return True


def ticks_by_role(up: Up) -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks) of every live process."""
    out = {}
    for proc in up.processes():
        ticks = cpu_ticks(proc.pid)
        if ticks is not None:
            out[proc.pid] = (proc.role, ticks)
    return out


def measure(single_worker: bool, seconds: float, files: int) -> dict[str, float]:
    """Percent of one core per role over ``seconds`` of quiet."""
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], single_worker=single_worker, chembus=True)
        listener = None
        try:
            up.start()
            listener = Listener(up.url, up.xpub)
            up.wait_idle(expect_seen=files)
            up.wait_for(lambda: at_rest(up), SHRINK_WAIT, "every pool back to its fewest")
            time.sleep(SETTLE)
            before, started = ticks_by_role(up), time.perf_counter()
            time.sleep(seconds)
            after, elapsed = ticks_by_role(up), time.perf_counter() - started
        finally:
            if listener is not None:
                listener.close()
            up.stop()
    percent: dict[str, float] = defaultdict(float)
    for pid, (role, ticks) in after.items():
        if pid in before:  # a process born inside the window is left out (none expected)
            percent[role] += (ticks - before[pid][1]) / CLK_TCK / elapsed * 100
    return dict(percent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS} s window")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--files", type=int, default=FILES, help="size of the generated tree")
    parser.add_argument("--layout", choices=("per-detector", "single-worker", "both"),
                        default="both")
    args = parser.parse_args()
    seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    print(f"# idle CPU: {seconds:.0f} quiet seconds after indexing a {args.files}-file tree")
    print(f"machine: {machine()}\n")
    results = {}
    if args.layout in ("per-detector", "both"):
        results["per-detector"] = measure(False, seconds, args.files)
    if args.layout in ("single-worker", "both"):
        results["single-worker"] = measure(True, seconds, args.files)
    roles = sorted({r for res in results.values() for r in res})
    rows = [[r, *(f"{res[r]:.2f}" if r in res else "-" for res in results.values())]
            for r in roles]
    for label, skip in (("total of up's processes", ("chem-proxy",)),
                        ("total with chem-proxy", ())):
        rows.append([label, *(f"{sum(v for r, v in res.items() if r not in skip):.2f}"
                              for res in results.values())])
    print(table(["process (% of one core)", *results], rows))
    print("\ntarget: all processes < 1 % of one core; original daemons: 10 % CPU")


if __name__ == "__main__":
    main()
