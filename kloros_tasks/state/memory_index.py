"""The in-process index (``kloros-tasks scan``, pure tests), and what both index
stores share: which relations are indexed and how a change of facts is diffed.

``MemoryIndex`` answers every lookup exactly as ``index.RedisIndex`` does (the tests
of both stores hold them to it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from kloros_tasks.detectors.base import NOT_INDEXED, FileFacts, Touched


def _pairs(facts: FileFacts | None) -> set[tuple[str, str]]:
    return {(r, v) for r, vs in (facts.relations if facts else {}).items() for v in vs}


def diff(old: FileFacts | None, new: FileFacts | None) -> tuple[set, set]:
    """(added, removed) (relation, value) pairs going from ``old`` to ``new``."""
    before, after = _pairs(old), _pairs(new)
    return after - before, before - after


def indexed(detector: str | None, relation: str) -> bool:
    return relation not in NOT_INDEXED.get(detector or "", ())


def _check_indexed(detector: str | None, relation: str) -> None:
    if not indexed(detector, relation):
        raise LookupError(f"{detector} does not index {relation!r} by value")


class MemoryIndex:
    """In-process index for one detector on one root.  Given the detector's name it
    refuses, as RedisIndex does, lookups of relations that are not indexed."""

    def __init__(self, detector: str | None = None) -> None:
        self.detector = detector
        self._facts: dict[str, FileFacts] = {}
        self._inv: dict[tuple[str, str], set[str]] = defaultdict(set)

    def facts(self, path: str) -> FileFacts | None:
        return self._facts.get(path)

    def facts_many(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        """``facts`` of every path (None for one not indexed)."""
        return {p: self._facts.get(p) for p in paths}

    def present_many(self, paths: Iterable[str]) -> set[str]:
        """The paths that are indexed (their facts are not read)."""
        return {p for p in paths if p in self._facts}

    def who(self, relation: str, value: str) -> frozenset[str]:
        _check_indexed(self.detector, relation)
        return frozenset(self._inv.get((relation, value), ()))

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        _check_indexed(self.detector, relation)
        return {v: self.who(relation, v) for v in values}

    def who_pairs(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
        """``who`` for several (relation, value) pairs, of any relations, at once."""
        return {(r, v): self.who(r, v) for r, v in pairs}

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        """The values some file holds under ``relation`` (existence only, no members)."""
        _check_indexed(self.detector, relation)
        return {v for v in values if self._inv.get((relation, v))}

    def count_many(self, relation: str, values: Iterable[str]) -> dict[str, int]:
        _check_indexed(self.detector, relation)
        return {v: len(self._inv.get((relation, v), ())) for v in values}

    def paths(self) -> list[str]:
        return sorted(self._facts)

    def update(self, path: str, new: FileFacts | None) -> Touched:
        old = self._facts.get(path)
        added, removed = diff(old, new)
        for pair in removed:
            self._inv[pair].discard(path)
            if not self._inv[pair]:
                del self._inv[pair]
        for pair in added:
            self._inv[pair].add(path)
        if new is None:
            self._facts.pop(path, None)
        else:
            self._facts[path] = new
        return frozenset(added | removed)
