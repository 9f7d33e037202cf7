"""Cross-file facts: per-file facts plus inverted indexes, in Redis or in memory.

Both stores implement the detectors' read-only ``IndexView`` and one write,
``update(path, facts)``, which returns the (relation, value) pairs that changed.
``MemoryIndex`` (memory_index.py, importable from here) serves ``kloros-tasks scan``
and pure tests; ``RedisIndex`` serves the workers, applying each change in one Lua
script, in the layout index_forms.py describes (the write: index_update.py).
The holders of some relations are kept in path order too (index_order.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts, Holders
from kloros_tasks.state.index_ahead import ReadAhead, facts_of  # noqa: F401  (batchindex)
from kloros_tasks.state.index_forms import (  # noqa: F401  (re-exported: snapshot, tests)
    INLINE_MAX,
    PATHS_PER_BUCKET,
    _bytes,
    _split_stored,
    _text,
    facts_json,
    field,
    index_writes,
)
from kloros_tasks.state.index_order import PathOrder, first_of
from kloros_tasks.state.index_scripts import LOOKUP_SCRIPT, UPDATE_SCRIPT
from kloros_tasks.state.index_update import (  # noqa: F401  (re-exported: tests)
    CHUNK_OPS,
    LOOKUP_CHUNK,
    MAX_SPLITS,
    IndexUpdates,
    queue_sent_first,
)
from kloros_tasks.state.memory_index import (  # noqa: F401  (MemoryIndex: re-exported)
    MemoryIndex,
    _check_indexed,
    _check_ordered,
)


class RedisIndex(IndexUpdates):
    """The same index kept in Redis, shared by every worker of one detector.

    Workers update one (detector, root) under ``names.lock`` (analysis.py); the update
    script checks what it was computed from besides, so a writer without the lock is
    safe too, and each lookup is one script: one round trip, one consistent view.
    """

    def __init__(self, client, detector: str, root: str, *, keep_journal: bool = False) -> None:
        """``keep_journal``: keep each change's journal entry until ``settled`` is called
        (workers, which must publish what a change affects even if they die first);
        otherwise it lasts only while the change is being applied."""
        self.r = client
        self.keep_journal = keep_journal
        self.detector = detector
        self.root = root
        self._facts_key = names.facts(detector, root)
        self._meta = names.index_meta(detector, root)
        self._pending_key = names.index_pending(detector, root)
        self._prefixes = [names.index_bucket(detector, root, ""),
                          names.index_spill(detector, root, ""),
                          names.index_paths(detector, root, ""), PATHS_PER_BUCKET]
        self._update = client.register_script(UPDATE_SCRIPT)
        self._lookup = client.register_script(LOOKUP_SCRIPT)
        self._order = PathOrder(client, detector, root, self._facts_key, self._meta)
        self._queued: list | None = None  # index_ahead.Queued calls, while ``pipelined``
        self._queued_ops = 0

    def _bucket(self, bucket: int) -> str:
        return names.index_bucket(self.detector, self.root, bucket)

    @queue_sent_first
    def facts(self, path: str) -> FileFacts | None:
        return facts_of(self.r.hget(self._facts_key, _bytes(path)))

    @queue_sent_first
    def facts_many(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        """``facts`` of every path (None for one not indexed), in one round trip per
        LOOKUP_CHUNK paths."""
        paths, out = list(dict.fromkeys(paths)), {}
        for start in range(0, len(paths), LOOKUP_CHUNK):
            part = paths[start:start + LOOKUP_CHUNK]
            for path, raw in zip(part, self.r.hmget(self._facts_key, [_bytes(p) for p in part]),
                                 strict=True):
                out[path] = facts_of(raw)
        return out

    @queue_sent_first
    def present_many(self, paths: Iterable[str]) -> set[str]:
        """The paths that are indexed, in one round trip; no facts are fetched (an
        ``__init__.py`` asked about for its existence can be large)."""
        paths = list(dict.fromkeys(paths))
        if not paths:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for path in paths:
            pipe.hexists(self._facts_key, _bytes(path))
        return {p for p, held in zip(paths, pipe.execute(), strict=True) if held}

    def who(self, relation: str, value: str) -> frozenset[str]:
        return self.who_many(relation, [value])[value]

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        return {v: frozenset(_text(p) for p in paths)
                for v, paths in self._read("who", relation, values).items()}

    def who_pairs(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
        """``who`` for several (relation, value) pairs, of any relations, in one round
        trip (per LOOKUP_CHUNK pairs)."""
        pairs = list(dict.fromkeys(pairs))
        for relation in {r for r, _ in pairs}:
            _check_indexed(self.detector, relation)
        return {pair: frozenset(_text(p) for p in paths)
                for pair, paths in self._lookups("who", {pair: field(*pair) for pair in pairs})}

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        """The values some file holds under ``relation``, without fetching holders
        (a directory or a common attribute name can have thousands)."""
        return {v for v, held in self._read("exists", relation, values).items() if held}

    def count_many(self, relation: str, values: Iterable[str]) -> dict[str, int]:
        """How many files hold each value: counted in Redis, no path is fetched."""
        return {v: int(n) for v, n in self._read("count", relation, values).items()}

    @queue_sent_first
    def first_many(self, relation: str, values: Iterable[str], n: int) -> dict[str, Holders]:
        """The first ``n`` holders of each value in path order, and how many there are:
        a range of the value's sorted set, whatever its size (index_order.py)."""
        _check_indexed(self.detector, relation)
        _check_ordered(self.detector, relation)
        fields = {v: field(relation, v) for v in values}
        found = self._order.first(fields, n)
        return first_of(self.who_many(relation, fields), n) if found is None else found

    @queue_sent_first
    def paths(self) -> list[str]:
        return sorted(_text(k) for k in self.r.hkeys(self._facts_key))

    @queue_sent_first
    def size(self) -> int:
        """How many files the index holds."""
        return int(self.r.hlen(self._facts_key))

    def _read(self, mode: str, relation: str, values: Iterable[str]) -> dict[str, object]:
        _check_indexed(self.detector, relation)
        return dict(self._lookups(mode, {v: field(relation, v) for v in values}))

    @queue_sent_first
    def _lookups(self, mode: str, fields: Mapping) -> list[tuple[object, object]]:
        """(key, answer) for each key of ``fields`` (key -> bucket field)."""
        keys, found = list(fields), []
        # In slices, so that no call does unbounded work; the index does not change
        # between them while the caller holds the root's lock, as workers do.
        for start in range(0, len(keys), LOOKUP_CHUNK):
            part = [fields[k] for k in keys[start:start + LOOKUP_CHUNK]]
            found += self._lookup(keys=[self._meta], args=[mode, *self._prefixes, *part])
        return list(zip(keys, found, strict=True))
