"""Cold scan: a copy of the standard library and a generated tree through ``kloros-tasks up``,
against pyflakes, vulture and interrogate over the same trees.

    .venv/bin/python bench/cold_scan.py [--quick] [--files N] [--no-stdlib | --with-stdlib]
                                        [--no-tools]

``--quick``: the generated tree only, 1,000 files (``--with-stdlib`` adds the stdlib copy).

For each tree: an empty state dir, then ``kloros-tasks up TREE`` (embedded Redis, one
prefork worker per queue, beat, the watcher; no bridge) is started and timed until
idle: the watcher has reconciled the whole tree, every queue and ``unacked`` is empty,
and no new question was published for 2 s (the 2 s are not counted).  Files/s counts
the files the pipeline analyses (.py, .md, .rst, .txt).  CPU is utime+stime of every
process of the pipeline, Redis included, at idle.  Then each comparison tool runs
once over the same tree as a single process (needs ``pip install pyflakes vulture
interrogate`` into the venv; they are not dependencies of the package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _measure import machine, table
from _measure import workdir as make_workdir
from _pipeline import CLK_TCK, Up, cpu_ticks
from _trees import copy_stdlib, generate_tree, routed_files

from kloros_tasks import names

TASK_TIME = re.compile(r" succeeded in ([0-9.]+)s")
FULL_FILES, QUICK_FILES = 10_000, 1_000
TOOLS = {
    "pyflakes": ["pyflakes"],
    "vulture": ["vulture"],
    "interrogate": ["interrogate", "--quiet", "--fail-under", "0"],
}


def tool_path(name: str) -> str | None:
    """The tool from this venv's bin directory, else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def run_tool(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, exit status) of one process, its output discarded."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, proc.returncode


def cpu_by_role(up: Up) -> dict[str, float]:
    """CPU seconds of each process of the pipeline (pool processes under their worker)."""
    out: dict[str, float] = {}
    for proc in up.processes():
        role = proc.role.removesuffix(" pool") + (" (pool)" if proc.role.endswith("pool") else "")
        out[role] = out.get(role, 0.0) + (cpu_ticks(proc.pid) or 0) / CLK_TCK
    return out


def task_times(up: Up) -> dict[str, list[float]]:
    """Seconds of every task each worker ran, from its log's "succeeded in" lines."""
    out = {}
    for path in sorted((up.state / "logs").glob("worker-*.log")):
        found = TASK_TIME.findall(up.log_since_start(path))
        if found:
            out[path.stem.removeprefix("worker-")] = [float(t) for t in found]
    return out


def scan_pipeline(work: Path, root: Path, files: int) -> dict:
    """Time ``kloros-tasks up`` on ``root`` from start to idle."""
    up = Up(work / "run", [root])
    try:
        up.start()
        up.wait_for(up.workers_ready, 300, "the workers")
        workers_at = time.perf_counter() - up.started_at
        idle_at = up.wait_idle(expect_seen=files) - up.started_at
        last_ms = up.stream_last_ms()
        roles = cpu_by_role(up)
        result = {
            "idle": idle_at, "workers": workers_at, "cpu": sum(roles.values()), "roles": roles,
            "task_times": task_times(up), "questions": up.client.xlen("kloros:questions"),
            "resolved": _resolutions(up),
            "tasks": len(up.worker_log_lines(" succeeded in ")),
            "last_question": last_ms / 1000 - up.started_wall if last_ms else 0.0,
        }
    finally:
        up.stop()
    return result


def _resolutions(up: Up) -> int:
    """Resolutions in the stream: questions that held only until more of the tree
    was indexed."""
    return sum(1 for _id, fields in up.client.xrange(names.STREAM)
               if json.loads(fields[names.STREAM_FIELD.encode()])["signal"]
               == names.CHANNEL_RESOLVED)


