"""detectors/_kept.py: the view many evaluations share (``evaluate_many``) reads each
answer once, whichever way it is asked, and answers as the index does."""

from __future__ import annotations

from counting import CountingIndex

from kloros_tasks.detectors._kept import OTHERS_KEPT, Kept
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.state.index import MemoryIndex


def index_of(count: int) -> CountingIndex:
    index = CountingIndex()
    for i in range(count):
        index.update(f"d/{i:03d}.md", FileFacts(relations={"links": frozenset({"a", f"x{i}"})}))
    index.lookups = 0
    return index


def test_each_answer_is_read_once_and_is_the_indexs():
    index = index_of(5)
    kept = Kept(index)
    assert kept.owners(["d/000.md", "d/001.md"]) == index.facts_many(["d/000.md", "d/001.md"])
    index.lookups = 0
    assert kept.facts_many(["d/000.md", "d/002.md", "d/003.md"]) == index.facts_many(
        ["d/000.md", "d/002.md", "d/003.md"])
    assert index.lookups == 2  # the test's own read, and one for the two not kept
    index.lookups = 0
    assert kept.facts("d/002.md") == MemoryIndex.facts(index, "d/002.md")
    assert kept.who("links", "a") == MemoryIndex.who(index, "links", "a")
    assert kept.who_many("links", ["a", "x1"])["x1"] == {"d/001.md"}
    assert kept.exists_many("links", ["a", "x1", "none"]) == {"a", "x1"}
    assert kept.exists_many("links", ["x4"]) == {"x4"}
    assert kept.exists_many("links", ["x4", "a"]) == {"x4", "a"}
    assert index.lookups == 4  # holders of "a", of "x1"; "none" exists?; "x4" exists?


def test_other_files_kept_are_bounded():
    index = index_of(OTHERS_KEPT + 10)
    kept = Kept(index)
    paths = index.paths()
    assert kept.facts_many(paths) == index.facts_many(paths)
    assert len(kept._others) == OTHERS_KEPT  # noqa: SLF001
    index.lookups = 0
    kept.facts(paths[-1])  # kept: among the last read
    kept.facts(paths[0])  # dropped first: read again
    assert index.lookups == 1
