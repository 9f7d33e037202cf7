"""The two-phase shape every file detector follows.

Phase 1, ``extract(path, text) -> FileFacts``: parse one file.  Facts are
*relations* (sets of strings that the index inverts: "which files define X?") and
*data* (anything JSON the detector needs later about this file alone).

Phase 2, ``affected(path, touched, view)`` and ``evaluate(path, view)``: after the
index stored the new facts, decide which files' questions may have changed and
compute them, reading other files' facts only through an ``IndexView``.  A change
therefore costs the changed file plus the keys it touched, never a tree re-parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from kloros_tasks import names
from kloros_tasks.questions import Question

# A relation of content digests (``key#digest``): the index diffs its pairs and reports
# them as touched, but no rule looks one up by value, so it is stored, not inverted.
SIGNATURE = "sig"
NOT_INDEXED: Mapping[str, frozenset[str]] = {names.INTEGRATION: frozenset({SIGNATURE})}
# Relations a rule asks for the first holders of (``first_many``): the index keeps their
# holders in path order too, so the first of thousands costs no more than the first of
# two.  CapabilityDiscovery's ``needs``: the first importer of a missing name owns its
# question.
ORDERED: Mapping[str, frozenset[str]] = {names.CAPABILITY: frozenset({"needs"})}


class Holders(NamedTuple):
    """The first holders of a value in path order (at most the number asked for), and
    how many files hold it in all."""

    first: tuple[str, ...]
    count: int


def path_order(path: str) -> bytes:
    """The sort key of path order: the path's UTF-8 bytes (undecodable bytes kept as
    they are), which is code point order for every path that is valid UTF-8."""
    return path.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class FileFacts:
    """What one file says, as extracted by one detector.

    ``error`` is set when the file could not be parsed (a syntax error, say): the
    index then keeps the file's previous facts so that a half-typed save does not
    open and resolve questions all over the tree.
    """

    relations: Mapping[str, frozenset[str]] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "relations": {k: sorted(v) for k, v in sorted(self.relations.items()) if v},
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FileFacts:
        rel = {k: frozenset(v) for k, v in obj.get("relations", {}).items()}
        return cls(relations=rel, data=obj.get("data", {}))


class IndexView(Protocol):
    """Read-only view of one detector's cross-file index on one root."""

    def facts(self, path: str) -> FileFacts | None:
        """The stored facts of ``path``, or None if the file is not indexed."""

    def who(self, relation: str, value: str) -> frozenset[str]:
        """Paths whose facts hold ``value`` under ``relation``."""

    def who_many(self, relation: str, values: Iterable[str]) -> dict[str, frozenset[str]]:
        """``who`` for several values in one round trip."""

    def exists_many(self, relation: str, values: Iterable[str]) -> set[str]:
        """The values that some file holds under ``relation``."""

    def count_many(self, relation: str, values: Iterable[str]) -> dict[str, int]:
        """How many files hold each value, without listing them (a directory or a
        common attribute name can have thousands of holders)."""

    def first_many(self, relation: str, values: Iterable[str], n: int) -> dict[str, Holders]:
        """The first ``n`` holders of each value in ``path_order``, and how many there
        are, without listing the rest; only for the detector's ``ORDERED`` relations."""


Touched = frozenset[tuple[str, str]]  # (relation, value) pairs added or removed


class FileDetector(Protocol):
    name: str

    def extract(self, path: str, text: str) -> FileFacts: ...

    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Other files whose questions may change because ``path``'s facts changed."""

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now (empty when it is not indexed)."""


def who_each(view: IndexView, asks: Mapping[str, Iterable[str]]
             ) -> dict[tuple[str, str], frozenset[str]]:
    """``who`` of every (relation, value) that ``asks`` (relation -> values) names: in
    one round trip through the view's optional ``who_pairs(pairs)``, else one
    ``who_many`` per relation."""
    asks = {r: list(dict.fromkeys(vs)) for r, vs in asks.items()}
    asks = {r: vs for r, vs in asks.items() if vs}
    if not asks:
        return {}
    pairs = getattr(view, "who_pairs", None)
    if pairs is not None:
        return pairs([(r, v) for r, vs in asks.items() for v in vs])
    return {(r, v): who for r, vs in asks.items() for v, who in view.who_many(r, vs).items()}


def held_by_others(view: IndexView, relation: str, values: Iterable[str],
                   path: str) -> set[str]:
    """The values some file other than ``path`` holds under ``relation``.

    Counted first, so a value with thousands of holders costs one number, not a list
    of thousands of paths; only a value with a single holder is looked at closer."""
    values = list(values)
    counts = view.count_many(relation, values) if values else {}
    single = [v for v, n in counts.items() if n == 1]
    alone = view.who_many(relation, single) if single else {}
    return {v for v, n in counts.items() if n > 1 or (n == 1 and alone[v] != {path})}
