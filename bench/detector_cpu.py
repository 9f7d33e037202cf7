"""CPU of each file detector's analysis, in process, beside pyflakes on the same tree.

    python bench/detector_cpu.py [--corpus C]... [--detector D]... [--profile N]
                                 [--single-worker [--batch N] [--memory] [--no-cache]
                                  [--cache-limits TREES,CHARS]] [--facts FILE]

For each corpus (see _corpora.py; default: django and the stdlib copy) and file
detector, the machinery of ``kloros-tasks scan`` (``scan_root``: every file indexed,
then every file evaluated, on a MemoryIndex) runs with the detector's ``extract``,
``affected`` and ``evaluate`` timed in CPU seconds (``time.process_time``), and the
time inside ``ast.parse`` counted apart.  pyflakes (``pip install pyflakes``; not a
dependency) then checks the same tree's Python files in the same process.

``--single-worker`` runs the three detectors' tasks in one process in the order one
worker of the default layout takes them from its three queues (round robin over the
queues, each in the order the watcher's walk sends them) and reports what the shared
parse cache (``kloros_tasks.detectors._treecache``) saved: hits, misses, texts too large
to keep.  With ``--memory`` each distinct tree is measured once with tracemalloc and the
peak of what the cache held at once is printed (trees' bytes, source characters), with
the process's peak RSS.  ``--no-cache`` turns the cache off (the before figure);
``--cache-limits TREES,CHARS`` sets other bounds.  ``--batch N`` replays a cold scan
as the watcher sends it, batch tasks of N files per detector (the watcher's 100): the
worker takes one batch from each queue in turn and extracts every file of a batch
before applying them, as a batch task does.

``--profile N`` prints the N functions with the most own time (cProfile) per detector.
``--facts FILE`` writes every file's facts and every question per detector as JSON
lines, to compare two versions of the code: the same file means the same analysis.
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import io
import json
import pstats
import resource
import sys
import time
import tracemalloc
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpora import CORPORA, fetch, set_cache_dir, stdlib_name  # noqa: E402
from precision import corpus_settings  # noqa: E402

from kloros_tasks import names, settings  # noqa: E402
from kloros_tasks.cli.scan import scan_root  # noqa: E402

try:
    from kloros_tasks.detectors._treecache import PARSE_CACHE  # noqa: E402
except ImportError:  # the code before the parse cache, for the before figures
    PARSE_CACHE = None
from kloros_tasks.detectors.layout import is_package_file  # noqa: E402
from kloros_tasks.state.index import MemoryIndex  # noqa: E402
from kloros_tasks.watch import filters  # noqa: E402
from kloros_tasks.watch.tree import read_file, walk_tree  # noqa: E402
from kloros_tasks.work import engine  # noqa: E402
from kloros_tasks.work.batchindex import BatchIndex  # noqa: E402
from kloros_tasks.work.registry import scan_detector  # noqa: E402

DETECTORS = tuple(names.FILE_DETECTOR_SUFFIXES)
DEFAULT_CORPORA = ("django", stdlib_name())
_real_parse = ast.parse


class Clock:
    """CPU seconds and calls per phase, and inside ``ast.parse``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def timed(self, phase: str, fn):
        def run(*args, **kwargs):
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.process_time() - started
                self.calls[phase] += 1
        return run


class Timed:
    """A detector whose phases are timed on ``clock``; anything else passes through."""

    def __init__(self, detector, clock: Clock) -> None:
        self._detector = detector
        self.name = detector.name
        self.extract = clock.timed("extract", detector.extract)
        self.affected = clock.timed("affected", detector.affected)
        self.evaluate = clock.timed("evaluate", detector.evaluate)

    def __getattr__(self, attr):
        return getattr(self._detector, attr)


def python_files(root: Path, cfg) -> list[str]:
    return sorted(rel for rel, _ in walk_tree(str(root), cfg.exclude) if rel.endswith(".py"))


def pyflakes_cpu(root: Path, cfg) -> tuple[float, int]:
    """CPU seconds of pyflakes over the tree's Python files (read, parse, check)."""
    try:
        from pyflakes import api, reporter  # noqa: PLC0415
    except ImportError:
        return float("nan"), 0
    quiet = reporter.Reporter(io.StringIO(), io.StringIO())
    files = python_files(root, cfg)
    started = time.process_time()
    for rel in files:
        api.checkPath(str(root / rel), quiet)
    return time.process_time() - started, len(files)


def scan_timed(root: Path, detector: str, cfg, profile: int) -> tuple[Clock, list, str]:
    clock = Clock()
    ast.parse = clock.timed("ast.parse", _real_parse)
    profiler = cProfile.Profile(time.process_time) if profile else None
    started = time.process_time()
    try:
        if profiler:
            profiler.enable()
        found = scan_root(root, Timed(scan_detector(detector, cfg, root), clock), cfg,
                          warn=lambda _m: None)
    finally:
        if profiler:
            profiler.disable()
        ast.parse = _real_parse
    clock.seconds["scan"] = time.process_time() - started
    text = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile)
        text = out.getvalue()
    return clock, found, text


