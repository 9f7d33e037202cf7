"""One parse per text in a process: the shared tree cache, and detectors that only read it."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

from kloros_tasks.detectors._treecache import PARSE_CACHE, TreeCache
from kloros_tasks.detectors.capability.detector import CapabilityDetector
from kloros_tasks.detectors.capability.target import Environment
from kloros_tasks.detectors.integration.detector import IntegrationDetector
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector

PACKAGE = Path(__file__).resolve().parent.parent / "kloros_tasks"
DETECTORS = (IntegrationDetector(), CapabilityDetector(Environment()), KnowledgeDetector())


def test_the_same_text_gives_the_same_tree_and_another_text_another():
    cache = TreeCache()
    first = cache.parse("x = 1\n")
    assert cache.parse("x = 1\n") is first
    assert cache.parse("x = 2\n") is not first
    assert cache.stats == {"hits": 1, "misses": 2, "not_kept": 0}


def test_the_cache_keeps_at_most_its_number_of_trees_the_least_recently_used_leaving_first():
    cache = TreeCache(max_entries=2, max_chars=1000)
    a, b = cache.parse("a = 1\n"), cache.parse("b = 1\n")
    assert cache.parse("a = 1\n") is a  # a is now the most recently used
    cache.parse("c = 1\n")
    assert cache.parse("a = 1\n") is a
    assert cache.parse("b = 1\n") is not b


def test_the_cache_keeps_at_most_its_characters_of_source_and_never_a_larger_text():
    cache = TreeCache(max_entries=10, max_chars=20)
    small = cache.parse("a = 1\n")  # 6 characters
    large = "b = '" + "x" * 30 + "'\n"
    assert cache.parse(large) is not cache.parse(large)
    assert cache.stats["not_kept"] == 2
    cache.parse("c = 1234567890\n")  # 15 characters: with a's 6, over 20
    assert cache.parse("a = 1\n") is not small


def test_text_that_does_not_parse_raises_each_time_with_the_callers_file_name():
    cache = TreeCache()
    for name in ("one.py", "two.py"):
        with pytest.raises(SyntaxError) as raised:
            cache.parse("def broken(:\n", filename=name)
        assert raised.value.filename == name
    assert list(cache.held()) == []


def test_the_collector_does_not_run_during_a_parse_and_is_left_as_it_was():
    """A syntax tree holds no cycle: the collector is off while one is built (it ran
    dozens of times over a large file's tree; once, at most, as the parse returns), and
    on again after, whatever the parse raised; a caller that had turned it off finds
    it off."""
    collections = []

    def seen(phase, _info):
        collections.append(phase)

    big = "\n".join(f"def f{n}(a, b=[1, 2]):\n    return {{a: b}}" for n in range(3000))
    gc.callbacks.append(seen)
    try:
        TreeCache().parse(big)
        assert collections.count("start") <= 1 and gc.isenabled()
        collections.clear()
        with pytest.raises(SyntaxError):
            TreeCache().parse("def (:\n")
        assert gc.isenabled()
        gc.disable()
        try:
            TreeCache().parse("x = 1\n")
            assert not gc.isenabled()
        finally:
            gc.enable()
        ast.parse(big)  # the same parse with the collector on
    finally:
        gc.callbacks.remove(seen)
    assert collections.count("start") > 5


def test_a_cache_with_no_room_parses_every_time():
    cache = TreeCache()
    cache.resize(0, 0)
    assert cache.parse("x = 1\n") is not cache.parse("x = 1\n")


def test_resizing_drops_what_no_longer_fits():
    cache = TreeCache()
    for n in range(5):
        cache.parse(f"x = {n}\n")
    cache.resize(2, 1000)
    assert len(list(cache.held())) == 2


def _sources() -> list[tuple[str, str]]:
    """This package's own modules, and a few shapes the detectors treat specially."""
    files = [(p.relative_to(PACKAGE.parent).as_posix(), p.read_text())
             for p in sorted(PACKAGE.rglob("*.py"))]
    files += [
        ("pkg/conf.py", "import os\nDEBUG = os.environ['DEBUG']\nINSTALLED = ['a.b']\n"),
        ("pkg/bus.py", "class Worker:\n    def __init__(self):\n        self.q = []\n"
                       "    def run(self, r):\n        r.publish('x.y', 1)\n"
                       "        self.__z = getattr(self, 'w')\n"),
        ("pkg/tools/t.py", "from tools import helper\n@tool('find')\ndef find(): ...\n"),
    ]
    return files


def snapshot(tree: ast.AST) -> tuple[str, list[list[str]]]:
    """The tree's full dump (line numbers included) and every node's attribute names,
    so that an attribute bolted onto a node (``node.parent = ...``) shows too."""
    return ast.dump(tree, include_attributes=True), [sorted(vars(n)) for n in ast.walk(tree)]


def test_no_detector_changes_a_tree_it_was_given():
    """Every detector reads the cached tree of each file; the tree is the same before
    and after all of them."""
    PARSE_CACHE.clear()
    changed = []
    for path, text in _sources():
        tree = PARSE_CACHE.parse(text, path)
        before = snapshot(tree)
        for detector in DETECTORS:
            facts = detector.extract(path, text)
            assert facts.error is None, (detector.name, path, facts.error)
            if PARSE_CACHE.parse(text, path) is not tree:
                pytest.fail(f"{path}: the tree left the cache during the check")
        if snapshot(tree) != before:
            changed.append(path)
    assert changed == []


def test_each_detector_parses_through_the_cache():
    text = "import os\n\n\ndef f():\n    return os.sep\n"
    PARSE_CACHE.clear()
    tree = PARSE_CACHE.parse(text, "m.py")
    hits = PARSE_CACHE.stats["hits"]
    for detector in DETECTORS:
        detector.extract("m.py", text)
    assert PARSE_CACHE.stats["hits"] - hits == len(DETECTORS)
    assert PARSE_CACHE.parse(text) is tree


def test_a_forgotten_text_is_parsed_again_and_the_others_stay():
    cache = TreeCache()
    first, other = cache.parse("x = 1\n"), cache.parse("y = 1\n")
    cache.nodes(first)
    cache.forget("x = 1\n")
    cache.forget("never parsed\n")
    assert cache.parse("x = 1\n") is not first
    assert cache.parse("y = 1\n") is other
    assert len(list(cache.held())) == 2
