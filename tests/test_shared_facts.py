"""One parse per Python file for the file detectors of one process: facts a detector
extracts for the others are what they would extract themselves, and are taken only
for the same content and root package."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_tasks import names
from kloros_tasks.detectors._treecache import PARSE_CACHE
from kloros_tasks.detectors.capability.detector import CapabilityDetector
from kloros_tasks.detectors.capability.target import Environment
from kloros_tasks.detectors.integration.detector import IntegrationDetector
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.state.memory_index import MemoryIndex
from kloros_tasks.work import engine, shared
from kloros_tasks.work.shared import SharedFacts

PACKAGE = Path(__file__).resolve().parent.parent / "kloros_tasks"
DETECTORS = {names.INTEGRATION: IntegrationDetector(),
             names.CAPABILITY: CapabilityDetector(Environment()),
             names.KNOWLEDGE: KnowledgeDetector()}


def store(**bounds) -> SharedFacts:
    return SharedFacts(DETECTORS, DETECTORS.__getitem__, **bounds)


def offer(shared: SharedFacts, done: str, path: str, text: str, digest: str = "d",
          package: str = "", index=None) -> None:
    index = MemoryIndex() if index is None else index
    shared.offer(done, "root", path, digest, text, package,
                 lambda other: engine.extract(other, index, path, text, package))


def test_facts_shared_over_this_package_are_what_each_detector_extracts_itself():
    files = sorted(PACKAGE.rglob("*.py"))
    index = MemoryIndex()
    for path in files:  # every module indexed, so the layout names them all
        rel = str(path.relative_to(PACKAGE.parent))
        index.update(rel, engine.extract(DETECTORS[names.INTEGRATION], index, rel,
                                         path.read_text()))
    for first in DETECTORS:
        shared = store()
        for path in files:
            rel, text = str(path.relative_to(PACKAGE.parent)), path.read_text()
            PARSE_CACHE.clear()
            offer(shared, first, rel, text, index=index)
            for name, detector in DETECTORS.items():
                if name == first:
                    continue
                taken = shared.take(name, "root", rel, "d", "")
                assert taken == engine.extract(detector, index, rel, text), (first, name, rel)
        assert shared.held() == 0


def test_facts_are_taken_once_and_only_for_the_same_content_and_package():
    shared = store()
    offer(shared, names.CAPABILITY, "pkg/a.py", "import os\n", digest="one")
    assert shared.take(names.KNOWLEDGE, "root", "pkg/a.py", "two", "") is None
    assert shared.take(names.KNOWLEDGE, "root", "pkg/a.py", "one", "") is None  # gone
    assert shared.take(names.INTEGRATION, "root", "pkg/a.py", "one", "outer") is None
    assert shared.take(names.CAPABILITY, "root", "pkg/a.py", "one", "") is None  # the offerer
    offer(shared, names.CAPABILITY, "pkg/b.py", "import os\n", digest="one")
    assert shared.take(names.INTEGRATION, "other", "pkg/b.py", "one", "") is None  # other root
    assert shared.take(names.INTEGRATION, "root", "pkg/b.py", "one", "") is not None


def test_only_python_files_with_a_digest_are_shared():
    shared = store()
    offer(shared, names.CAPABILITY, "docs/a.md", "# A\n")
    offer(shared, names.CAPABILITY, "b.py", "x = 1\n", digest="")
    assert shared.held() == 0
    assert shared.take(names.KNOWLEDGE, "root", "docs/a.md", "d", "") is None


def test_a_full_store_takes_no_more_and_keeps_what_is_about_to_be_taken():
    shared = store(max_entries=4, max_chars=10_000)
    for n in range(3):  # two entries each: integration's and knowledge's
        offer(shared, names.CAPABILITY, f"m{n}.py", f"x = {n}\n")
    assert shared.held() == 4 and shared.stats["no room"] == 1
    assert shared.summary().startswith("4 held, 0 Ki characters; 4 offered, 0 taken")
    assert shared.take(names.INTEGRATION, "root", "m0.py", "d", "") is not None
    assert shared.take(names.INTEGRATION, "root", "m2.py", "d", "") is None
    # m2.py found no room: the others extract it themselves, and offer nothing again.
    offer(shared, names.INTEGRATION, "m2.py", "x = 2\n")
    assert shared.held() == 3 and shared.stats["offered"] == 4
    small = store(max_entries=100, max_chars=30)
    offer(small, names.CAPABILITY, "a.py", "a = 1\n" * 2)  # 12 characters, twice
    offer(small, names.CAPABILITY, "big.py", "b = 1\n" * 2)  # 24 more: over 30
    assert small.held() == 2 and small.stats["no room"] == 1


def test_facts_no_batch_took_make_room_once_they_are_stale(monkeypatch):
    monkeypatch.setattr(shared, "STALE_AFTER", 2)
    kept = store(max_entries=4, max_chars=10_000)
    offer(kept, names.CAPABILITY, "old.py", "x = 0\n")  # never taken
    offer(kept, names.CAPABILITY, "m1.py", "x = 1\n")
    assert kept.take(names.INTEGRATION, "root", "m1.py", "d", "") is not None
    offer(kept, names.CAPABILITY, "m2.py", "x = 2\n")  # two offers after old.py's
    assert kept.stats["dropped"] == 2 and kept.stats["no room"] == 0
    assert kept.take(names.KNOWLEDGE, "root", "old.py", "d", "") is None
    assert kept.take(names.INTEGRATION, "root", "m2.py", "d", "") is not None


def test_content_shared_once_is_not_extracted_again_for_the_others():
    shared = store()
    offer(shared, names.CAPABILITY, "a.py", "x = 1\n")
    assert shared.take(names.INTEGRATION, "root", "a.py", "d", "") is not None
    # knowledge's entry fell out; knowledge extracts it itself and offers it: nothing
    # is extracted for the two detectors that are done with it.
    assert shared.take(names.KNOWLEDGE, "root", "a.py", "other", "") is None
    offer(shared, names.KNOWLEDGE, "a.py", "x = 1\n")
    assert shared.held() == 0 and shared.stats["offered"] == 2


def test_a_detector_that_raises_is_left_to_its_own_batch():
    def broken(name):
        if name == names.KNOWLEDGE:
            raise RuntimeError("boom")
        return DETECTORS[name]

    shared = SharedFacts(DETECTORS, broken)
    offer(shared, names.CAPABILITY, "a.py", "x = 1\n")
    assert shared.take(names.KNOWLEDGE, "root", "a.py", "d", "") is None
    assert shared.take(names.INTEGRATION, "root", "a.py", "d", "") is not None


class _NoEnvironment:
    def __getattr__(self, name):
        raise AssertionError(f"extract read the environment's {name}")


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py")
                                        if "capability" in p.parts)[:12], ids=str)
def test_capability_facts_do_not_depend_on_the_environment(path):
    """Why a worker may extract capability facts with a detector built without one."""
    text = path.read_text()
    assert CapabilityDetector(_NoEnvironment()).extract(path.name, text) == \
        CapabilityDetector(Environment()).extract(path.name, text)


class _Controller:
    def __init__(self, concurrency, autoscale=None):
        self.concurrency, self.options = concurrency, {"autoscale": autoscale}


@pytest.mark.parametrize(("controller", "queues", "shared_by"), [
    (_Controller(1), ["capability", "integration", "knowledge", "exploration"],
     ("capability", "integration", "knowledge")),
    (_Controller(1), ["integration", "knowledge"], ("integration", "knowledge")),
    (_Controller(1), ["knowledge", "exploration"], None),  # one file detector
    (_Controller(2), ["capability", "integration", "knowledge"], None),  # two processes
    (_Controller(1, [2, 1]), ["capability", "integration", "knowledge"], None),  # autoscaled
])
def test_a_worker_shares_only_with_one_pool_process_on_two_file_detectors_or_more(
        controller, queues, shared_by):
    try:
        shared.configure_worker(controller, queues, DETECTORS.__getitem__)
        found = shared.current()
        assert (found.detectors if found is not None else None) == shared_by
    finally:
        shared.configure((), DETECTORS.__getitem__)
