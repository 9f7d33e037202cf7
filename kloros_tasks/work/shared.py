"""One parse per Python file for the file detectors of one worker process.

In the default layout one pool process takes the capability, integration and
knowledge batches of a cold scan or a storm in turn (Celery round-robins over the
three queues), so each of a file's three extractions parsed it again: the parse
cache (detectors/_treecache.py) keeps a handful of trees, and a file's second batch
comes a hundred files or more after its first.  Keeping trees that long would cost
about 30 times the source text in memory.

Instead, the first detector of this process that extracts a Python file of a batch
also extracts the facts of the other file detectors the process serves, while the
tree is still at hand; their batches take those facts instead of parsing again.  The
facts are what ``engine.extract`` gives (a pure function of the path, the text and the
package layout): they are kept by (detector, root, path) with the content digest and
root package they came from, and taken only when both match.  They were named by the
first detector's view of the layout; ``engine.apply_change`` checks the names against
the taking detector's layout under the lock and extracts again when they differ, as
it does for any batch's facts extracted outside the lock.

Only a process whose worker has one pool process and consumes two or more file
detectors' queues does this (``configure_worker``); elsewhere the other detectors' batches
go to other processes, and facts extracted for them would be wasted.  The store is
bounded by entries and by the characters of source behind them (facts take about 7
to 9 times their source in memory, against 30 for a tree).  A full store takes no
more: the facts it holds are the next its detectors' batches take (first in, first
out), so a file that finds no room is extracted by each detector itself, as before,
instead of evicting facts about to be taken.  Facts that no batch took within
STALE_AFTER later offers (their file changed again, say) make room.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

from kloros_tasks import names
from kloros_tasks.detectors.base import FileDetector, FileFacts
from kloros_tasks.routing import route

log = logging.getLogger(__name__)

# About two batches of a hundred files for two other detectors.  With 768 entries and
# 1.5 Mi characters the pool process of a 5,000-file burst of small files peaked 6 to
# 8 MiB higher than without the store (docs/performance.md, section 0a).
MAX_ENTRIES = 256
MAX_SOURCE_CHARS = 1024 * 1024
HANDLED = 16384  # (root, path, digest) whose extraction was shared, remembered
STALE_AFTER = 4 * MAX_ENTRIES  # offers after which facts no batch took are dropped

Key = tuple[str, str, str]  # (detector, root, path)


class SharedFacts:
    """Facts extracted for the other detectors ``detectors`` of this process, built
    with ``build(name)``, until their own batches take them."""

    def __init__(self, detectors: Iterable[str], build: Callable[[str], FileDetector], *,
                 max_entries: int = MAX_ENTRIES, max_chars: int = MAX_SOURCE_CHARS) -> None:
        self.detectors = tuple(sorted(set(detectors)))
        self._build = build
        self._built: dict[str, FileDetector] = {}
        self._held: OrderedDict[Key, tuple[str, str, FileFacts, int, int]] = OrderedDict()
        self._serial = 0  # offers kept so far: an entry's age
        self._handled: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._chars = 0
        self.max_entries, self.max_chars = max_entries, max_chars
        self.stats = {"offered": 0, "taken": 0, "missed": 0, "no room": 0, "dropped": 0}

    def take(self, detector: str, root: str, path: str, digest: str | None,
             package: str) -> FileFacts | None:
        """The facts kept for ``detector``'s file, if they came from the same content
        (``digest``) and root package; taken out either way."""
        if not digest or not path.endswith(".py"):
            return None
        found = self._held.pop((detector, root, path), None)
        if found is None:
            self.stats["missed"] += 1
            return None
        held_digest, held_package, facts, size, _serial = found
        self._chars -= size
        if (held_digest, held_package) != (digest, package):
            self.stats["missed"] += 1
            return None
        self.stats["taken"] += 1
        return facts

    def offer(self, done: str, root: str, path: str, digest: str | None, text: str,
              package: str, extract: Callable[[FileDetector], FileFacts]) -> None:
        """After ``done`` extracted ``path`` itself: ``extract`` (a detector -> its
        facts, under the caller's layout) for each other detector of this process the
        file goes to, unless this content's extraction was shared already."""
        if not digest or not path.endswith(".py"):
            return
        seen = (root, path, digest)
        if seen in self._handled:
            return  # the first detector to extract it decided: shared, or no room
        self._handled[seen] = None
        if len(self._handled) > HANDLED:
            self._handled.popitem(last=False)
        others = [n for n in self.detectors if n != done and n in route(path)]
        if not others or not self._room(len(others), len(others) * len(text)):
            self.stats["no room"] += bool(others)
            return
        for name in others:
            try:
                facts = extract(self._detector(name))
            except Exception as exc:  # noqa: BLE001 - that detector's own batch will tell
                log.debug("not sharing %s's facts of %s:%s: %r", name, root, path, exc)
                continue
            self._keep((name, root, path), (digest, package, facts, len(text), self._serial))
            self.stats["offered"] += 1
        self._serial += 1

    def _detector(self, name: str) -> FileDetector:
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def _room(self, entries: int, chars: int) -> bool:
        """Whether ``entries`` more entries of ``chars`` characters fit, once the facts
        no batch took for STALE_AFTER offers are dropped."""
        while self._held:
            key, oldest = next(iter(self._held.items()))
            if self._serial - oldest[4] < STALE_AFTER:
                break
            del self._held[key]
            self._chars -= oldest[3]
            self.stats["dropped"] += 1
        return len(self._held) + entries <= self.max_entries and \
            self._chars + chars <= self.max_chars

    def _keep(self, key: Key, entry: tuple[str, str, FileFacts, int, int]) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            self._chars -= old[3]
        self._held[key] = entry
        self._chars += entry[3]

    def held(self) -> int:
        return len(self._held)

    def summary(self) -> str:
        """What the store holds and has done, for the log."""
        counts = ", ".join(f"{n} {word}" for word, n in self.stats.items())
        return f"{len(self._held)} held, {self._chars // 1024} Ki characters; {counts}"

    def clear(self) -> None:
        self._held.clear()
        self._handled.clear()
        self._chars = 0


_process: SharedFacts | None = None


def configure(detectors: Iterable[str], build: Callable[[str], FileDetector]) -> None:
    """Share extraction between ``detectors`` in this process (and the processes it
    forks from now on); fewer than two turns it off."""
    global _process
    detectors = set(detectors)
    _process = SharedFacts(detectors, build) if len(detectors) > 1 else None


def current() -> SharedFacts | None:
    """This process's store, or None when extraction is not shared here."""
    return _process


def configure_worker(controller, queues: Iterable[str],
                     build: Callable[[str], FileDetector]) -> None:
    """For a Celery worker (``controller``, its WorkController at ``worker_init``)
    consuming ``queues``: share extraction between the file detectors among them when
    its pool has one process, fixed (no autoscaler), else not at all.  Capability facts
    do not depend on the detector's environment, so ``build`` may leave it out."""
    options = getattr(controller, "options", None) or {}
    one_process = not options.get("autoscale") and getattr(controller, "concurrency", None) == 1
    detectors = set(queues) & set(names.FILE_DETECTOR_SUFFIXES)
    configure(detectors if one_process else (), build)
