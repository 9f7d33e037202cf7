"""Re-evaluation fan-out: how many files each detector re-evaluates per file added in a
cold scan, in process (no Redis, no Celery).

    .venv/bin/python bench/fanout.py [--files N] [--no-stdlib]

The workers index a tree one file at a time, as the watcher sends them; after each
file the engine re-evaluates the file plus every owner ``detector.affected()``
returns.  This applies the files of a stdlib copy and a generated tree (1,000 files)
in sorted order to a MemoryIndex, exactly as ``engine.apply_change`` does in a
worker, and counts those evaluations.  In a worker each one costs several Redis
round trips (facts, inverted-index look-ups, the ledger), so the count, not this
script's seconds, is what predicts the pipeline's cold-scan cost.  It also counts
the questions that held at some point but not at the end: in the live pipeline
each was published and then resolved.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _measure import machine, table
from _measure import workdir as make_workdir
from _trees import copy_stdlib, generate_tree

from kloros_tasks import names
from kloros_tasks.settings import from_env
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.watch import filters
from kloros_tasks.watch.tree import read_file, walk_tree
from kloros_tasks.work import engine
from kloros_tasks.work.registry import scan_detector

FILES = 1_000


def replay(root: Path, detector) -> dict:
    """Apply every file of ``root`` routed to ``detector``; count evaluations."""
    index, evaluations, worst = MemoryIndex(), 0, 0
    ever: set[str] = set()
    final: dict[str, set[str]] = {}
    paths = sorted(rel for rel, _ in walk_tree(str(root))
                   if detector.name in filters.should_enqueue(rel))
    started = time.perf_counter()
    for rel in paths:
        try:
            text = engine.decode_source(rel, read_file(str(root / rel), 1_000_001))
        except (OSError, engine.NotText):
            continue
        applied = engine.apply_change(detector, index, rel, text)
        evaluations += len(applied.owners)
        worst = max(worst, len(applied.owners))
        for owner, questions in engine.evaluate(detector, index, applied.owners,
                                                "bench").items():
            final[owner] = {q.id for q in questions}
            ever |= final[owner]
    still = set().union(*final.values()) if final else set()
    return {"files": len(paths), "evaluations": evaluations, "worst": worst,
            "seconds": time.perf_counter() - started, "final": len(still),
            "transient": len(ever - still)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=FILES, help="generated tree size")
    parser.add_argument("--no-stdlib", action="store_true")
    args = parser.parse_args()
    print("# re-evaluation fan-out of a cold scan, in process")
    print(f"machine: {machine()}\n")
    settings = from_env({})
    rows = []
    with make_workdir() as work:
        trees = [] if args.no_stdlib else [("stdlib copy", copy_stdlib(work))]
        generate_tree(work / "gen", args.files)
        trees.append((f"generated {args.files}", work / "gen"))
        for detector_name in sorted(names.FILE_DETECTOR_SUFFIXES):
            detector = scan_detector(detector_name, settings)
            for label, root in trees:
                r = replay(root, detector)
                per_file = r["evaluations"] / max(r["files"], 1)
                rows.append([detector_name, label, r["files"], r["evaluations"],
                             f"{per_file:.1f}", r["worst"], r["final"], r["transient"],
                             f"{r['seconds']:.1f}"])
    print(table(["detector", "tree", "files", "evaluations", "per file", "most for one file",
                 "questions at the end", "transient questions", "in-process s"], rows))


if __name__ == "__main__":
    main()
