"""A view whose lookups are kept for many evaluations (a detector's ``evaluate_many``):
an answer read once, by any of them or by a read-ahead for all of them, is not asked
of the index again.  Meant for evaluations over an index that does not change
meanwhile (the caller holds the root's lock).  A detector keeps objects of its own
beside the answers (``shared``: integration's resolver), so that a caller evaluating
several batches under one hold of the lock (a settle) pays each lookup once."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable

from kloros_tasks.detectors.base import FileFacts, Holders, IndexView

# Facts of files other than the owners kept through one evaluation batch: a policy
# file or a common base module is read by nearly every owner.
OTHERS_KEPT = 256


class Kept:
    """``view``, with the answers of its lookups kept: a value asked again, by any of
    the evaluations, is answered from what was read.  Files' facts are kept for the
    owners read with ``owners`` and for the last OTHERS_KEPT other files read."""

    def __init__(self, view: IndexView) -> None:
        self._view = view
        self._owners: dict[str, FileFacts | None] = {}
        self._others: OrderedDict[str, FileFacts | None] = OrderedDict()
        self._holders: dict[tuple[str, str], frozenset[str]] = {}
        self._held: dict[tuple[str, str], bool] = {}
        self._first: dict[tuple[str, str, int], Holders] = {}
        self._shared: dict[str, object] = {}

    def __getattr__(self, name: str):
        return getattr(self._view, name)

    def owners(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        """The facts of the files evaluated, those not read yet read together, kept
        for the whole batch."""
        paths = list(dict.fromkeys(paths))
        unread = [p for p in paths if p not in self._owners]
        if unread:
            many = getattr(self._view, "facts_many", None)
            self._owners.update(many(unread) if many is not None
                                else {p: self._view.facts(p) for p in unread})
        return {p: self._owners[p] for p in paths}

    def forget_owners(self) -> None:
        """Drop the facts of the owners read so far (a batch is evaluated): the answers
        of lookups stay, the files' whole facts go."""
        self._owners.clear()

    def shared(self, name: str, make):
        """The object ``make(view)`` made the first time ``name`` was asked for, kept
        for every evaluation this view serves.  It is given a weak proxy of this view:
        holding the view itself would make a cycle that only the garbage collector
        frees, so every answer kept here would outlive the view until a full
        collection (15 MiB more at the peak of a 5,000-file burst)."""
        found = self._shared.get(name)
        if found is None:
            found = self._shared[name] = make(weakref.proxy(self))
        return found

    def facts(self, path: str) -> FileFacts | None:
        if path in self._owners:
            return self._owners[path]
        if path in self._others:
            self._others.move_to_end(path)
            return self._others[path]
        found = self._others[path] = self._view.facts(path)
        if len(self._others) > OTHERS_KEPT:
            self._others.popitem(last=False)
        return found

    def facts_many(self, paths: Iterable[str]) -> dict[str, FileFacts | None]:
        """``facts`` of each path, those not kept read together."""
        paths = list(dict.fromkeys(paths))
        out = {p: self._owners[p] for p in paths if p in self._owners}
        out.update((p, self._others[p]) for p in paths if p not in out and p in self._others)
        unread = [p for p in paths if p not in out]
        many = getattr(self._view, "facts_many", None)
        if unread and many is not None:
            out.update(many(unread))
            self._others.update((p, out[p]) for p in unread)
            while len(self._others) > OTHERS_KEPT:
                self._others.popitem(last=False)
        return {p: out[p] if p in out else self.facts(p) for p in paths}

    def who(self, relation: str, value: str) -> frozenset[str]:
        return self.who_many(relation, [value])[value]

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        values = list(dict.fromkeys(values))
        missing = [v for v in values if (relation, v) not in self._holders]
        if missing:
            for value, paths in self._view.who_many(relation, missing).items():
                self._holders[(relation, value)] = frozenset(paths)
        return {v: self._holders[(relation, v)] for v in values}

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        values = list(dict.fromkeys(values))
        missing = [v for v in values
                   if (relation, v) not in self._held and (relation, v) not in self._holders]
        if missing:
            held = self._view.exists_many(relation, missing)
            self._held.update(((relation, v), v in held) for v in missing)
        return {v for v in values if self._held.get((relation, v))
                or self._holders.get((relation, v))}

    def first_many(self, relation: str, values: Iterable[str], n: int) -> dict[str, Holders]:
        values = list(dict.fromkeys(values))
        missing = [v for v in values if (relation, v, n) not in self._first]
        if missing:
            for value, holders in self._view.first_many(relation, missing, n).items():
                self._first[(relation, value, n)] = holders
        return {v: self._first[(relation, v, n)] for v in values}


def shared(view: IndexView, name: str, make):
    """``view.shared(name, make)`` for a Kept view; a new ``make(view)`` for another."""
    return view.shared(name, make) if isinstance(view, Kept) else make(view)


def kept(view: IndexView) -> Kept:
    """``view`` itself when it keeps its answers already (the engine's), else kept."""
    return view if isinstance(view, Kept) else Kept(view)
