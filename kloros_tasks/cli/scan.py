"""``kloros-tasks scan PATH...``: one-shot, in-process analysis with no broker.

The same detectors and the same two-phase engine as the workers, on an in-memory
index: every file is indexed first, then every file is evaluated, so the result is
what the live pipeline converges to.  Output is one question per line (``jsonl``:
exactly the envelope), and ``--fail-on`` turns it into a CI gate.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.cli.render import render_envelope
from kloros_tasks.detectors.layout import is_package_file
from kloros_tasks.questions import SEVERITIES, Question, dumps, open_envelope
from kloros_tasks.settings import Settings
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.watch import filters
from kloros_tasks.watch.tree import read_file, walk_tree
from kloros_tasks.work import engine
from kloros_tasks.work.registry import scan_detector


def terminal_progress(stream, label: str):
    """A progress callback writing one updating line on a terminal, nothing in a pipe."""
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        stream.write(f"\r{label}: analysed {done} of {total} files ")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def scan_root(root: Path, detector, settings: Settings, *, warn=print,
              progress=None) -> list[Question]:
    """Every question ``detector`` asks about the tree at ``root``."""
    index = MemoryIndex()
    root_key = filters.root_name(str(root))
    root_package = engine.package_prefix(str(root))
    paths = [rel for rel, _stat in walk_tree(str(root), settings.exclude)
             if detector.name in filters.should_enqueue(rel, settings.exclude)]

    def text_of(rel: str) -> str:
        raw = read_file(str(root / rel), settings.max_file_bytes + 1)
        if len(raw) > settings.max_file_bytes:
            raise engine.NotText(f"too large (> {settings.max_file_bytes} bytes)")
        return engine.decode_source(rel, raw)

    def reread(rel: str) -> str | None:
        try:
            return text_of(rel)
        except (OSError, engine.NotText):
            return None

    # Packages first, outermost first: every module is then named from its import
    # root at once, and no __init__.py arriving later renames what was extracted.
    ordered = sorted(paths, key=lambda rel: (not is_package_file(rel), rel.count("/"), rel))
    for done, rel in enumerate(ordered, 1):
        if progress is not None and (done % 50 == 0 or done == len(paths)):
            progress(done, len(paths))
        try:
            text = text_of(rel)
        except (OSError, engine.NotText) as exc:
            warn(f"{root_key}:{rel}: not analysed: {exc}")
            continue
        applied = engine.apply_change(detector, index, rel, text, root_package=root_package,
                                      reread=reread)
        if applied.error:
            warn(f"{root_key}:{rel}: does not parse: {applied.error}")
    found = engine.evaluate(detector, index, paths, root_key, root_package)
    return [q for owner in sorted(found) for q in found[owner]]


def run_scan(settings: Settings, roots: list[Path], *, detectors: list[str] | None = None,
             fmt: str = "text", fail_on: str | None = None, out=sys.stdout,
             err=sys.stderr) -> int:
    """Print every question; 1 when one is at or above ``fail_on``, 2 on a bad detector."""
    chosen = detectors or list(names.FILE_DETECTOR_SUFFIXES)
    unknown = sorted(set(chosen) - set(names.FILE_DETECTOR_SUFFIXES))
    if unknown:
        print(f"kloros-tasks: unknown file detector {', '.join(unknown)}; choose from "
              f"{', '.join(names.FILE_DETECTOR_SUFFIXES)}", file=err)
        return 2
    host, now, worst, count = socket.gethostname(), time.time(), -1, 0
    for root in roots:
        root_key = filters.root_name(str(root))
        for name in chosen:
            progress = terminal_progress(err, f"{root_key} {name}")
            for q in scan_root(root, scan_detector(name, settings), settings,
                               warn=lambda m: print(m, file=err), progress=progress):
                env = open_envelope(q, root=root_key, host=host, now=now)
                out.write((dumps(env) if fmt == "jsonl" else render_envelope(env)) + "\n")
                worst = max(worst, SEVERITIES.index(q.severity))
                count += 1
    out.flush()
    print(f"{count} questions", file=err)
    if fail_on is not None and worst >= SEVERITIES.index(fail_on):
        return 1
    return 0
