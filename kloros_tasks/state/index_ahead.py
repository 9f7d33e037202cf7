"""What a batch of updates of one index knows ahead of Redis (index.RedisIndex).

``ReadAhead``: each file's stored facts and journal entry, and the meta hash's level,
split, entries and ids, read once for many files; each update leaves there what it
stored and the meta it knows of, so the next needs no read.

``Queued``: one update computed but not sent yet.  Under ``RedisIndex.pipelined`` the
updates of a batch queue and the queue goes to Redis in one MULTI/EXEC, as one call of
the batch script (index_scripts.BATCH_SCRIPT), instead of one round trip per file whose
reply the next update waits for, and one script call per file.  A queued update does
not name the bucket addressing it was computed with: the script reads it and splits
buckets itself, so the only thing a queued update takes on trust from the one before
is the id count, which each claim of a new file checks.  An update the script found
changed is made again after the queue is sent, one at a time (index.RedisIndex.flush).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kloros_tasks.detectors.base import FileFacts, Touched
from kloros_tasks.state.index_forms import _bytes, facts_json


def facts_of(raw: bytes | None) -> FileFacts | None:
    return None if raw is None else FileFacts.from_json(json.loads(facts_json(raw)))


class ReadAhead:
    """What a run of updates of one index reads first, read once for many files
    (``RedisIndex.read_ahead``): each file's stored facts and journal entry, and the
    meta hash's level, split, entries and ids.  Each update that succeeds leaves here
    what it stored and the meta its last script call answered, so the next needs no
    read; a queued update leaves the facts it will store and the id count it will leave,
    the rest of the meta being known again once the queue is sent (``exact``).
    Meant for a caller holding the root's lock, under which nothing else writes the
    index, but only a hint: every script call checks the facts, the journal entry and
    the id count it was computed from (and, when not queued, the addressing), and an
    update that finds them changed forgets what this holds of them and reads them
    again."""

    def __init__(self, stored: dict[bytes, bytes | None], journal: dict[bytes, bytes | None],
                 meta: list[int]) -> None:
        self._stored, self._journal = stored, journal
        self._meta: list[int] | None = meta
        self.exact = True  # the meta's level, split and entries are Redis's own

    def facts(self, path: str) -> FileFacts | None:
        """The facts read of ``path`` (None if not indexed); KeyError if it was not read."""
        return facts_of(self._stored[_bytes(path)])

    def read(self, key: bytes) -> tuple[bytes | None, bytes | None, list[int]] | None:
        """(stored facts, journal entry, meta) of ``key``, or None when not held."""
        if self._meta is None or key not in self._stored:
            return None
        return self._stored[key], self._journal[key], list(self._meta)

    def wrote(self, key: bytes, stored: bytes | None, journal: bytes | None,
              meta: list[int], *, exact: bool = True) -> None:
        self._stored[key], self._journal[key], self._meta = stored, journal, meta
        self.exact = exact

    def sent(self, meta: list[int] | None) -> None:
        """The queue was sent: ``meta`` is what its last call answered (None: unknown)."""
        self._meta, self.exact = meta, meta is not None

    def forget(self, key: bytes) -> None:
        """Read ``key`` and the meta again: what was held of them proved stale."""
        self._stored.pop(key, None)
        self._journal.pop(key, None)
        self._meta = None


@dataclass
class Queued:
    """One update, queued (``RedisIndex.pipelined``): what the caller was told it
    changed (``touched``), and its part of the batch script's call."""

    path: str
    new: FileFacts | None
    touched: Touched
    ahead: ReadAhead  # what the update was computed from, and leaves what it stores in
    args: list  # the batch script's nine arguments of one file (index_scripts.py)
    order: list  # PathOrder's (path, value, ops) changes of the call, [] for none
    empty: bool  # the index held no file: marked ``ordered`` first
    ops: int


def calls(queued: list[Queued]) -> list[list[Queued]]:
    """``queued`` in order, cut so that no path is given twice to one call of the batch
    script: the second update of a path checks what the first one stores."""
    out: list[list[Queued]] = [[]]
    paths: set[bytes] = set()
    for q in queued:
        if q.args[0] in paths:
            out.append([])
            paths = set()
        out[-1].append(q)
        paths.add(q.args[0])
    return out
