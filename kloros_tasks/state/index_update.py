"""The one write of the Redis index (index.RedisIndex, whose base class this is).

``update(path, facts)`` stores a file's facts and changes the holder lists of the
(relation, value) pairs that changed, in Lua script calls of at most CHUNK_OPS
operations (index_scripts.py), the change journaled first so that an error half-way
leaves nothing the next update of the file does not repair.  An update reads the
file's facts, its journal entry and the bucket addressing first (one round trip),
unless a batch read them ahead for all of its files (``read_ahead``): each script call
then answers the addressing it leaves, so that the batch's next update needs no read.
Under ``pipelined`` the batch's updates are queued and sent together, as calls of the
batch script that read and write each holder list once (index_ahead.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import redis

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts, Touched
from kloros_tasks.state.index_ahead import Queued, ReadAhead, calls
from kloros_tasks.state.index_forms import (
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
)
from kloros_tasks.state.index_scripts import BATCH_SCRIPT
from kloros_tasks.state.memory_index import _pairs, diff

ATTEMPTS = 50  # optimistic retries when another writer changed what an update read
# Index operations per script call: a file of thousands of values is applied in
# slices, each a few milliseconds, so no call holds Redis (BUSY for every client).
CHUNK_OPS = 500
MAX_SPLITS = 64  # bucket splits per update; each moves about BUCKET_FILL entries
# Operations queued (``pipelined``) before they are sent without waiting for more: one
# MULTI/EXEC keeps Redis from other clients for a few milliseconds at most.
FLUSH_OPS = 4 * CHUNK_OPS
LOOKUP_CHUNK = 1000  # values per lookup script call, for the same reason
_META = ("level", "split", "entries", "ids")  # what an update reads of the meta hash
NO_JOURNAL = b"-"  # the journal argument of a change not journaled (index_scripts.py)
BATCH_SHA = hashlib.sha1(BATCH_SCRIPT.encode()).hexdigest()


def _ints(values: list) -> list[int]:
    return [0 if v is None else int(v) for v in values]


def queue_sent_first(method):
    """Send what ``pipelined`` queued before ``method`` reads or writes the index."""
    @functools.wraps(method)
    def sent_first(self, *args, **kwargs):
        if self._queued:
            self.flush()
        return method(self, *args, **kwargs)
    return sent_first


def _sha1(raw: bytes | None) -> str:
    """What the update script compares a value read with ("" for none)."""
    return "" if raw is None else hashlib.sha1(raw).hexdigest()


class IndexUpdates:
    """``update`` and what goes with it (the journal, read-ahead, the queue), for
    ``index.RedisIndex``, which sets up the client, the keys and the scripts used here:
    ``r``, ``detector``, ``root``, ``keep_journal``, ``_facts_key``, ``_meta``,
    ``_pending_key``, ``_prefixes``, ``_update``, ``_order``, ``_queued``,
    ``_queued_ops``."""

    def update(self, path: str, new: FileFacts | None, *,
               ahead: ReadAhead | None = None, journal: bool = True) -> Touched:
        """Store ``path``'s facts (None removes the file); returns the (relation, value)
        pairs that changed, including those of an earlier change of the file that was
        cut short or whose questions were never settled (see ``pending``).

        Applied in slices of CHUNK_OPS operations; the change is journaled first, so an
        error half-way leaves nothing that the next update of the file does not repair.
        With ``ahead`` (``read_ahead``), what it holds of the file is taken instead of
        reading Redis, and what the update leaves is kept there for the next one; under
        ``pipelined`` the update is then queued, not sent.

        Without ``journal`` a change of one script call (atomic: nothing to repair) is
        not journaled, unless an earlier change of the file left an entry: for a caller
        that has every file of the root evaluated later whatever happens (a burst that
        defers the whole root), to which the pairs it changed do not matter.
        """
        key = _bytes(path)
        for _ in range(ATTEMPTS):
            try:
                touched = self._try_update(path, key, new, ahead, journal)
            except BaseException:  # cut short: what ``ahead`` holds may be stale now
                if ahead is not None:
                    ahead.forget(key)
                raise
            if touched is not None:
                if self._queued_ops >= FLUSH_OPS:
                    self.flush()
                return touched
        raise redis.WatchError(f"{self._facts_key}: {path!r} kept changing during an update")

    @contextmanager
    def pipelined(self) -> Iterator[IndexUpdates]:
        """Queue the updates made with a read-ahead and send them together
        (``flush``): once FLUSH_OPS operations wait, before anything else of
        this index is read or written, and on leaving the block.  If the block raises,
        what is still queued is dropped, as if those updates had not been made: for a
        caller holding the root's lock, whose failure has its changes made again."""
        self._queued, self._queued_ops = [], 0
        try:
            yield self
            self.flush()
        finally:
            self._queued, self._queued_ops = None, 0

    def flush(self) -> None:
        """Send the queued updates (``pipelined``) in one MULTI/EXEC.  An update that
        the batch script found computed from what changed since (another writer) is
        made again, reading Redis first; WatchError when it then changes pairs its
        caller was not told of: the caller must be tried again (its journal entries
        stay)."""
        queued = self._queued
        if not queued:
            return
        self._queued, self._queued_ops = None, 0  # what is made again is not queued
        try:
            replies = self._send(queued)
            again = [q for q, reply in zip(queued, replies, strict=True) if not reply]
            done = [reply for reply in replies if reply]
            queued[-1].ahead.sent(_ints(done[-1]) if done else None)
            for q in again:
                q.ahead.forget(_bytes(q.path))
                if not self.update(q.path, q.new, ahead=q.ahead) <= q.touched:
                    raise redis.WatchError(f"{self._facts_key}: {q.path!r} changed during"
                                           " a queued update")
        finally:
            self._queued = []

    def _send(self, queued: list[Queued]) -> list:
        """The replies to the queued updates: the meta their batch script call left
        (level, split, entries, ids), or 0 for one not applied."""
        batches = calls(queued)
        keys = [self._facts_key, self._meta, self._pending_key]
        head = [BUCKET_FILL, INLINE_MAX, *self._prefixes, b"1" if self.keep_journal else b"2",
                MAX_SPLITS]
        for _ in range(2):
            pipe = self.r.pipeline(transaction=True)
            at = [self._order.add(pipe, keys, [*head, *(a for q in batch for a in q.args)],
                                  [c for q in batch for c in q.order],
                                  empty=any(q.empty for q in batch), sha=BATCH_SHA)
                  for batch in batches]
            try:
                replies = pipe.execute(raise_on_error=False)
            except redis.exceptions.NoScriptError:  # refused whole (EXECABORT)
                self.r.script_load(BATCH_SCRIPT)
                continue
            failed = [r for r in replies if isinstance(r, Exception)]
            for error in failed:
                if not isinstance(error, redis.exceptions.NoScriptError):
                    raise error
            if failed:  # no call ran (ORDER_SCRIPT's "apply" found nothing to do)
                self.r.script_load(BATCH_SCRIPT)
                continue
            out: list = []
            for n in at:  # each call answers the meta it left, then 1 or 0 per file
                reply = replies[n]
                out += [reply[:4] if applied else 0 for applied in reply[4:]]
            return out
        raise redis.exceptions.NoScriptError("the index batch script could not be loaded")

    @queue_sent_first
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

    @queue_sent_first
    def _read_for_update(self, key: bytes) -> tuple[bytes | None, bytes | None, list[int]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(self._facts_key, key)
        pipe.hget(self._pending_key, key)
        pipe.hmget(self._meta, *_META)
        old_raw, journal_raw, meta = pipe.execute()
        return old_raw, journal_raw, _ints(meta)

    def _try_update(self, path: str, key: bytes, new: FileFacts | None,
                    ahead: ReadAhead | None, journaled: bool = True) -> Touched | None:
        """One attempt of ``update``: None when the script found that what the attempt
        was computed from had changed (another writer, or a stale ``ahead``)."""
        read = ahead.read(key) if ahead is not None else None
        old_raw, journal_raw, meta = read or self._read_for_update(key)
        *meta, ids = meta
        queue = self._queued is not None and read is not None
        # Entries read ahead are checked too: the buckets an update splits follow from
        # them, and another writer may have changed them since (one reading just before
        # the update leaves that to the next update, as it always did).  A queued call
        # addresses and splits with what it finds (index_scripts.py).
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
        unjournaled = not journaled and journal_raw is None
        journal = NO_JOURNAL if unjournaled else _journal(file_id, touched)
        if queue:
            ops, in_order = self._ops(adds, removes)
            if len(ops) <= CHUNK_OPS:
                args = [key, checks[0], checks[1], value, b"" if file_id is None else file_id,
                        b"1" if claim else b"", b"1" if prior else b"", journal,
                        b"".join(sign + f for sign, f in ops)]
                self._queued.append(Queued(path, new, touched, ahead, args,
                                           [(key, value, in_order)] if in_order else [],
                                           claim and file_id == 1, len(ops)))
                self._queued_ops += len(ops)
                kept = journal_raw if unjournaled else journal if self.keep_journal else None
                ahead.wrote(key, value or None, kept, [*meta, file_id if claim else ids],
                            exact=False)
                return touched
        if unjournaled:  # several script calls: journaled, so that a cut can be repaired
            journal = _journal(file_id, touched)
        if queue:
            if self._queued or not ahead.exact:  # in slices: after the queue, read again
                self.flush()
                ahead.forget(key)
                return None
        left = self._apply(key, checks, meta, file_id, value, adds, removes,
                           careful=bool(prior), journal=journal, claim=claim)
        if ahead is not None:
            if left is None:
                ahead.forget(key)
            else:
                ahead.wrote(key, value or None, journal if self.keep_journal else None, left)
        return None if left is None else touched

    @queue_sent_first
    def pending(self, path: str) -> Touched | None:
        """The pairs of the last change of ``path`` whose questions were not yet settled
        (published or deferred), or None when there is none: a worker that died, or a
        transient error, between the update and the publication leaves one behind."""
        raw = self.r.hget(self._pending_key, _bytes(path))
        return None if raw is None else frozenset(_read_journal(raw)[1])

    @queue_sent_first
    def pending_many(self, paths: Iterable[str]) -> set[str]:
        """The paths with a ``pending`` entry, in one round trip."""
        paths = list(dict.fromkeys(paths))
        if not paths:
            return set()
        held = self.r.hmget(self._pending_key, [_bytes(p) for p in paths])
        return {p for p, raw in zip(paths, held, strict=True) if raw is not None}

    @queue_sent_first
    def settled(self, path: str) -> None:
        """The questions of ``path``'s last change are published or deferred."""
        self.r.hdel(self._pending_key, _bytes(path))

    @queue_sent_first
    def settled_many(self, paths: Iterable[str]) -> None:
        """``settled`` for each path, in one HDEL."""
        keys = [_bytes(p) for p in dict.fromkeys(paths)]
        if keys:
            self.r.hdel(self._pending_key, *keys)

    def _apply(self, key: bytes, checks: tuple[str, str, bytes], meta: list[int],
               file_id: int | None, value: bytes, added: set, removed: set, *,
               careful: bool, journal: bytes, claim: bool = False) -> list[int] | None:
        """The script calls of one change, one after the other; the meta it leaves
        (level, split, entries, ids), or None when a call found that what the change
        was computed from no longer holds: ``checks`` (SHA-1 of the facts and of the
        journal entry, entries or "") or ``meta``'s level and split."""
        calls = self._calls(key, checks, meta, file_id, value, added, removed,
                            careful=careful, journal=journal, claim=claim)
        for n, (keys, args, in_order, empty, _) in enumerate(calls, 1):
            if n == len(calls) and self._order.wanted(in_order, empty):
                reply = self._order.apply(keys, args, in_order, empty=empty)
            else:
                reply = self._update(keys=keys, args=args)
            if not reply:
                return None
        return [int(x) for x in reply]

    def _calls(self, key: bytes, checks: tuple[str, str, bytes], meta: list[int],
               file_id: int | None, value: bytes, added: set, removed: set, *,
               careful: bool, journal: bytes, claim: bool = False
               ) -> list[tuple[list, list, list, bool, int]]:
        """The update script's calls of one change, a slice of CHUNK_OPS operations
        each: (keys, args, PathOrder's changes sent with it, whether the index held no
        file, operations)."""
        level, split, entries = meta
        ops, in_order = self._ops(added, removed)
        empty = claim and file_id == 1  # no file had an id: the index holds none
        head = [self._facts_key, self._meta, names.index_paths(
            self.detector, self.root, (file_id or 0) // PATHS_PER_BUCKET), self._pending_key]
        slices = [ops[i:i + CHUNK_OPS] for i in range(0, len(ops), CHUNK_OPS)] or [[]]
        calls = []
        for n, ops_slice in enumerate(slices):
            last = n == len(slices) - 1
            keys = list(head)
            args: list = [BUCKET_FILL, INLINE_MAX, key, checks[0],
                          level, split, value,
                          b"" if file_id is None else file_id, len(ops_slice),
                          b"1" if careful else b"", journal if n == 0 else b"",
                          (b"1" if self.keep_journal else b"2") if last else b"",
                          b"1" if claim and n == 0 else b"", self._prefixes[0],
                          self._prefixes[1], b"".join(sign + f for sign, f in ops_slice),
                          checks[1] if n == 0 else b"", b"" if n else checks[2]]
            if last:
                keys += self._splits(level, split, entries + len(added))
            calls.append((keys, args, [(key, value, in_order)] if last and in_order else [],
                          empty and last, len(ops_slice)))
            careful = True  # the journal is written: what follows may be a repair
        return calls

    def _ops(self, added: set, removed: set) -> tuple[list[tuple[bytes, bytes]], list]:
        """(sign, field) of each operation of a change, removals first, and PathOrder's
        changes of its ordered relations."""
        ops = [(b"-", f) for f in _fields(self.detector, removed)]
        ops += [(b"+", f) for f in _fields(self.detector, added)]
        return ops, self._order.ops(_ordered_fields(self.detector, removed),
                                    _ordered_fields(self.detector, added))

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
