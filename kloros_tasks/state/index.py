"""Cross-file facts: per-file facts plus inverted indexes, in Redis or in memory.

Both stores implement the detectors' read-only ``IndexView`` and one write,
``update(path, facts)``, which returns the (relation, value) pairs that changed.
``MemoryIndex`` (memory_index.py, importable from here) serves ``kloros-tasks scan``
and pure tests; ``RedisIndex`` serves the workers, applying each change in one Lua
script, in the layout index_forms.py describes.  An update reads the file's facts, its
journal entry and the bucket addressing first (one round trip), unless a batch read
them ahead for all of its files (``read_ahead``): each script call then answers the
addressing it leaves, so that the batch's next update needs no read.
The holders of some relations are kept in path order too (index_order.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import redis

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts, Holders, Touched
from kloros_tasks.state.index_forms import (  # noqa: F401  (re-exported: snapshot, tests)
    BUCKET_FILL,
    INLINE_MAX,
    PATHS_PER_BUCKET,
    _bytes,
    _dumps,
    _fields,
    _journal,
    _ordered_fields,
    _read_journal,
    _split_stored,
    _stored,
    _text,
    facts_json,
    field,
    index_writes,
)
from kloros_tasks.state.index_order import PathOrder, first_of
from kloros_tasks.state.index_scripts import LOOKUP_SCRIPT, UPDATE_SCRIPT
from kloros_tasks.state.memory_index import (  # noqa: F401  (MemoryIndex: re-exported)
    MemoryIndex,
    _check_indexed,
    _check_ordered,
    _pairs,
    diff,
    indexed,
    ordered,
)

ATTEMPTS = 50  # optimistic retries when another writer changed what an update read
# Index operations per script call: a file of thousands of values is applied in
# slices, each a few milliseconds, so no call holds Redis (BUSY for every client).
CHUNK_OPS = 500
MAX_SPLITS = 64  # bucket splits per update; each moves about BUCKET_FILL entries
LOOKUP_CHUNK = 1000  # values per lookup script call, for the same reason


_META = ("level", "split", "entries", "ids")  # what an update reads of the meta hash


def _ints(values: list) -> list[int]:
    return [0 if v is None else int(v) for v in values]


def _sha1(raw: bytes | None) -> str:
    """What the update script compares a value read with ("" for none)."""
    return "" if raw is None else hashlib.sha1(raw).hexdigest()


def _facts_of(raw: bytes | None) -> FileFacts | None:
    return None if raw is None else FileFacts.from_json(json.loads(facts_json(raw)))


class ReadAhead:
    """What a run of updates of one index reads first, read once for many files
    (``RedisIndex.read_ahead``): each file's stored facts and journal entry, and the
    meta hash's level, split, entries and ids.  Each update that succeeds leaves here
    what it stored and the meta its last script call answered, so the next needs no
    read.  Meant for a caller holding the root's lock, under which nothing else writes
    the index, but only a hint: every script call checks the facts, the journal entry
    and the addressing it was computed from, and an update that finds them changed
    forgets what this holds of them and reads them again."""

    def __init__(self, stored: dict[bytes, bytes | None], journal: dict[bytes, bytes | None],
                 meta: list[int]) -> None:
        self._stored, self._journal = stored, journal
        self._meta: list[int] | None = meta

    def facts(self, path: str) -> FileFacts | None:
        """The facts read of ``path`` (None if not indexed); KeyError if it was not read."""
        return _facts_of(self._stored[_bytes(path)])

    def read(self, key: bytes) -> tuple[bytes | None, bytes | None, list[int]] | None:
        """(stored facts, journal entry, meta) of ``key``, or None when not held."""
        if self._meta is None or key not in self._stored:
            return None
        return self._stored[key], self._journal[key], list(self._meta)

    def wrote(self, key: bytes, stored: bytes | None, journal: bytes | None,
              meta: list[int]) -> None:
        self._stored[key], self._journal[key], self._meta = stored, journal, meta

    def forget(self, key: bytes) -> None:
        """Read ``key`` and the meta again: what was held of them proved stale."""
        self._stored.pop(key, None)
        self._journal.pop(key, None)
        self._meta = None


class RedisIndex:
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

    def _bucket(self, bucket: int) -> str:
        return names.index_bucket(self.detector, self.root, bucket)

    def facts(self, path: str) -> FileFacts | None:
        return _facts_of(self.r.hget(self._facts_key, _bytes(path)))

    def facts_many(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        """``facts`` of every path (None for one not indexed), in one round trip per
        LOOKUP_CHUNK paths."""
        paths, out = list(dict.fromkeys(paths)), {}
        for start in range(0, len(paths), LOOKUP_CHUNK):
            part = paths[start:start + LOOKUP_CHUNK]
            for path, raw in zip(part, self.r.hmget(self._facts_key, [_bytes(p) for p in part]),
                                 strict=True):
                out[path] = _facts_of(raw)
        return out

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

    def first_many(self, relation: str, values: Iterable[str], n: int) -> dict[str, Holders]:
        """The first ``n`` holders of each value in path order, and how many there are:
        a range of the value's sorted set, whatever its size (index_order.py)."""
        _check_indexed(self.detector, relation)
        _check_ordered(self.detector, relation)
        fields = {v: field(relation, v) for v in values}
        found = self._order.first(fields, n)
        return first_of(self.who_many(relation, fields), n) if found is None else found

    def paths(self) -> list[str]:
        return sorted(_text(k) for k in self.r.hkeys(self._facts_key))

    def size(self) -> int:
        """How many files the index holds."""
        return int(self.r.hlen(self._facts_key))

    def _read(self, mode: str, relation: str, values: Iterable[str]) -> dict[str, object]:
        _check_indexed(self.detector, relation)
        return dict(self._lookups(mode, {v: field(relation, v) for v in values}))

    def _lookups(self, mode: str, fields: Mapping) -> list[tuple[object, object]]:
        """(key, answer) for each key of ``fields`` (key -> bucket field)."""
        keys, found = list(fields), []
        # In slices, so that no call does unbounded work; the index does not change
        # between them while the caller holds the root's lock, as workers do.
        for start in range(0, len(keys), LOOKUP_CHUNK):
            part = [fields[k] for k in keys[start:start + LOOKUP_CHUNK]]
            found += self._lookup(keys=[self._meta], args=[mode, *self._prefixes, *part])
        return list(zip(keys, found, strict=True))

    # --- the one write ---------------------------------------------------------------
    def update(self, path: str, new: FileFacts | None, *,
               ahead: ReadAhead | None = None) -> Touched:
        """Store ``path``'s facts (None removes the file); returns the (relation, value)
        pairs that changed, including those of an earlier change of the file that was
        cut short or whose questions were never settled (see ``pending``).

        Applied in slices of CHUNK_OPS operations; the change is journaled first, so an
        error half-way leaves nothing that the next update of the file does not repair.
        With ``ahead`` (``read_ahead``), what it holds of the file is taken instead of
        reading Redis, and what the update leaves is kept there for the next one.
        """
        key = _bytes(path)
        for _ in range(ATTEMPTS):
            try:
                touched = self._try_update(key, new, ahead)
            except BaseException:  # cut short: what ``ahead`` holds may be stale now
                if ahead is not None:
                    ahead.forget(key)
                raise
            if touched is not None:
                return touched
        raise redis.WatchError(f"{self._facts_key}: {path!r} kept changing during an update")

    def read_ahead(self, paths: Iterable[str]) -> ReadAhead:
        """What updates of ``paths`` read first, for all of them in one round trip: the
        stored facts and journal entry of each, and the bucket addressing."""
        keys = [_bytes(p) for p in dict.fromkeys(paths)]
        pipe = self.r.pipeline(transaction=True)
        for start in range(0, len(keys), LOOKUP_CHUNK):
            pipe.hmget(self._facts_key, keys[start:start + LOOKUP_CHUNK])
            pipe.hmget(self._pending_key, keys[start:start + LOOKUP_CHUNK])
        pipe.hmget(self._meta, *_META)
        *replies, meta = pipe.execute()
        stored = [raw for reply in replies[0::2] for raw in reply]
        journal = [raw for reply in replies[1::2] for raw in reply]
        return ReadAhead(dict(zip(keys, stored, strict=True)),
                         dict(zip(keys, journal, strict=True)), _ints(meta))

    def _read_for_update(self, key: bytes) -> tuple[bytes | None, bytes | None, list[int]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(self._facts_key, key)
        pipe.hget(self._pending_key, key)
        pipe.hmget(self._meta, *_META)
        old_raw, journal_raw, meta = pipe.execute()
        return old_raw, journal_raw, _ints(meta)

    def _try_update(self, key: bytes, new: FileFacts | None,
                    ahead: ReadAhead | None) -> Touched | None:
        """One attempt of ``update``: None when the script found that what the attempt
        was computed from had changed (another writer, or a stale ``ahead``)."""
        read = ahead.read(key) if ahead is not None else None
        old_raw, journal_raw, meta = read or self._read_for_update(key)
        *meta, ids = meta
        # Entries read ahead are checked too: the buckets an update splits follow from
        # them, and another writer may have changed them since (one reading just before
        # the update leaves that to the next update, as it always did).
        checks = (_sha1(old_raw), _sha1(journal_raw), b"%d" % meta[2] if read else b"")
        file_id, old = None, None
        if old_raw is not None:
            file_id, old_json = _split_stored(old_raw)
            old = FileFacts.from_json(json.loads(old_json))
        prior_id, prior = _read_journal(journal_raw)
        if old_raw is None and new is None and not prior:
            return frozenset()
        if file_id is None:
            file_id = prior_id  # the id a change cut short already used
        added, removed = diff(old, new)
        # What an interrupted change may have half-applied is decided again from
        # the new facts, one idempotent operation per pair.
        held = _pairs(new)
        adds, removes = added | (prior & held), removed | (prior - held)
        touched = frozenset(added | removed | prior)
        # A new file (or one stored without id) claims the next id; the script
        # takes it only if no other writer did meanwhile, else this is tried again.
        claim = file_id is None and new is not None
        if claim:
            file_id = ids + 1
        value = b"" if new is None else _stored(file_id, _dumps(new))
        journal = _journal(file_id, touched)
        left = self._apply(key, checks, meta, file_id, value, adds, removes,
                           careful=bool(prior), journal=journal, claim=claim)
        if ahead is not None:
            if left is None:
                ahead.forget(key)
            else:
                ahead.wrote(key, value or None, journal if self.keep_journal else None, left)
        return None if left is None else touched

    def pending(self, path: str) -> Touched | None:
        """The pairs of the last change of ``path`` whose questions were not yet settled
        (published or deferred), or None when there is none: a worker that died, or a
        transient error, between the update and the publication leaves one behind."""
        raw = self.r.hget(self._pending_key, _bytes(path))
        return None if raw is None else frozenset(_read_journal(raw)[1])

    def pending_many(self, paths: Iterable[str]) -> set[str]:
        """The paths with a ``pending`` entry, in one round trip."""
        paths = list(dict.fromkeys(paths))
        if not paths:
            return set()
        held = self.r.hmget(self._pending_key, [_bytes(p) for p in paths])
        return {p for p, raw in zip(paths, held, strict=True) if raw is not None}

    def settled(self, path: str) -> None:
        """The questions of ``path``'s last change are published or deferred."""
        self.r.hdel(self._pending_key, _bytes(path))

    def settled_many(self, paths: Iterable[str]) -> None:
        """``settled`` for each path, in one HDEL."""
        keys = [_bytes(p) for p in dict.fromkeys(paths)]
        if keys:
            self.r.hdel(self._pending_key, *keys)

    def _apply(self, key: bytes, checks: tuple[str, str, bytes], meta: list[int],
               file_id: int | None, value: bytes, added: set, removed: set, *,
               careful: bool, journal: bytes, claim: bool = False) -> list[int] | None:
        """The script calls of one change; the meta it leaves (level, split, entries,
        ids), or None when a call found that what the change was computed from no longer
        holds: ``checks`` (SHA-1 of the facts and of the journal entry, entries or "")
        or ``meta``'s level and split."""
        level, split, entries = meta
        ops = [(b"-", f) for f in _fields(self.detector, removed)]
        ops += [(b"+", f) for f in _fields(self.detector, added)]
        in_order = self._order.ops(_ordered_fields(self.detector, removed),
                                   _ordered_fields(self.detector, added))
        empty = claim and file_id == 1  # no file had an id: the index holds none
        with_order = self._order.wanted(in_order, empty)
        head = [self._facts_key, self._meta, names.index_paths(
            self.detector, self.root, (file_id or 0) // PATHS_PER_BUCKET), self._pending_key]
        slices = [ops[i:i + CHUNK_OPS] for i in range(0, len(ops), CHUNK_OPS)] or [[]]
        for n, ops_slice in enumerate(slices):
            last = n == len(slices) - 1
            keys = list(head)
            args: list = [BUCKET_FILL, INLINE_MAX, key, checks[0], level, split, value,
                          b"" if file_id is None else file_id, len(ops_slice),
                          b"1" if careful else b"", journal if n == 0 else b"",
                          (b"1" if self.keep_journal else b"2") if last else b"",
                          b"1" if claim and n == 0 else b"", self._prefixes[0],
                          self._prefixes[1], b"".join(sign + f for sign, f in ops_slice),
                          *(checks[1:] if n == 0 else (b"", b""))]
            if last:
                keys += self._splits(level, split, entries + len(added))
            if last and with_order:
                reply = self._order.apply(keys, args, [(key, value, in_order)] if in_order
                                          else [], empty=empty)
            else:
                reply = self._update(keys=keys, args=args)
            if not reply:
                return None
            careful = True  # the journal is written: what follows may be a repair
        return [int(x) for x in reply]

    def _splits(self, level: int, split: int, entries: int) -> list[str]:
        """(from, to) bucket keys of every split ``entries`` could call for, up to
        MAX_SPLITS: the next update goes on splitting where this one stopped."""
        keys: list[str] = []
        while entries > BUCKET_FILL * ((1 << level) + split) and len(keys) < 2 * MAX_SPLITS:
            keys += [self._bucket(split), self._bucket(split + (1 << level))]
            split += 1
            if split == 1 << level:
                level, split = level + 1, 0
        return keys

