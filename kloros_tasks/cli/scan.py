"""``kloros-tasks scan PATH...``: one-shot, in-process analysis with no broker.

The same detectors and the same two-phase engine as the workers, on an in-memory
index: every file is indexed first, then every file is evaluated, so the result is
what the live pipeline converges to.  Output is one question per line (``jsonl``:
exactly the envelope; ``sarif``: one SARIF 2.1.0 log), and ``--fail-on`` turns it
into a CI gate.

A PATH that is a file is judged within its tree, as pyflakes and ruff judge a file
within its project: the tree is the nearest ancestor directory holding ``.git``,
``.hg``, ``.svn``, ``pyproject.toml`` or ``setup.cfg`` (else the file's directory),
the whole tree is indexed so cross-file rules see the rest, and only the questions
the file owns are reported.  That is what a pre-commit hook passing file names needs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.cli.render import render_envelope
from kloros_tasks.detectors.layout import is_package_file
from kloros_tasks.questions import SEVERITIES, Question, dumps, open_envelope
from kloros_tasks.settings import Settings, SettingsError
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.watch import filters
from kloros_tasks.watch.tree import read_file, walk_tree
from kloros_tasks.work import engine
from kloros_tasks.work.registry import scan_detector

TREE_MARKERS = (".git", ".hg", ".svn", "pyproject.toml", "setup.cfg")
PROGRESS_DELAY = 2.0  # seconds of scanning before a progress line is worth showing
PROGRESS_EVERY = 0.1  # seconds between redraws


@dataclass
class Target:
    """One tree to index, and the files of it to report (None: every file)."""

    root: Path
    only: set[str] | None = field(default=None)


def tree_root(path: Path) -> Path:
    """The tree a file belongs to: the nearest ancestor holding a VCS directory,
    ``pyproject.toml`` or ``setup.cfg``, else the file's own directory."""
    for directory in path.parents:
        if any((directory / marker).exists() for marker in TREE_MARKERS):
            return directory
    return path.parent


def scan_targets(paths: list[str]) -> list[Target]:
    """Directories as whole trees; files grouped by the tree they belong to.

    Raises SettingsError (exit 2) for a PATH that is neither a directory nor a file."""
    targets: dict[Path, Target] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            targets[root] = Target(root)
        elif path.is_file():
            resolved = path.resolve()
            root = tree_root(resolved)
            target = targets.setdefault(root, Target(root, set()))
            if target.only is not None:
                target.only.add(resolved.relative_to(root).as_posix())
        elif path.exists():
            raise SettingsError(f"{raw} is neither a directory nor a regular file")
        else:
            raise SettingsError(f"{raw} does not exist")
    return list(targets.values())


