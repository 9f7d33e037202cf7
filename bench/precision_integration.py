"""Precision and cost figures of the IntegrationMonitor on a real tree.

    python bench/precision_integration.py [ROOT] [--sample N] [--seed S] [--list RULE]
    python bench/precision_integration.py --timing [--sizes 100 10000]

The first form walks ROOT in place (default: this interpreter's standard library),
indexes every ``.py`` file in a MemoryIndex, evaluates every file outside test
directories, and prints per rule the number of questions and a seeded random sample
to review.  ``--list RULE`` prints every question of a rule.  Test directories are
indexed but not reported: code imports from them (``idlelib.idle_test``) and
subclasses what they test, so leaving them out of the index would misjudge the rest.
Compiled extension modules are indexed as modules whose names we cannot see.
site-packages, virtualenvs, caches and hidden directories are not part of the tree.

``--timing`` generates synthetic trees in memory and times what a worker does for
a one-file edit: extract, index update, affected(), and evaluate() of the edited
file plus every affected one.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import statistics
import sys
import sysconfig
import time
import tokenize
from collections import Counter
from pathlib import Path

from kloros_tasks.detectors.integration.detector import RULES, IntegrationDetector
from kloros_tasks.detectors.integration.keys import EXTENSION_SUFFIXES, is_extension
from kloros_tasks.state.index import MemoryIndex

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "node_modules"}
TEST_DIRS = {"test", "tests", "idle_test"}


def python_files(root: Path) -> list[str]:
    """Relative POSIX paths of the tree's .py files and compiled extension modules;
    venvs and caches left out."""
    out = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and not (Path(directory, d) / "pyvenv.cfg").exists())
        out += [Path(directory, f).relative_to(root).as_posix()
                for f in sorted(files) if f.endswith((".py", *EXTENSION_SUFFIXES))]
    return out


def reported(path: str) -> bool:
    """Questions of files under a test directory are not part of the figures."""
    return not TEST_DIRS.intersection(path.split("/")[:-1])


def read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as handle:  # honours PEP 263 coding cookies
            return handle.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def build(root: Path, detector: IntegrationDetector) -> tuple[MemoryIndex, list[str]]:
    index, errors = MemoryIndex(), []
    for rel in python_files(root):
        text = "" if is_extension(rel) else read_source(root / rel)
        facts = detector.extract(rel, text) if text is not None else None
        if facts is None or facts.error:
            errors.append(f"{rel}: {facts.error if facts else 'not readable text'}")
            continue
        index.update(rel, facts)
    return index, errors


def precision(root: Path, sample: int, seed: int, listing: str | None) -> None:
    detector = IntegrationDetector()
    started = time.perf_counter()
    index, errors = build(root, detector)
    paths = [p for p in index.paths() if reported(p)]
    questions = [q for path in paths for q in detector.evaluate(path, index)]
    elapsed = time.perf_counter() - started
    print(f"root {root}: {len(index.paths())} files indexed, {len(paths)} reported, "
          f"{len(errors)} not parsed, {len(questions)} questions, {elapsed:.1f} s")
    for line in errors:
        if reported(line.partition(":")[0]):
            print(f"  not parsed: {line}")
    counts = Counter(q.rule for q in questions)
    rng = random.Random(seed)
    for rule in RULES:
        found = sorted((q for q in questions if q.rule == rule), key=lambda q: q.id)
        print(f"\n== {rule}: {counts[rule]}")
        shown = found if rule == listing else rng.sample(found, min(sample, len(found)))
        for q in shown:
            print(f"- {q.hypothesis}\n    {q.question}")
            for item in q.evidence[:4]:
                print(f"    {item}")


# --- timing on generated trees --------------------------------------------------------
PACKAGE_SIZE = 100


def generated_module(i: int, n: int, edit: int = 0) -> str:
    """Module ``i`` of a generated tree of ``n``: a worker deriving from its
    package's base (imported through the package's re-export), a queue, a topic, an
    import from a module elsewhere in the tree; every tenth one also subclasses its
    neighbour's worker.  ``edit`` adds methods, changing what the class defines."""
    p, other = i // PACKAGE_SIZE, (i * 7919 + 13) % n
    lines = [
        "from collections import deque",
        f"from pkg{p} import Base{p}",
        f"from pkg{other // PACKAGE_SIZE}.mod{other} import helper{other}",
        "",
        f"class Worker{i}(Base{p}):",
        "    def __init__(self):",
        "        super().__init__()",
        "        self.pending = deque()",
        f"        self.source = helper{other}",
        "    def add(self, item):",
        "        self.pending.append(item)",
        "        self.outbox.append(item)",
        f"        bus.publish('pkg{p}.topic{i}', item)",
        "    def drain(self):",
        "        while self.pending:",
        "            yield self.client.send(self.pending.popleft())",
    ]
    lines += [f"    def extra{k}(self):\n        return self.source" for k in range(edit)]
    lines += ["", f"def helper{i}():", f"    return {i}"]
    if i % 10 == 1:
        lines += [f"class Special{i}(Worker{i - 1}):", "    def drain(self):",
                  "        return list(super().drain())"]
        lines.insert(0, f"from pkg{p}.mod{i - 1} import Worker{i - 1}")
    return "\n".join(lines) + "\n"


