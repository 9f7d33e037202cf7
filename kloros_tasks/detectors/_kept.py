"""A view whose lookups are kept for many evaluations (a detector's ``evaluate_many``):
an answer read once, by any of them or by a read-ahead for all of them, is not asked
of the index again.  Meant for evaluations over an index that does not change
meanwhile (the caller holds the root's lock)."""

from __future__ import annotations

from collections.abc import Iterable

from kloros_tasks.detectors.base import Holders, IndexView


class Kept:
    """``view``, with the answers of its ``exists_many`` and ``who_many`` kept: a value
    asked again, by any of the evaluations, is answered from what was read."""

    def __init__(self, view: IndexView) -> None:
        self._view = view
        self._holders: dict[tuple[str, str], frozenset[str]] = {}
        self._held: dict[tuple[str, str], bool] = {}
        self._first: dict[tuple[str, str, int], Holders] = {}

    def __getattr__(self, name: str):
        return getattr(self._view, name)

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
