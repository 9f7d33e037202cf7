"""Cold scan: Django's package directory, a copy of the standard library and a generated
tree through ``kloros-tasks up``, against pyflakes, vulture and interrogate over the same
trees, in the same run.

    .venv/bin/python bench/cold_scan.py [--quick] [--files N] [--trees T[,T...]]
                                        [--sdists DIR] [--single-worker] [--no-tools]
                                        [--questions FILE]

Trees: ``django`` (the ``django/`` directory of the Django 5.2 sdist, from ``--sdists``
or the bench cache, else downloaded once), ``stdlib``, ``generated``.  Default: all
three; ``--quick``: the generated tree only, 1,000 files.

For each tree: an empty state dir, then ``kloros-tasks up TREE`` (embedded Redis, one
prefork worker per queue, beat, the watcher; no bridge) is started and timed until
idle: the watcher has reconciled the whole tree, every queue and ``unacked`` is empty,
and no new question was published for 2 s (the 2 s are not counted).  Files/s counts
the files the pipeline analyses (.py, .md, .rst, .txt).  CPU is utime+stime of every
process of the pipeline, Redis included, at idle.  Then each comparison tool runs
three times over the same tree as a single process, and its median run (by wall time)
is compared (needs ``pip install pyflakes vulture interrogate`` into the venv; they
are not dependencies of the package).

Work done per analysed file: tasks run (workers' logs), Redis requests (read(2) calls
of redis-server: one per request or pipeline a client sends, more for a request over
16 KiB) and Redis commands (``INFO commandstats``, commands run inside scripts
included), the benchmark's own polling left out.  The load average is printed beside
each tree: on a shared machine only ratios measured in one run compare.
``--questions FILE`` writes the questions open at idle (the ledger: signal, id, rule,
paths, evidence; one JSON line each, sorted) and a digest of every file's facts per
detector, so that two versions of the code can be shown to index the same facts and
ask the same questions of the same tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _corpora
from _measure import machine, table
from _measure import workdir as make_workdir
from _pipeline import CLK_TCK, Up, cpu_ticks, pss_kib
from _trees import copy_stdlib, generate_tree, routed_files

from kloros_tasks import names

TASK_TIME = re.compile(r" succeeded in ([0-9.]+)s")
FULL_FILES, QUICK_FILES = 10_000, 1_000
REST_AFTER = 30.0  # seconds after idle before the at-rest window opens
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
    for path in sorted((up.state / "logs").glob("worker*.log")):
        found = TASK_TIME.findall(up.log_since_start(path))
        if found:
            out[path.stem.removeprefix("worker-")] = [float(t) for t in found]
    return out


def load() -> str:
    """The 1-minute load average now."""
    return Path("/proc/loadavg").read_text().split()[0]


def uss_kib(pid: int) -> int | None:
    """Memory only this process holds (Private_Clean + Private_Dirty): unlike PSS, it
    does not move with how many other processes share the same library pages."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in lines if line.startswith("Private_"))


def at_rest(up: Up, seconds: float) -> dict:
    """PSS and USS of every process of ``up`` (Redis included) and percent of one core
    they used over ``seconds`` of quiet."""
    procs = up.processes(include_proxy=False)
    before = {p.pid: cpu_ticks(p.pid, with_reaped=False) for p in procs}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    procs = up.processes(include_proxy=False)
    pss: dict[str, float] = {}
    uss: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for proc in procs:
        pss[proc.role] = pss.get(proc.role, 0.0) + (pss_kib(proc.pid) or 0) / 1024
        uss[proc.role] = uss.get(proc.role, 0.0) + (uss_kib(proc.pid) or 0) / 1024
        if before.get(proc.pid) is not None:  # one born inside the window is left out
            used = (cpu_ticks(proc.pid, with_reaped=False) or 0) - before[proc.pid]
            cpu[proc.role] = cpu.get(proc.role, 0.0) + used / CLK_TCK / elapsed * 100
    return {"processes": len(procs), "pss": sum(pss.values()), "uss": sum(uss.values()),
            "cpu": sum(cpu.values()), "rest_s": seconds, "pss_by_role": pss,
            "uss_by_role": uss, "cpu_by_role": cpu}


def open_questions(up: Up) -> list[str]:
    """The ledger's open questions, without their per-publication fields, sorted."""
    out = []
    for raw in up.client.hvals(names.LEDGER):
        envelope = json.loads(raw)
        facts = envelope["facts"]
        meta = facts.get("metadata", {})
        out.append(json.dumps({"signal": envelope["signal"], "id": facts.get("question_id"),
                               "rule": meta.get("rule"), "paths": meta.get("paths"),
                               "evidence": facts.get("evidence")}, sort_keys=True))
    return sorted(out)


