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
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from kloros_tasks.detectors._treecache import forget_tree
from kloros_tasks.detectors.base import FileDetector, FileFacts
from kloros_tasks.detectors.layout import PACKAGE_FILE, is_package_file
from kloros_tasks.state.index import ReadAhead, RedisIndex
from kloros_tasks.work import blobs, engine
from kloros_tasks.work.analysis import (
    Context,
    apply_one,
    content,
    finish,
    judge,
    prepare,
    record,
    registered_root,
    root_package,
)
from kloros_tasks.work.deferral import defer_whole_root, root_lock
from kloros_tasks.work.payload import Change, PayloadError, decoded, parse_batch

log = logging.getLogger(__name__)


class BatchIndex:
    """A RedisIndex whose ``__init__.py`` facts (the package layout: naming a module
    asks for those of every directory above it) are read once per batch.  A file the
    batch updates is read again.

    With ``remember`` (only while the root's lock is held, so that the index changes
    only through this object) the facts of other files are kept too, decoded, up to
    REMEMBERED of them: the evaluations and ``affected`` of a batch's hundred files
    read the same few hundred files' facts again and again (Django: 8,954 reads of
    1,823 files).  ``read_ahead`` (under the lock too) reads what the updates of the
    batch's files read first, for all of them at once (index.ReadAhead)."""

    def __init__(self, index: RedisIndex, *, remember: bool = False) -> None:
        self.index = index
        self._inits: dict[str, FileFacts | None] = {}
        # Package markers this object updated: their facts are read again, but whether
        # they are indexed is known (a batch's later modules are named by them).
        self._updated: dict[str, bool] = {}
        self._remember = remember
        self._facts: OrderedDict[str, FileFacts | None] = OrderedDict()
        self._ahead: ReadAhead | None = None

    def __getattr__(self, name: str):
        return getattr(self.index, name)

    def prefetch(self, paths: Iterable[str]) -> None:
        """Read the ``__init__.py`` above each path, in one round trip."""
        self._inits.update(self.index.facts_many(self._unread_inits(paths)))

    def read_ahead(self, paths: Iterable[str]) -> None:
        """``prefetch``, and what updating each path reads first, in one round trip.
        Only while the root's lock is held: the updates then take what was read, and
        what each update leaves, instead of reading Redis."""
        paths = list(paths)
        wanted = self._unread_inits(paths)
        self._ahead = self.index.read_ahead([*paths, *wanted])
        self._inits.update((init, self._ahead.facts(init)) for init in wanted)

    def _unread_inits(self, paths: Iterable[str]) -> list[str]:
        """The ``__init__.py`` above each path not read yet."""
        return sorted({init for path in paths for init in _inits_above(path)}
                      - set(self._inits))

    def assume(self, present: dict[str, bool]) -> None:
        """Read each ``__init__.py`` given as indexed (True) or not, for naming only."""
        for path, there in present.items():
            self._inits[path] = _ASSUMED if there else None

    def present_many(self, paths: Iterable[str]) -> set[str]:
        """The indexed paths; an ``__init__.py`` read (or assumed) before is answered
        from that, so naming a module asks Redis nothing the batch already knows, and
        modules are named by the same layout as ``facts`` gives."""
        paths = list(dict.fromkeys(paths))
        known = {p: self._updated[p] if p in self._updated else self._inits[p] is not None
                 for p in paths if is_package_file(p)
                 and (p in self._updated or p in self._inits)}
        asked = [p for p in paths if p not in known]
        held = self.index.present_many(asked) if asked else set()
        return held | {p for p, there in known.items() if there}

    def facts(self, path: str) -> FileFacts | None:
        return self.facts_many([path])[path]

    def facts_many(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        paths = list(dict.fromkeys(paths))
        out = {p: self._known(p) for p in paths}
        missing = [p for p, f in out.items() if f is _UNKNOWN]
        if missing:
            read = self.index.facts_many(missing)
            out.update(read)
            for path, facts in read.items():
                self._keep(path, facts)
        return out

    def _known(self, path: str):
        if is_package_file(path):
            return self._inits.get(path, _UNKNOWN)
        if path in self._facts:
            self._facts.move_to_end(path)
            return self._facts[path]
        return _UNKNOWN

    def _keep(self, path: str, facts: FileFacts | None) -> None:
        if is_package_file(path):
            self._inits[path] = facts
        elif self._remember:
            self._facts[path] = facts
            if len(self._facts) > REMEMBERED:
                self._facts.popitem(last=False)

    def update(self, path: str, new: FileFacts | None):
        self._inits.pop(path, None)
        self._facts.pop(path, None)
        self._updated.pop(path, None)
        if self._ahead is None:
            touched = self.index.update(path, new)
        else:
            touched = self.index.update(path, new, ahead=self._ahead)
        if is_package_file(path):
            self._updated[path] = new is not None
        return touched


REMEMBERED = 256  # other files' facts a batch keeps decoded (Django: 12 MiB at most)
_UNKNOWN = object()
_ASSUMED = FileFacts()  # an ``__init__.py`` taken as indexed before it is


def _inits_above(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return [PACKAGE_FILE] + [f"{'/'.join(parts[:i])}/{PACKAGE_FILE}"
                             for i in range(1, len(parts) + 1)]


def decode_batch(obj) -> tuple[str, list[Change | PayloadError]]:
    return parse_batch(decoded(obj, "batch payload"))


def _summary(outcomes: Counter) -> str:
    return ", ".join(f"{n} {word}" for word, n in sorted(outcomes.items())) or "empty"


def handle_batch(ctx: Context, detector: FileDetector, obj, *,
                 reevaluate_all: bool = False) -> str:
    """Analyse a batch of changes; returns the count of each outcome ("3 analysed,
    1 refused"), or "refused" for a malformed batch.  Redis errors propagate (the
    task layer retries them) and leave the blobs held for the retry."""
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
    elif changes:
        _Batch(ctx, detector, root, root_info, outcomes).run(changes, reevaluate_all)
    blobs.release_many(ctx.client, [c.sha256 for c in changes if c.sha256])
    return _summary(outcomes)


class _Batch:
    def __init__(self, ctx: Context, detector: FileDetector, root: str, root_info: dict,
                 outcomes: Counter) -> None:
        self.ctx, self.detector, self.root, self.root_info = ctx, detector, root, root_info
        self.outcomes = outcomes
        self.index = RedisIndex(ctx.client, detector.name, root, keep_journal=True)
        self.package = root_package(root_info, root, ctx.publisher.host)
        self.shared_taken = 0  # files whose facts another detector extracted (shared.py)

    def key(self, change: Change) -> str:
        return f"{self.detector.name}:{self.root}:{change.path}"

    def run(self, changes: list[Change], reevaluate_all: bool) -> None:
        latest: dict[str, Change] = {}
        for change in changes:  # a later change of a path supersedes an earlier one
            if change.path in latest:
                self.outcomes["superseded"] += 1
            latest[change.path] = change
        fresh = self._not_duplicates(list(latest.values()), reevaluate_all)
        prepared = self._prepare(fresh)
        if self.shared_taken:
            log.info("%s: %d files of a batch of %s took the facts another detector"
                     " extracted (%s)", self.detector.name, self.shared_taken, self.root,
                     self.ctx.shared.summary())
        if prepared:
            self._apply(prepared, reevaluate_all)

    def _not_duplicates(self, changes: list[Change], reevaluate_all: bool) -> list[Change]:
        """The changes not yet in the index; the others (delivered again) are finished
        from their journal entry, and those older than what the index holds ignored,
        as the single-file path does."""
        stored = self.index.facts_many(c.path for c in changes)
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
                self.outcomes[finish(self.ctx, self.detector, self.index, change)
                              or "duplicate"] += 1
            else:
                fresh.append(change)
        return fresh

    def _prepare(self, changes: list[Change]) -> list[tuple]:
        """Fetch, decode and extract, outside the lock."""
        fetched = blobs.fetch_many(self.ctx.client, [
            c.sha256 for c in changes if c.sha256 and c.event != "deleted" and not c.skip],
            self.ctx.max_file_bytes)
        index = BatchIndex(self.index)
        index.prefetch(c.path for c in changes)
        # Modules are named by the layout the batch will have once applied (packages
        # it adds or removes included), so that few are extracted again under the lock.
        index.assume({c.path: c.event != "deleted" for c in changes if is_package_file(c.path)})
        prepared = []
        for change in changes:
            raw, reason = content(self.ctx, self.root_info, change,
                                  fetched.get(change.sha256) if change.sha256 else None)
            if reason == "superseded":
                log.info("%s: %s changed again before analysis; the newer task covers it",
                         self.detector.name, self.key(change))
                self.outcomes["superseded"] += 1
                continue
            prepared.append((change, *self._extract(index, change, raw, reason)))
        return prepared

    def _extract(self, index: BatchIndex, change: Change, raw: bytes | None,
                 reason: str | None) -> tuple:
        """``prepare``'s (text, facts, reason), the facts taken from what another
        detector of this process extracted for this one when it has (shared.py), and
        else extracted here, and then for the others too."""
        shared, detector = self.ctx.shared, self.detector
        if shared is None or raw is None:
            return prepare(detector, index, change.path, raw, reason, self.package)
        facts = shared.take(detector.name, self.root, change.path, change.sha256, self.package)
        if facts is not None:  # the same bytes (digest), so they decoded there
            self.shared_taken += 1
            return engine.decode_source(change.path, raw), facts, reason
        text, facts, reason = prepare(detector, index, change.path, raw, reason, self.package)
        if text is not None:
            shared.offer(detector.name, self.root, change.path, change.sha256, text,
                         self.package, lambda other: engine.extract(
                             other, index, change.path, text, self.package))
            # Every detector of this process that reads the file has its facts now, or
            # will parse it a batch or more later, when the few trees kept are others.
            forget_tree(text)
        return text, facts, reason

    def _apply(self, prepared: list[tuple], reevaluate_all: bool) -> None:
        ctx, detector = self.ctx, self.detector
        records = []
        with root_lock(ctx, detector.name, self.root):
            # What it remembers and reads ahead holds only while the lock is held.
            index = BatchIndex(self.index, remember=True)
            index.read_ahead(change.path for change, *_ in prepared)
            readers = not defer_whole_root(ctx, detector.name, self.root, self.index,
                                           len(prepared))
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
