"""The in-process index (``kloros-tasks scan``, pure tests), and what both index
stores share: which relations are indexed and how a change of facts is diffed.

``MemoryIndex`` answers every lookup exactly as ``index.RedisIndex`` does (the tests
of both stores hold them to it).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

from kloros_tasks.detectors.base import (
    NOT_INDEXED,
    ORDERED,
    FileFacts,
    Holders,
    Touched,
    path_order,
)


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


def ordered(detector: str | None, relation: str) -> bool:
    """Whether the index keeps ``relation``'s holders in path order (``first_many``)."""
    return relation in ORDERED.get(detector or "", ())


def _check_ordered(detector: str | None, relation: str) -> None:
    """Without a detector (``kloros-tasks scan``'s index) every relation is."""
    if detector is not None and not ordered(detector, relation):
        raise LookupError(f"{detector} does not keep {relation!r} in path order")


class MemoryIndex:
    """In-process index for one detector on one root.  Given the detector's name it
    refuses, as RedisIndex does, lookups of relations that are not indexed (and
    ``first_many`` of relations it does not keep in path order)."""

    def __init__(self, detector: str | None = None) -> None:
        self.detector = detector
        self._facts: dict[str, FileFacts] = {}
        self._inv: dict[tuple[str, str], set[str]] = defaultdict(set)
        # The holders of each pair ``first_many`` was asked about, kept sorted in path
        # order from then on, so asking again costs no sort of them all.
        self._sorted: dict[tuple[str, str], list[bytes]] = {}

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

    def first_many(self, relation: str, values: Iterable[str], n: int) -> dict[str, Holders]:
        """The first ``n`` holders of each value in path order, and how many there are."""
        _check_indexed(self.detector, relation)
        _check_ordered(self.detector, relation)
        out = {}
        for value in values:
            pair = (relation, value)
            if pair not in self._sorted:
                self._sorted[pair] = sorted(map(path_order, self._inv.get(pair, ())))
            held = self._sorted[pair]
            out[value] = Holders(tuple(_path(p) for p in held[:max(n, 0)]), len(held))
        return out

    def paths(self) -> list[str]:
        return sorted(self._facts)

    def size(self) -> int:
        return len(self._facts)

    def update(self, path: str, new: FileFacts | None) -> Touched:
        old = self._facts.get(path)
        added, removed = diff(old, new)
        for pair in removed:
            self._inv[pair].discard(path)
            if not self._inv[pair]:
                del self._inv[pair]
        for pair in added:
            self._inv[pair].add(path)
        self._keep_sorted(path, added, removed)
        if new is None:
            self._facts.pop(path, None)
        else:
            self._facts[path] = new
        return frozenset(added | removed)

    def _keep_sorted(self, path: str, added: set, removed: set) -> None:
        key = path_order(path)
        for pair in removed & self._sorted.keys():
            held = self._sorted[pair]
            at = bisect.bisect_left(held, key)
            if at < len(held) and held[at] == key:
                del held[at]
        for pair in added & self._sorted.keys():
            bisect.insort(self._sorted[pair], key)


def _path(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")