def stored_facts(up: Up) -> list[str]:
    """Every file's facts per detector (sha1 of their JSON, when they were sent left
    out), sorted: what two versions of the code indexed."""
    from kloros_tasks.state.index import facts_json  # noqa: PLC0415
    from kloros_tasks.work.engine import STAMP  # noqa: PLC0415

    out = []
    for key in up.client.scan_iter(match=names.facts("*", "*")):
        for path, raw in up.client.hgetall(key).items():
            facts = json.loads(facts_json(raw))
            facts.get("data", {}).pop(STAMP, None)
            digest = hashlib.sha1(json.dumps(facts, sort_keys=True).encode()).hexdigest()
            out.append(json.dumps({"key": key.decode(), "path": path.decode(), "sha1": digest}))
    return sorted(out)


def scan_pipeline(work: Path, root: Path, files: int, single_worker: bool,
                  rest: float = 0.0, concurrency: str | None = None) -> dict:
    """Time ``kloros-tasks up`` on ``root`` from start to idle; with ``rest``, then
    measure it at rest (REST_AFTER s after idle, over ``rest`` seconds)."""
    up = Up(work / "run", [root], single_worker=single_worker, concurrency=concurrency)
    try:
        up.start()
        up.wait_for(up.workers_ready, 300, "the workers")
        workers_at = time.perf_counter() - up.started_at
        idle_at = up.wait_idle(expect_seen=files) - up.started_at
        last_ms = up.stream_last_ms()
        roles = cpu_by_role(up)
        io = up.redis_io()
        result = {"load": load(), **io,
            "idle": idle_at, "workers": workers_at, "cpu": sum(roles.values()), "roles": roles,
            "task_times": task_times(up), "questions": up.client.xlen("kloros:questions"),
            "resolved": _resolutions(up),
            "tasks": len(up.worker_log_lines(" succeeded in ")),
            "last_question": last_ms / 1000 - up.started_wall if last_ms else 0.0,
            "open": open_questions(up),
            "facts": stored_facts(up),
            # Batches whose Python files one task applied for every detector, and
            # batches handed back meanwhile (work/claims.py).
            "claims": (f"{len(up.worker_log_lines('Python files of a batch of'))} applied"
                       f" for another detector, {len(up.worker_log_lines('handing the batch'))}"
                       " handed back"),
        }
        if rest:
            time.sleep(REST_AFTER)
            result["rest"] = at_rest(up, rest)
    finally:
        up.stop()
    return result


def _resolutions(up: Up) -> int:
    """Resolutions in the stream: questions that held only until more of the tree
    was indexed."""
    return sum(1 for _id, fields in up.client.xrange(names.STREAM)
               if json.loads(fields[names.STREAM_FIELD.encode()])["signal"]
               == names.CHANNEL_RESOLVED)


TOOL_RUNS = 3  # each tool's median run: one run on a shared machine moves by half


