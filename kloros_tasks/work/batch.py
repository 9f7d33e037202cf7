"""What a batch task does, minus Celery: a bounded batch of changes of one root, with
the Redis round trips of one change paid once per batch.

The watcher sends a reconciliation or a storm as batches (payload.py bounds them);
each file's outcome is exactly the single-file path's (analysis.py), whose steps this
reuses: per batch one root registration read, one HMGET of the stored digests, one
pipeline of blobs, decoding and extraction outside the lock, one hold of the root's
lock for applying every change, one deferral decision, one HDEL of the journal, one
pipeline of skip and syntax-error records and one script call releasing the blobs.

Bad input: a malformed batch is refused as a whole, a malformed entry alone.  A batch
that raises or keeps killing its worker is not parked whole: ``split`` sends each of
its changes again as a single-file task, so only a poison file ends as a dead letter.
Blob references are released only when the batch is done, so a retry, a redelivery
or a split still finds the bytes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from kloros_tasks import names
from kloros_tasks.detectors._treecache import forget_tree
from kloros_tasks.detectors.base import FileDetector
from kloros_tasks.detectors.layout import is_package_file
from kloros_tasks.state.index import RedisIndex
from kloros_tasks.work import blobs, claims, engine
from kloros_tasks.work.analysis import (
    Context,
    apply_one,
    content,
    decode,
    finish,
    judge,
    record,
    registered_root,
    root_package,
)
from kloros_tasks.work.batchindex import BatchIndex
from kloros_tasks.work.deferral import defer_whole_root, root_lock
from kloros_tasks.work.payload import Change, PayloadError, decoded, parse_batch

log = logging.getLogger(__name__)


def decode_batch(obj) -> tuple[str, list[Change | PayloadError]]:
    return parse_batch(decoded(obj, "batch payload"))


def _summary(outcomes: Counter) -> str:
    return ", ".join(f"{n} {word}" for word, n in sorted(outcomes.items())) or "empty"


HANDED_OVER = "handed over"  # another task holds the batch's claim: send it again


def handle_batch(ctx: Context, detector: FileDetector, obj, *,
                 reevaluate_all: bool = False) -> str:
    """Analyse a batch of changes; returns the count of each outcome ("3 analysed,
    1 refused"), "refused" for a malformed batch, or HANDED_OVER when another task
    applies its Python files now (claims.py): the caller sends the batch again, whose
    blobs stay held for it.  Redis errors propagate (the task layer retries them) and
    leave the blobs held for the retry."""
    try:
        root, entries = decode_batch(obj)
    except PayloadError as exc:
        log.warning("%s: refused malformed batch payload: %s", detector.name, exc)
        return "refused"
    outcomes: Counter = Counter()
    changes: list[Change] = []
    for n, entry in enumerate(entries):
        if isinstance(entry, PayloadError):
            log.warning("%s: refused entry %d of a batch of %s: %s", detector.name, n,
                        root, entry)
            outcomes["refused"] += 1
        else:
            changes.append(entry)
    root_info = registered_root(ctx.client, root)
    if root_info is None:
        log.warning("%s: refused a batch of %d changes of %s: no watcher registered the"
                    " root", detector.name, len(changes), root)
        outcomes["refused"] += len(changes)
    elif changes and not _run(ctx, detector, root, root_info, changes, outcomes,
                              reevaluate_all):
        return HANDED_OVER
    blobs.release_many(ctx.client, [c.sha256 for c in changes if c.sha256])
    return _summary(outcomes)


def _run(ctx: Context, detector: FileDetector, root: str, root_info: dict,
         changes: list[Change], outcomes: Counter, reevaluate_all: bool) -> bool:
    """Apply ``changes`` for ``detector``, and their Python files for the worker's
    other file detectors too when this task claims them; False (nothing done) when
    another task holds the claim."""
    mine = _Batch(ctx, detector, root, root_info, outcomes)
    shared = claims.common(changes) if ctx.companions and ctx.claimant else []
    if not shared:
        _run_together([(mine, changes, reevaluate_all)])
        return True
    key = names.batch_claim(root, claims.digest(root, shared))
    state, applied = claims.claim(ctx.client, key, ctx.claimant, ctx.lock_timeout)
    if state == claims.HELD:
        log.info("%s: the Python files of a batch of %s are being applied by another"
                 " task; handing the batch back to the queue", detector.name, root)
        return False
    if state == claims.DONE:
        if detector.name in applied and not reevaluate_all:  # journal settled there too
            outcomes["claimed"] += len(shared)
            done = set(shared)
            changes = [c for c in changes if c not in done]
        if changes:
            _run_together([(mine, changes, reevaluate_all)])
        return True
    others = [(_Batch(ctx, other, root, root_info, Counter()), shared, changed)
              for other, changed in ctx.companions(detector.name, root)]
    # Package markers are applied in the order the watcher sent them (a bulk change's
    # come first): a marker applied after modules below it would have them read from
    # disk and extracted again.  Extraction goes on meanwhile; a module named before
    # its marker was indexed is extracted again under the lock, from memory.
    stamp = max(c.ts for c in shared)
    markers = any(is_package_file(c.path) for c in shared)
    claims.begin(ctx.client, root, ctx.claimant, key, ctx.lock_timeout)
    if markers:
        claims.hold_layout(ctx.client, root, ctx.claimant, key, stamp, ctx.lock_timeout)

    def ready() -> None:
        waited = claims.await_layout(ctx.client, root, ctx.claimant, stamp, ctx.lock_wait)
        if waited >= 0.5:
            log.info("%s: waited %.1f s for the package markers of earlier batches of %s",
                     detector.name, waited, root)

    try:
        _run_together([(mine, changes, reevaluate_all), *others], ready)
    except BaseException:
        claims.drop(ctx.client, key, ctx.claimant)
        claims.end(ctx.client, root, ctx.claimant, key)
        raise
    finally:
        if markers:
            claims.release_layout(ctx.client, root, ctx.claimant, key)
    claims.done(ctx.client, key, [detector.name, *(b.detector.name for b, _, _ in others)])
    claims.end(ctx.client, root, ctx.claimant, key)  # after done: its tasks find it done
    for other, _, _ in others:
        log.info("%s: applied the %d Python files of a batch of %s for %s too: %s",
                 detector.name, len(shared), root, other.detector.name,
                 _summary(other.outcomes))
    return True


def _run_together(work: list[tuple[_Batch, list[Change], bool]],
                  ready: Callable[[], None] | None = None) -> None:
    """Run each (batch, its changes, reevaluate_all): duplicates found per detector,
    the blobs fetched once, each file decoded and parsed once for every detector that
    extracts it, then (once ``ready()`` returns) each detector's changes applied under
    its own lock."""
    first = work[0][0]
    ctx, root_info = first.ctx, first.root_info
    fresh = [(b, b.fresh(changes, again), again) for b, changes, again in work]
    wanted: dict[str, list[_Batch]] = {}
    order: dict[str, Change] = {}
    for batch, changes, _ in fresh:
        batch.begin(changes)
        for change in changes:
            wanted.setdefault(change.path, []).append(batch)
            order.setdefault(change.path, change)
    fetched = blobs.fetch_many(ctx.client, [
        c.sha256 for c in order.values() if c.sha256 and c.event != "deleted" and not c.skip],
        ctx.max_file_bytes)
    prepared: dict[int, list[tuple]] = {id(b): [] for b, _, _ in fresh}
    for path, change in order.items():
        raw, reason = content(ctx, root_info, change,
                              fetched.get(change.sha256) if change.sha256 else None)
        takers = wanted[path]
        if reason == "superseded":
            for batch in takers:
                log.info("%s: %s changed again before analysis; the newer task covers it",
                         batch.detector.name, batch.key(change))
                batch.outcomes["superseded"] += 1
            continue
        text, reason = decode(path, raw, reason)
        for batch in takers:
            facts = None if text is None else \
                engine.extract(batch.detector, batch.naming, path, text, batch.package)
            prepared[id(batch)].append((change, text, facts, reason))
        if text is not None and len(takers) > 1:
            forget_tree(text)  # every detector that reads it has its facts now
    if ready is not None:
        ready()
    _apply_in_turn([(batch, prepared[id(batch)], again) for batch, _, again in fresh
                    if prepared[id(batch)]])


def _apply_in_turn(work: list[tuple[_Batch, list[tuple], bool]]) -> None:
    """Apply each detector's share, taking first the one whose lock is free: two
    claimants of adjacent batches would otherwise queue for the same detector's lock
    in the same order while the others' locks are free."""
    while work:
        n, lock = _first_free(work) if len(work) > 1 else (0, None)
        batch, prepared, again = work.pop(n)
        batch.apply(prepared, again, lock)


def _first_free(work: list[tuple[_Batch, list[tuple], bool]]):
    """(n, its lock taken) of the first share whose lock is free; (0, None) when every
    one is held: the first is then waited for."""
    for n, (batch, _, _) in enumerate(work):
        lock = root_lock(batch.ctx, batch.detector.name, batch.root)
        if lock.try_acquire():
            return n, lock
    return 0, None


class _Batch:
    """One detector's share of a batch of one root."""

    def __init__(self, ctx: Context, detector: FileDetector, root: str, root_info: dict,
                 outcomes: Counter) -> None:
        self.ctx, self.detector, self.root, self.root_info = ctx, detector, root, root_info
        self.outcomes = outcomes
        self.index = RedisIndex(ctx.client, detector.name, root, keep_journal=True)
        self.package = root_package(root_info, root, ctx.publisher.host)
        self.naming = BatchIndex(self.index)  # the layout files are named by, unlocked

    def key(self, change: Change) -> str:
        return f"{self.detector.name}:{self.root}:{change.path}"

    def fresh(self, changes: list[Change], reevaluate_all: bool) -> list[Change]:
        """The changes still to analyse: a later change of a path supersedes an earlier
        one; those already in the index (delivered again, or applied by the task that
        claimed them) are finished from their journal entry, and those older than
        what the index holds ignored, as the single-file path does."""
        latest: dict[str, Change] = {}
        for change in changes:
            if change.path in latest:
                self.outcomes["superseded"] += 1
            latest[change.path] = change
        changes = list(latest.values())
        stored = self.index.facts_many(c.path for c in changes)
        unfinished = self.index.pending_many(c.path for c in changes)
        fresh = []
        for change in changes:
            facts = stored.get(change.path)
            if engine.sent_later(facts, change.ts):
                log.info("%s: %s was sent before the change already analysed; ignored",
                         self.detector.name, self.key(change))
                self.outcomes["superseded"] += 1
            elif reevaluate_all:
                fresh.append(change)
            elif change.sha256 and facts is not None \
                    and facts.data.get(engine.DIGEST) == change.sha256:
                finished = change.path in unfinished and \
                    finish(self.ctx, self.detector, self.index, change)
                self.outcomes[finished or "duplicate"] += 1
            else:
                fresh.append(change)
        return fresh

    def begin(self, changes: list[Change]) -> None:
        """Read the package layout ``changes`` are named by, before extracting them."""
        self.naming.prefetch(c.path for c in changes)
        # Modules are named by the layout the batch will have once applied (packages
        # it adds or removes included), so that few are extracted again under the lock.
        self.naming.assume({c.path: c.event != "deleted" for c in changes
                            if is_package_file(c.path)})

    def apply(self, prepared: list[tuple], reevaluate_all: bool, lock=None) -> None:
        """Apply the prepared changes under the root's lock (``lock``: taken already)."""
        ctx, detector = self.ctx, self.detector
        records = []
        # What it remembers, reads ahead and queues holds only while the lock is held.
        with lock or root_lock(ctx, detector.name, self.root), self.index.pipelined():
            index = BatchIndex(self.index, remember=True)
            index.read_ahead(change.path for change, *_ in prepared)
            readers = not defer_whole_root(ctx, detector.name, self.root, self.index,
                                           len(prepared))
            index.journal = readers  # else every file is evaluated, whatever changed
            owners: set[str] = set()
            for change, text, facts, reason in prepared:
                applied = apply_one(ctx, detector, index, change, text, facts,
                                    self.package, self.root_info, readers=readers)
                owners |= applied.owners
                records.append((change, reason or applied.skipped, applied.error))
            if reevaluate_all:  # the world the detector judges against changed
                owners.update(self.index.paths())
            # The last batch of a burst joins what the burst deferred: its files may be
            # among them, and are then evaluated once, by the settle that follows.
            judge(ctx, detector, index, self.root, owners, self.package, join=True)
            self.index.settled_many(change.path for change, *_ in prepared)
        pipe = ctx.client.pipeline(transaction=False)
        for change, reason, error in records:
            self.outcomes[record(pipe, self.key(change), reason, error)] += 1
        pipe.execute()


def split(client, obj, send: Callable[[dict], None]) -> int | None:
    """Send each change of the batch ``obj`` again as a single-file task (``send``
    takes its payload), each holding a reference of its own to its blob before the
    batch's are released; returns how many were sent, None when ``obj`` is no batch."""
    try:
        _root, entries = decode_batch(obj)
    except PayloadError:
        return None
    changes = [e for e in entries if isinstance(e, Change)]
    digests = [c.sha256 for c in changes if c.sha256]
    blobs.take_many(client, digests)
    for change in changes:
        send(change.to_json())
    blobs.release_many(client, digests)
    return len(changes)