class ScanProgress:
    """One updating line on a terminal's stderr, and only once a scan has run for a
    few seconds: short scans and pipes stay quiet."""

    def __init__(self, stream, *, delay: float = PROGRESS_DELAY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.delay, self.clock = stream, delay, clock
        self.enabled = stream.isatty()
        self.started = clock()
        self.last_drawn = float("-inf")
        self.width = 0

    def callback(self, label: str) -> Callable[[int, int], None] | None:
        """A ``progress(done, total)`` for one tree and detector (None when disabled)."""
        if not self.enabled:
            return None

        def show(done: int, total: int) -> None:
            now = self.clock()
            if now - self.started < self.delay:
                return
            if done < total and now - self.last_drawn < PROGRESS_EVERY:
                return
            line = f"{label}: indexed {done} of {total} files"
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.width, self.last_drawn = max(self.width, len(line)), now

        return show

    def clear(self) -> None:
        """Erase the progress line, so the statistics start on a clean line."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def scan_root(root: Path, detector, settings: Settings, *, warn=print,
              progress=None, only: set[str] | None = None) -> list[Question]:
    """Every question ``detector`` asks about the tree at ``root`` (with ``only``: the
    questions those relative paths own, judged against the whole tree)."""
    index = MemoryIndex()
    root_key = filters.root_name(str(root))
    root_package = engine.package_prefix(str(root))
    paths = sorted(rel for rel, _stat in walk_tree(str(root), settings.exclude)
                   if detector.name in filters.should_enqueue(rel, settings.exclude))

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
        if progress is not None:
            progress(done, len(paths))
        try:
            text = text_of(rel)
        except (OSError, engine.NotText) as exc:
            if only is None or rel in only:
                warn(f"{root_key}:{rel}: not analysed: {exc}")
            continue
        applied = engine.apply_change(detector, index, rel, text, root_package=root_package,
                                      reread=reread)
        if applied.error and (only is None or rel in only):
            warn(f"{root_key}:{rel}: does not parse: {applied.error}")
    owners = paths if only is None else [p for p in paths if p in only]
    found = engine.evaluate(detector, index, owners, root_key, root_package)
    return [q for owner in sorted(found) for q in found[owner]]


def statistics(envelopes: list[dict]) -> list[tuple[int, str, str]]:
    """(count, rule id, severity) per rule, most frequent first, as ruff's --statistics."""
    counts = Counter()
    for env in envelopes:
        facts = env["facts"]
        rule = f"{facts['metadata']['detector']}.{facts['metadata']['rule']}"
        counts[(rule, facts["severity"])] += 1
    return sorted(((n, rule, sev) for (rule, sev), n in counts.items()),
                  key=lambda row: (-row[0], row[1], row[2]))


def severity_summary(envelopes: list[dict]) -> str:
    """``N questions (a critical, b high, c medium, d low)``, zero counts left out."""
    by = Counter(env["facts"]["severity"] for env in envelopes)
    parts = [f"{by[s]} {s}" for s in reversed(SEVERITIES) if by[s]]
    noun = "question" if len(envelopes) == 1 else "questions"
    return f"{len(envelopes)} {noun}" + (f" ({', '.join(parts)})" if parts else "")


def write_output(envelopes: list[dict], roots: list[tuple[str, Path]], fmt: str,
                 show_statistics: bool, out) -> None:
    """Questions (or the per-rule statistics) in the chosen format on ``out``."""
    if show_statistics:
        rows = statistics(envelopes)
        width = max((len(str(n)) for n, _, _ in rows), default=1)
        rule_width = max((len(rule) for _, rule, _ in rows), default=1)
        for n, rule, severity in rows:
            out.write(f"{n:>{width}}  {rule:<{rule_width}}  {severity}\n")
    elif fmt == "sarif":
        from kloros_tasks.cli.sarif import sarif_log  # noqa: PLC0415 - only for sarif

        out.write(dumps_pretty(sarif_log(envelopes, roots)) + "\n")
    else:
        for env in envelopes:
            out.write((dumps(env) if fmt == "jsonl" else render_envelope(env)) + "\n")
    out.flush()


def dumps_pretty(obj) -> str:
    import json  # noqa: PLC0415

    return json.dumps(obj, indent=2, ensure_ascii=False)


def run_scan(settings: Settings, targets: list[Target], *, detectors: list[str] | None = None,
             fmt: str = "text", fail_on: str | None = None, statistics: bool = False,
             out=sys.stdout, err=sys.stderr, progress: ScanProgress | None = None) -> int:
    """Print every question; 1 when one is at or above ``fail_on``, 2 on a bad detector.

    Ends with one line on ``err`` counting the questions by severity."""
    chosen = detectors or list(names.FILE_DETECTOR_SUFFIXES)
    unknown = sorted(set(chosen) - set(names.FILE_DETECTOR_SUFFIXES))
    if unknown:
        print(f"kloros-tasks: unknown file detector {', '.join(unknown)}; choose from "
              f"{', '.join(names.FILE_DETECTOR_SUFFIXES)}", file=err)
        return 2
    progress = progress or ScanProgress(err)
    now, envelopes = time.time(), []
    for target in targets:
        root_key = filters.root_name(str(target.root))
        for name in chosen:
            for q in scan_root(target.root, scan_detector(name, settings, target.root), settings,
                               warn=lambda m: print(m, file=err), only=target.only,
                               progress=progress.callback(f"{root_key} {name}")):
                envelopes.append(open_envelope(q, root=root_key, host=settings.host, now=now))
    progress.clear()
    roots = [(filters.root_name(str(t.root)), t.root) for t in targets]
    write_output(envelopes, roots, fmt, statistics, out)
    print(severity_summary(envelopes), file=err)
    worst = max((SEVERITIES.index(e["facts"]["severity"]) for e in envelopes), default=-1)
    if fail_on is not None and worst >= SEVERITIES.index(fail_on):
        return 1
    return 0