def scan_tools(root: Path) -> dict[str, tuple[float, float, int] | None]:
    out: dict[str, tuple[float, float, int] | None] = {}
    for name, argv in TOOLS.items():
        path = tool_path(name)
        out[name] = run_tool([path, *argv[1:], str(root)]) if path else None
    return out


def row(label: str, root: Path, pipe: dict, tools: dict) -> tuple[list, list]:
    files, py, tasks = routed_files(root)
    opened = pipe["questions"] - pipe["resolved"]
    main = [label, files, py, tasks, pipe["tasks"], f"{opened} + {pipe['resolved']}",
            f"{pipe['workers']:.1f}", f"{pipe['last_question']:.1f}", f"{pipe['idle']:.1f}",
            f"{files / pipe['idle']:.0f}", f"{pipe['cpu']:.1f}"]
    comp = [label]
    for name in TOOLS:
        result = tools.get(name)
        if result is None:
            comp += ["not run", "-"]
        else:
            wall, cpu, _rc = result
            comp += [f"{wall:.2f} s ({cpu:.2f} CPU)", f"{pipe['idle'] / wall:.1f}x"]
    return main, comp


def detail_tables(labels: list[str], pipes: list[dict]) -> str:
    """Where the pipeline's CPU went, and each worker's task times, per tree."""
    roles = sorted({r for p in pipes for r in p["roles"]})
    cpu_rows = [[r, *(f"{p['roles'].get(r, 0.0):.1f}" for p in pipes)] for r in roles]
    workers = sorted({w for p in pipes for w in p["task_times"]})
    task_rows = []
    for w in workers:
        cells = []
        for p in pipes:
            t = p["task_times"].get(w, [])
            cells.append(f"{len(t)} tasks, median {statistics.median(t) * 1000:.1f} ms, "
                         f"sum {sum(t):.1f} s" if t else "-")
        task_rows.append([w, *cells])
    return (table(["process: CPU s", *labels], cpu_rows) + "\n\n"
            + table(["worker: task run time", *labels], task_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES}-file tree")
    parser.add_argument("--files", type=int, help=f"generated tree size (default {FULL_FILES})")
    parser.add_argument("--no-stdlib", action="store_true", help="skip the stdlib copy")
    parser.add_argument("--with-stdlib", action="store_true", help="the stdlib copy in --quick")
    parser.add_argument("--no-tools", action="store_true", help="skip the comparison tools")
    args = parser.parse_args()
    files = args.files or (QUICK_FILES if args.quick else FULL_FILES)
    print(f"# cold scan: a generated {files}-file tree (and the stdlib copy unless --quick)")
    print(f"machine: {machine()}\n")
    mains, comps, labels, pipes = [], [], [], []
    with make_workdir() as work:
        stdlib = not args.no_stdlib and (args.with_stdlib or not args.quick)
        trees = [("stdlib copy", copy_stdlib(work / "trees"))] if stdlib else []
        generated = work / "trees" / f"gen{files}"
        generate_tree(generated, files)
        trees.append((f"generated {files}", generated))
        for label, root in trees:
            analysed = routed_files(root)[0]
            pipe = scan_pipeline(work / label.replace(" ", "_"), root, analysed)
            tools = {} if args.no_tools else scan_tools(root)
            m, c = row(label, root, pipe, tools)
            labels.append(label)
            pipes.append(pipe)
            mains.append(m)
            comps.append(c)
    print(table(["tree", "files", ".py", "tasks expected", "tasks run", "opened + resolved",
                 "workers ready s", "last question s", "idle s", "files/s", "pipeline CPU s"],
                mains))
    print()
    headers = ["tree"]
    for name in TOOLS:
        headers += [f"{name} (wall, CPU)", f"pipeline / {name}"]
    print(table(headers, comps))
    print()
    print(detail_tables(labels, pipes))
    print("\nidle s: from starting `up` to idle, worker start-up included; "
          "ratios are pipeline idle time / tool wall time")


if __name__ == "__main__":
    main()