def worker_order(root: Path, cfg) -> list[tuple[str, str]]:
    """(detector, path) in the order one worker on the three queues takes them: each
    queue filled in the walk's order, taken round robin while any is not empty."""
    queues: dict[str, list[str]] = {d: [] for d in DETECTORS}
    for rel, _ in walk_tree(str(root), cfg.exclude):
        for detector in sorted(filters.should_enqueue(rel, cfg.exclude)):
            if detector in queues:
                queues[detector].append(rel)
    order, at = [], dict.fromkeys(DETECTORS, 0)
    while any(at[d] < len(queues[d]) for d in DETECTORS):
        for d in DETECTORS:
            if at[d] < len(queues[d]):
                order.append((d, queues[d][at[d]]))
                at[d] += 1
    return order


def batch_order(root: Path, cfg, size: int) -> list[tuple[str, list[str]]]:
    """(detector, paths) batches in the order one worker on the three queues takes
    them: each queue holds its detector's files in the walk's order, ``size`` a batch."""
    queues: dict[str, list[str]] = {d: [] for d in DETECTORS}
    for detector, rel in worker_order(root, cfg):
        queues[detector].append(rel)
    batches = {d: [paths[i:i + size] for i in range(0, len(paths), size)]
               for d, paths in queues.items()}
    order = []
    for k in range(max(len(b) for b in batches.values())):
        order += [(d, batches[d][k]) for d in DETECTORS if k < len(batches[d])]
    return order


def _read(root: Path, rel: str, cfg) -> str | None:
    try:
        return engine.decode_source(rel, read_file(str(root / rel), cfg.max_file_bytes + 1))
    except (OSError, engine.NotText):
        return None


