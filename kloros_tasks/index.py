"""Cross-file facts: per-file facts plus inverted indexes, in Redis or in memory.

Both stores implement the detectors' read-only ``IndexView`` and one write,
``update(path, facts)``, which returns the (relation, value) pairs that changed.
``MemoryIndex`` serves ``kloros-tasks scan`` and pure tests; ``RedisIndex`` serves
the workers, batching its writes in one pipeline per change.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from . import names
from .detectors.base import FileFacts, Touched


def diff(old: FileFacts | None, new: FileFacts | None) -> tuple[set, set]:
    """(added, removed) (relation, value) pairs going from ``old`` to ``new``."""
    before = {(r, v) for r, vs in (old.relations if old else {}).items() for v in vs}
    after = {(r, v) for r, vs in (new.relations if new else {}).items() for v in vs}
    return after - before, before - after


class MemoryIndex:
    """In-process index for one detector on one root."""

    def __init__(self) -> None:
        self._facts: dict[str, FileFacts] = {}
        self._inv: dict[tuple[str, str], set[str]] = defaultdict(set)

    def facts(self, path: str) -> FileFacts | None:
        return self._facts.get(path)

    def who(self, relation: str, value: str) -> frozenset[str]:
        return frozenset(self._inv.get((relation, value), ()))

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        return {v: self.who(relation, v) for v in values}

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        """The values some file holds under ``relation`` (existence only, no members)."""
        return {v for v in values if self._inv.get((relation, v))}

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


class RedisIndex:
    """The same index kept in Redis, shared by every worker of one detector."""

    def __init__(self, client, detector: str, root: str) -> None:
        self.r = client
        self.detector = detector
        self.root = root
        self._facts_key = names.facts(detector, root)

    def _key(self, relation: str, value: str) -> str:
        return names.index(self.detector, self.root, relation, value)

    def facts(self, path: str) -> FileFacts | None:
        raw = self.r.hget(self._facts_key, path)
        return None if raw is None else FileFacts.from_json(json.loads(raw))

    def who(self, relation: str, value: str) -> frozenset[str]:
        return frozenset(m.decode() if isinstance(m, bytes) else m
                         for m in self.r.smembers(self._key(relation, value)))

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        values = list(values)
        pipe = self.r.pipeline(transaction=False)
        for v in values:
            pipe.smembers(self._key(relation, v))
        out = {}
        for v, members in zip(values, pipe.execute(), strict=True):
            out[v] = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
        return out

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        """The values some file holds under ``relation``, without fetching whole sets
        (a directory or a common attribute name can have thousands of holders)."""
        values = list(values)
        pipe = self.r.pipeline(transaction=False)
        for v in values:
            pipe.exists(self._key(relation, v))
        return {v for v, n in zip(values, pipe.execute(), strict=True) if n}

    def paths(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else k
                      for k in self.r.hkeys(self._facts_key))

    def update(self, path: str, new: FileFacts | None) -> Touched:
        old = self.facts(path)
        added, removed = diff(old, new)
        pipe = self.r.pipeline(transaction=True)
        for relation, value in removed:
            pipe.srem(self._key(relation, value), path)
        for relation, value in added:
            pipe.sadd(self._key(relation, value), path)
        if new is None:
            pipe.hdel(self._facts_key, path)
        else:
            pipe.hset(self._facts_key, path, json.dumps(new.to_json(), separators=(",", ":")))
        pipe.execute()
        return frozenset(added | removed)