def generated_base(p: int, edit: int = 0) -> str:
    lines = ["from collections import deque", f"class Base{p}:", "    def __init__(self):",
             "        self.client = None", "        self.outbox = deque()",
             "    def flush(self):", "        while self.outbox:",
             "            self.client.send(self.outbox.popleft())"]
    lines += [f"    def extra{k}(self):\n        return self.client" for k in range(edit)]
    return "\n".join(lines) + "\n"


def generated_tree(n: int) -> dict[str, str]:
    packages = (n + PACKAGE_SIZE - 1) // PACKAGE_SIZE
    files = {f"pkg{p}/__init__.py": f"from .base import Base{p}\n" for p in range(packages)}
    files.update({f"pkg{p}/base.py": generated_base(p) for p in range(packages)})
    files.update({f"pkg{i // PACKAGE_SIZE}/mod{i}.py": generated_module(i, n) for i in range(n)})
    files["listeners.py"] = "".join(f"sub.subscribe('pkg{p}.')\n" for p in range(packages))
    return files


def time_edits(n: int, edits: int, seed: int, hub: bool) -> tuple[list[float], int, float]:
    """Seconds per one-file edit (extract, update, affected, evaluate), the largest
    number of files one edit re-evaluated, and Python function calls per edit."""
    detector = IntegrationDetector()
    index = MemoryIndex()
    for path, text in generated_tree(n).items():
        index.update(path, detector.extract(path, text))
    # The index lives in this process only because it is a MemoryIndex; keep the
    # garbage collector from re-scanning it on every edit (a worker keeps it in Redis).
    gc.collect()
    gc.freeze()
    costs, widest = _edit_rounds(detector, index, n, edits, seed, hub)
    profiler = cProfile.Profile()
    profiler.runcall(_edit_rounds, detector, index, n, edits, seed, hub)
    calls = pstats.Stats(profiler).total_calls / edits
    gc.unfreeze()
    return costs, widest, calls


def _edit_rounds(detector, index, n, edits, seed, hub) -> tuple[list[float], int]:
    rng = random.Random(seed)
    costs, widest = [], 0
    for round_ in range(edits):
        i = rng.randrange(n)
        if hub:
            p = i // PACKAGE_SIZE
            path, text = f"pkg{p}/base.py", generated_base(p, edit=1 + round_ % 3)
        else:
            path = f"pkg{i // PACKAGE_SIZE}/mod{i}.py"
            text = generated_module(i, n, edit=1 + round_ % 3)
        started = time.perf_counter()
        touched = index.update(path, detector.extract(path, text))
        targets = {path} | detector.affected(path, touched, index)
        for target in targets:
            detector.evaluate(target, index)
        costs.append(time.perf_counter() - started)
        widest = max(widest, len(targets))
    return costs, widest


def timing(sizes: list[int], edits: int, seed: int) -> None:
    for hub, label in ((False, "module edit"), (True, "package base edit")):
        medians = {}
        for n in sizes:
            costs, widest, calls = time_edits(n, edits, seed, hub)
            medians[n] = statistics.median(costs)
            print(f"{label:>17}, {n:>6} files: median {medians[n] * 1000:7.2f} ms, "
                  f"p90 {statistics.quantiles(costs, n=10)[-1] * 1000:7.2f} ms, "
                  f"{calls:,.0f} calls, at most {widest} files re-evaluated")
        if len(sizes) > 1:
            ratio = medians[sizes[-1]] / medians[sizes[0]]
            print(f"{label:>17}: ratio {sizes[-1]} / {sizes[0]} files = {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", choices=RULES, help="print every question of this rule")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args(argv)
    if args.timing:
        timing(args.sizes, args.edits, args.seed)
    else:
        precision(Path(args.root), args.sample, args.seed, args.list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
