"""The index as one batch task sees it: package markers read once per batch, and
under the root's lock the other files' facts kept decoded and the batch's own read
ahead in one round trip (batch.py)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.detectors.layout import PACKAGE_FILE, is_package_file
from kloros_tasks.state.index import ReadAhead, RedisIndex


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
        # False while every file of the root is to be evaluated whatever the updates
        # change (the burst defers the whole root): index.update's ``journal``.
        self.journal = True

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
            touched = self.index.update(path, new, ahead=self._ahead, journal=self.journal)
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