def single_worker(root: Path, cfg, memory: bool, batch: int = 0) -> dict:
    """Index every file with every detector in one process, in the worker's order."""
    detectors = {d: scan_detector(d, cfg, root) for d in DETECTORS}
    indexes = {d: MemoryIndex() for d in DETECTORS}
    package = engine.package_prefix(str(root))
    # The engine renames a package's modules when its __init__.py arrives later: the
    # scan avoids that by sending packages first; a worker sees the walk's order.
    if batch:
        return _batches(root, cfg, memory, batch, detectors, indexes, package)
    order = worker_order(root, cfg)
    cache = PARSE_CACHE
    before = dict(cache.stats) if cache else {}
    if cache:
        cache.clear()
    sizes: dict[bytes, tuple[int, int]] = {}  # digest -> traced bytes of its tree (--memory)
    peak = [0, 0]  # bytes of trees held, characters of source held
    started = time.process_time()
    for detector, rel in order:
        try:
            raw = read_file(str(root / rel), cfg.max_file_bytes + 1)
            text = engine.decode_source(rel, raw)
        except (OSError, engine.NotText):
            continue
        engine.apply_change(detectors[detector], indexes[detector], rel, text,
                            root_package=package)
        if memory and cache and rel.endswith(".py"):
            _measure_held(cache, text, sizes, peak)
    seconds = time.process_time() - started
    stats = {k: v - before.get(k, 0) for k, v in cache.stats.items()} if cache else {}
    return {"tasks": len(order), "cpu": round(seconds, 2), **stats,
            "held_peak_mib": round(peak[0] / 2**20, 1),
            "held_peak_source_kib": round(peak[1] / 1024),
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _batches(root: Path, cfg, memory: bool, size: int, detectors, indexes,
             package: str) -> dict:
    """``single_worker`` with batch tasks: extract every file of a batch, then apply."""
    order = batch_order(root, cfg, size)
    cache = PARSE_CACHE
    before = dict(cache.stats) if cache else {}
    if cache:
        cache.clear()
    sizes: dict[bytes, tuple[int, int]] = {}
    peak = [0, 0]
    started = time.process_time()
    for detector, paths in order:
        det, index = detectors[detector], indexes[detector]
        # As the batch task does: modules named by the layout the batch will have.
        ahead = BatchIndex(index)
        ahead.prefetch(paths)
        ahead.assume({rel: True for rel in paths if is_package_file(rel)})
        prepared = []
        for rel in paths:
            text = _read(root, rel, cfg)
            if text is None:
                continue
            prepared.append((rel, text, engine.extract(det, ahead, rel, text, package)))
            if memory and cache and rel.endswith(".py"):
                _measure_held(cache, text, sizes, peak)
        for rel, text, facts in prepared:
            engine.apply_change(det, index, rel, text, facts=facts, root_package=package)
    seconds = time.process_time() - started
    stats = {k: v - before.get(k, 0) for k, v in cache.stats.items()} if cache else {}
    return {"batches": len(order), "files": sum(len(p) for _, p in order),
            "cpu": round(seconds, 2), **stats,
            "held_peak_mib": round(peak[0] / 2**20, 1),
            "held_peak_source_kib": round(peak[1] / 1024),
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _measure_held(cache, text: str, sizes: dict[bytes, int], peak: list[int]) -> None:
    """Trace a fresh parse of ``text`` once, then add up the trees the cache holds."""
    from kloros_tasks.detectors._treecache import _digest  # noqa: PLC0415

    key = _digest(text)
    if key not in sizes:
        tracemalloc.start()
        try:
            held_while_traced = ast.parse(text)
            sizes[key] = (tracemalloc.get_traced_memory()[0], len(text))
            del held_while_traced
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            sizes[key] = (0, 0)
        finally:
            tracemalloc.stop()
    held = [sizes.get(k, (0, 0)) for k in cache.held()]
    peak[0] = max(peak[0], sum(b for b, _ in held))
    peak[1] = max(peak[1], sum(c for _, c in held))


def dump_facts(out, corpus: str, detector: str, root: Path, cfg, found) -> None:
    """Every file's facts (as the scan's index would hold them) and every question."""
    det = scan_detector(detector, cfg, root)
    index = MemoryIndex()
    package = engine.package_prefix(str(root))
    paths = sorted(rel for rel, _ in walk_tree(str(root), cfg.exclude)
                   if detector in filters.should_enqueue(rel, cfg.exclude))
    for rel in sorted(paths, key=lambda r: (not is_package_file(r), r.count("/"), r)):
        try:
            text = engine.decode_source(rel, read_file(str(root / rel), cfg.max_file_bytes + 1))
        except (OSError, engine.NotText):
            continue
        facts = engine.extract(det, index, rel, text, package)
        engine.apply_change(det, index, rel, text, facts=facts, root_package=package)
        row = {"corpus": corpus, "detector": detector, "path": rel, "error": facts.error,
               "facts": facts.to_json()}
        out.write(json.dumps(row, sort_keys=True, default=sorted) + "\n")
    for q in found:
        out.write(json.dumps({"corpus": corpus, "detector": detector, "question": asdict(q)},
                             sort_keys=True, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", action="append", choices=list(CORPORA))
    p.add_argument("--detector", action="append", choices=DETECTORS)
    p.add_argument("--cache", type=Path, help="where corpora are kept")
    p.add_argument("--path", type=Path, action="append",
                   help="a directory to measure instead of the corpora (e.g. Django's django/)")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    p.add_argument("--single-worker", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--batch", type=int, default=0, metavar="N")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--cache-limits", metavar="TREES,CHARS")
    p.add_argument("--facts", type=Path)
    args = p.parse_args(argv)
    if args.cache:
        set_cache_dir(args.cache)
    cache = PARSE_CACHE
    if cache is not None and (args.no_cache or args.cache_limits):
        entries, chars = (0, 0) if args.no_cache else map(int, args.cache_limits.split(","))
        cache.resize(entries, chars)
    chosen = [CORPORA[name] for name in (args.corpus or DEFAULT_CORPORA)]
    facts_out = args.facts.open("w") if args.facts else None
    print(f"load {Path('/proc/loadavg').read_text().split()[0]}, "
          f"parse cache {cache.limits() if cache else None}")
    trees = [(c.name, fetch(c), corpus_settings(c, False)) for c in chosen]
    if args.path:
        trees = [(str(p), p.resolve(), settings.from_env()) for p in args.path]
    for name, root, cfg in trees:
        if args.single_worker:
            print(name, json.dumps(single_worker(root, cfg, args.memory, args.batch)))
            continue
        print(f"| {name} | detector | files | scan CPU s | extract s | parse s (calls)"
              f" | affected s | evaluate s | questions |")
        total = 0.0
        for detector in args.detector or DETECTORS:
            if cache is not None:
                cache.clear()
            clock, found, profile = scan_timed(root, detector, cfg, args.profile)
            s, c = clock.seconds, clock.calls
            total += s["scan"]
            print(f"| | {detector} | {c['extract']} | {s['scan']:.2f} | {s['extract']:.2f} | "
                  f"{s['ast.parse']:.2f} ({c['ast.parse']}) | {s['affected']:.2f} | "
                  f"{s['evaluate']:.2f} | {len(found)} |")
            if profile:
                print(profile)
            if facts_out:
                dump_facts(facts_out, name, detector, root, cfg, found)
        flakes, files = pyflakes_cpu(root, cfg)
        print(f"| | pyflakes | {files} | {flakes:.2f} | | | | | |")
        print(f"| | three detectors / pyflakes | | {total / flakes:.2f}x | | | | | |")
    if facts_out:
        facts_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