def scan_tools(root: Path) -> dict[str, tuple[float, float, int] | None]:
    out: dict[str, tuple[float, float, int] | None] = {}
    for name, argv in TOOLS.items():
        path = tool_path(name)
        runs = sorted(run_tool([path, *argv[1:], str(root)]) for _ in range(TOOL_RUNS)) \
            if path else None
        out[name] = runs[len(runs) // 2] if runs else None
    return out


def row(label: str, root: Path, pipe: dict, tools: dict) -> tuple[list, list]:
    files, py, tasks = routed_files(root)
    opened = pipe["questions"] - pipe["resolved"]
    main = [label, pipe["load"], files, py, tasks, pipe["tasks"],
            f"{pipe['tasks'] / files:.2f}", f"{pipe['reads'] / files:.1f}",
            f"{pipe['commands'] / files:.1f}", f"{pipe['scripts'] / files:.1f}",
            f"{opened} + {pipe['resolved']}",
            f"{pipe['workers']:.1f}", f"{pipe['last_question']:.1f}", f"{pipe['idle']:.1f}",
            f"{files / pipe['idle']:.0f}", f"{pipe['cpu']:.1f}"]
    comp = [label, load()]
    for name in TOOLS:
        result = tools.get(name)
        if result is None:
            comp += ["not run", "-"]
        else:
            wall, cpu, _rc = result
            comp += [f"{wall:.2f} s ({cpu:.2f} CPU)",
                     f"{pipe['idle'] / wall:.1f}x (CPU {pipe['cpu'] / cpu:.1f}x)"]
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
    parser.add_argument("--trees", default=None,
                        help="comma-separated: django, stdlib, generated "
                             "(default all three; --quick: generated)")
    parser.add_argument("--sdists", type=Path, help="a directory holding Django-5.2.tar.gz")
    parser.add_argument("--single-worker", action="store_true",
                        help="run up with --single-worker")
    parser.add_argument("--no-tools", action="store_true", help="skip the comparison tools")
    parser.add_argument("--rest", type=float, default=0.0, metavar="S",
                        help="after idle, PSS and CPU of the pipeline over S quiet seconds")
    parser.add_argument("--concurrency", metavar="N|MAX,MIN",
                        help="up --concurrency (default: up's own)")
    parser.add_argument("--questions", type=Path, metavar="FILE",
                        help="write the open questions and the facts' digests at idle (JSON lines)")
    args = parser.parse_args()
    files = args.files or (QUICK_FILES if args.quick else FULL_FILES)
    wanted = (args.trees or ("generated" if args.quick else "django,stdlib,generated")).split(",")
    unknown = set(wanted) - {"django", "stdlib", "generated"}
    if unknown:
        parser.error(f"--trees: unknown {', '.join(sorted(unknown))}")
    print(f"# cold scan: {', '.join(wanted)} (generated: {files} files)"
          + (", up --single-worker" if args.single_worker else "")
          + (f", --concurrency {args.concurrency}" if args.concurrency else ""))
    print(f"machine: {machine()}\n")
    mains, comps, labels, pipes = [], [], [], []
    with make_workdir() as work:
        trees = []
        if "django" in wanted:
            trees.append(("django/ (5.2)", _corpora.fetch(_corpora.CORPORA["django"],
                                                          args.sdists) / "django"))
        if "stdlib" in wanted:
            trees.append(("stdlib copy", copy_stdlib(work / "trees")))
        if "generated" in wanted:
            generated = work / "trees" / f"gen{files}"
            generate_tree(generated, files)
            trees.append((f"generated {files}", generated))
        for label, root in trees:
            analysed = routed_files(root)[0]
            pipe = scan_pipeline(work / re.sub(r"\W+", "_", label), root, analysed,
                                 args.single_worker, args.rest, args.concurrency)
            tools = {} if args.no_tools else scan_tools(root)
            m, c = row(label, root, pipe, tools)
            # Each tree as soon as it is done: a long run cut short keeps what it measured.
            print(f"done: {' | '.join(map(str, m))} || {' | '.join(map(str, c))}"
                  + (f" || at rest: {pipe['rest']}" if "rest" in pipe else "")
                  + f" || claims: {pipe['claims']}", flush=True)
            if args.questions:
                with args.questions.open("a") as out:
                    out.writelines(json.dumps({"tree": label, "question": json.loads(q)})
                                   + "\n" for q in pipe["open"])
                    out.writelines(json.dumps({"tree": label, "facts": json.loads(f)})
                                   + "\n" for f in pipe["facts"])
            labels.append(label)
            pipes.append(pipe)
            mains.append(m)
            comps.append(c)
    print(table(["tree", "load", "files", ".py", "tasks expected", "tasks run", "tasks/file",
                 "redis requests/file", "redis commands/file", "script calls/file",
                 "opened + resolved",
                 "workers ready s", "last question s", "idle s", "files/s", "pipeline CPU s"],
                mains))
    print()
    headers = ["tree", "load"]
    for name in TOOLS:
        headers += [f"{name} (wall, CPU)", f"pipeline / {name}"]
    print(table(headers, comps))
    print()
    print(detail_tables(labels, pipes))
    rested = [(label, p["rest"]) for label, p in zip(labels, pipes, strict=True) if "rest" in p]
    if rested:
        print()
        print(table(["tree", "processes at rest", "PSS MiB (Redis included)", "USS MiB",
                     "CPU % of one core", "window s"],
                    [[label, r["processes"], f"{r['pss']:.1f}", f"{r['uss']:.1f}",
                      f"{r['cpu']:.2f}", f"{r['rest_s']:.0f}"] for label, r in rested]))
        roles = sorted({role for _label, r in rested for role in r["pss_by_role"]})
        print()
        print(table(["at rest: PSS MiB / USS MiB / CPU %", *(label for label, _r in rested)],
                    [[role, *(f"{r['pss_by_role'].get(role, 0.0):.1f} / "
                              f"{r['uss_by_role'].get(role, 0.0):.1f} / "
                              f"{r['cpu_by_role'].get(role, 0.0):.2f}" for _l, r in rested)]
                     for role in roles]))
    print("\nidle s: from starting `up` to idle, worker start-up included; "
          "ratios are pipeline idle time / tool wall time")


if __name__ == "__main__":
    main()
