"""The path order ``index.RedisIndex`` keeps of some relations' holders.

For the relations a detector asks ``first_many`` of (``detectors.base.ORDERED``), each
value's holder paths are also members of one sorted set (``names.index_order``, every
score 0, so in byte order), changed by ORDER_SCRIPT in the same MULTI/EXEC as the
update's last slice and read by FIRST_SCRIPT: the first holders of a value cost a
range of its set, however many files hold it.  An index stored before these sets
existed is not marked ``ordered`` in its meta hash; ``first_many`` then answers from
the holder lists, at their cost, until the index is rebuilt (docs/operations.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import redis

from kloros_tasks import names
from kloros_tasks.detectors.base import ORDERED, Holders, path_order
from kloros_tasks.state.index_scripts import FIRST_SCRIPT, ORDER_SCRIPT, UPDATE_SCRIPT

UPDATE_SHA = hashlib.sha1(UPDATE_SCRIPT.encode()).hexdigest()
LOOKUP_CHUNK = 1000  # values per FIRST_SCRIPT call (index.LOOKUP_CHUNK)


class PathOrder:
    """The sorted sets of one detector's index on one root."""

    def __init__(self, client, detector: str, root: str, facts_key: str, meta_key: str) -> None:
        self.r = client
        self.keeps = bool(ORDERED.get(detector))
        self._facts_key, self._meta = facts_key, meta_key
        self._prefix = names.index_order(detector, root, "")
        self._first = client.register_script(FIRST_SCRIPT)

    @staticmethod
    def ops(removed: list[bytes], added: list[bytes]) -> list[bytes]:
        """Sign and field, flat, for ORDER_SCRIPT: the ordered fields a change removes
        ``path`` from and adds it to."""
        return [x for f in removed for x in (b"-", f)] + [x for f in added for x in (b"+", f)]

    def wanted(self, ops: list, empty: bool) -> bool:
        """Whether the update's last slice goes with ORDER_SCRIPT: it changes ordered
        fields (``ops``, or the changes ``apply`` takes), or the index held no file
        when the update read it (``empty``: a new index is marked ``ordered``)."""
        return bool(ops) or (empty and self.keeps)

    def apply(self, keys: list, args: list, changes: list[tuple[bytes, bytes, list[bytes]]],
              *, empty: bool):
        """The update script's call (``keys``, ``args``: the last slice of one file's
        update) with ORDER_SCRIPT in one MULTI/EXEC, one round trip (``add``); what the
        update script answered (0: not applied)."""
        pipe = self.r.pipeline(transaction=True)
        at = self.add(pipe, keys, args, changes, empty=empty)
        try:
            replies = pipe.execute()
        except redis.exceptions.NoScriptError:
            # The update did not run, so ORDER_SCRIPT found the facts not stored and
            # changed nothing (or they were already, and it set what a retry sets
            # again).  Load the update script and let the caller try again.
            self.r.script_load(UPDATE_SCRIPT)
            return 0
        return replies[at]

    def add(self, pipe, keys: list, args: list, changes: list[tuple[bytes, bytes, list[bytes]]],
            *, empty: bool) -> int:
        """Add to ``pipe`` (a MULTI/EXEC) the update script's call, "mark" before it
        when the index was ``empty``, "apply" after it for each (path, value stored,
        ``ops``) of ``changes``; returns the position of the update's reply.
        ORDER_SCRIPT is sent whole (EVAL): if Redis had lost it, the index would be
        updated and its sets not."""
        if empty and self.keeps:
            pipe.eval(ORDER_SCRIPT, 2, self._facts_key, self._meta, "mark")
        pipe.evalsha(UPDATE_SHA, len(keys), *keys, *args)
        at = len(pipe) - 1
        per_path: list = []
        for path, value, ops in changes:
            stored = hashlib.sha1(value).hexdigest() if value else ""
            per_path += [path, stored, len(ops) // 2, *ops]
        if per_path:
            pipe.eval(ORDER_SCRIPT, 2, self._facts_key, self._meta, "apply", self._prefix,
                      *per_path)
        return at

    def first(self, fields: Mapping[str, bytes], n: int) -> dict[str, Holders] | None:
        """The first ``n`` holders of each value (value -> its field) and their count;
        None when the index is not marked ``ordered``."""
        values, out = list(fields), {}
        for start in range(0, len(values), LOOKUP_CHUNK):
            part = values[start:start + LOOKUP_CHUNK]
            found = self._first(keys=[self._meta],
                                args=[max(n, 0), self._prefix, *(fields[v] for v in part)])
            if not isinstance(found, list):
                return None
            for value, (count, *first) in zip(part, found, strict=True):
                out[value] = Holders(tuple(_text(p) for p in first), int(count))
        return out


def first_of(holders: Mapping[str, frozenset[str]], n: int) -> dict[str, Holders]:
    """``first_many``'s answers computed from complete holder sets."""
    return {v: Holders(tuple(sorted(paths, key=path_order)[:max(n, 0)]), len(paths))
            for v, paths in holders.items()}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
