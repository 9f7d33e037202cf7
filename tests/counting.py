"""A MemoryIndex that counts what would each be a round trip to Redis: for tests of
evaluations made together (``evaluate_many``) against the same made one by one."""

from __future__ import annotations

import collections
from pathlib import Path

from kloros_tasks.state.index import MemoryIndex

PROJECT = Path(__file__).resolve().parent.parent


class CountingIndex(MemoryIndex):
    """Counts lookups and facts reads (``lookups``), the facts read per file (``reads``)
    and the files of each ``facts_many`` (``read_together``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.reads: collections.Counter = collections.Counter()
        self.read_together: list[set[str]] = []

    def facts(self, path):
        self.lookups += 1
        self.reads[path] += 1
        return MemoryIndex.facts(self, path)

    def facts_many(self, paths):
        paths = list(paths)
        self.lookups += 1
        self.reads.update(paths)
        self.read_together.append(set(paths))
        return MemoryIndex.facts_many(self, paths)

    def who(self, relation, value):
        self.lookups += 1
        return MemoryIndex.who(self, relation, value)

    def who_many(self, relation, values):
        self.lookups += 1
        return {v: MemoryIndex.who(self, relation, v) for v in values}

    def exists_many(self, relation, values):
        self.lookups += 1
        return {v for v in values if MemoryIndex.who(self, relation, v)}

    def count_many(self, relation, values):
        self.lookups += 1
        return {v: len(MemoryIndex.who(self, relation, v)) for v in values}

    def first_many(self, relation, values, n):
        self.lookups += 1
        return MemoryIndex.first_many(self, relation, values, n)


def counting_copy(index: MemoryIndex) -> CountingIndex:
    """A CountingIndex holding what ``index`` holds."""
    counting = CountingIndex()
    for path in index.paths():
        counting.update(path, index.facts(path))
    return counting


def project_files(*patterns: str) -> dict[str, str]:
    """This project's own files matching ``patterns`` (globs from its top directory), by
    relative path: real code and documents, in every clone."""
    paths = sorted({p for pattern in patterns for p in PROJECT.glob(pattern)})
    return {p.relative_to(PROJECT).as_posix(): p.read_text() for p in paths}


def evaluated_both_ways(detector, index: MemoryIndex) -> tuple[dict, dict, int, int]:
    """(questions one file at a time, questions of ``evaluate_many``, round trips of
    each) for every file of ``index``."""
    counting = counting_copy(index)
    paths = counting.paths()
    one_by_one = {p: detector.evaluate(p, counting) for p in paths}
    alone, counting.lookups = counting.lookups, 0
    together = detector.evaluate_many(paths, counting)
    return one_by_one, together, alone, counting.lookups
