"""KnowledgeDetector, pure: extract, affected and evaluate on small in-memory trees."""

from __future__ import annotations

import json
import random

import pytest
from counting import evaluated_both_ways, project_files

from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.questions import Question
from kloros_tasks.state.index import MemoryIndex

DETECTOR = KnowledgeDetector()


# --- helpers -------------------------------------------------------------------------------

def stored(facts: FileFacts) -> FileFacts:
    """The facts as a RedisIndex would give them back (through JSON)."""
    return FileFacts.from_json(json.loads(json.dumps(facts.to_json())))


def index_of(files: dict[str, str], detector: KnowledgeDetector = DETECTOR) -> MemoryIndex:
    """A MemoryIndex holding the facts of every file that parses, in ``files`` order."""
    index = MemoryIndex()
    for path, text in files.items():
        facts = detector.extract(path, text)
        if facts.error is None:
            index.update(path, stored(facts))
    return index


def questions(files: dict[str, str], detector: KnowledgeDetector = DETECTOR) -> dict[str, Question]:
    """Full batch evaluation: every question of every indexed file, by id."""
    index = index_of(files, detector)
    return {q.id: q for path in index.paths() for q in detector.evaluate(path, index)}


def found(files: dict[str, str], detector: KnowledgeDetector = DETECTOR) -> set[tuple[str, str]]:
    return {(q.rule, q.owner) for q in questions(files, detector).values()}


def only(files: dict[str, str], rule: str, owner: str) -> Question:
    matching = [q for q in questions(files).values() if q.rule == rule and q.owner == owner]
    assert len(matching) == 1, matching
    return matching[0]


def undocumented_functions(count: int, start: int = 0) -> str:
    return '"""Module."""\n' + "".join(f"def f{i}():\n    pass\n" for i in range(start, count))


# A tree that declares a docstring policy: missing_docstrings asks only in one.
RUFF_D = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["E", "D"]\n'}
README = "# Project\n\n[guide](docs/guide.md)\n"


# --- missing_docstrings ----------------------------------------------------------------------

def test_a_module_with_more_undocumented_public_definitions_than_the_threshold_is_asked_about():
    q = only({**RUFF_D, "pkg/mod.py": undocumented_functions(4)}, "missing_docstrings",
             "pkg/mod.py")
    assert q.detector == "knowledge"
    assert q.subject == "missing_docstrings:pkg/mod.py"
    assert q.hypothesis == "MISSING_DOCSTRINGS: pkg/mod.py (4 public definitions)"
    assert q.question.endswith("?") and "4 public definitions" in q.question
    assert q.evidence == ("pkg/mod.py:2 f0", "pkg/mod.py:4 f1", "pkg/mod.py:6 f2",
                          "pkg/mod.py:8 f3")
    assert q.severity == "low"
    assert q.paths == ("pkg/mod.py",)


def test_the_threshold_itself_is_not_enough():
    assert found({**RUFF_D, "pkg/mod.py": undocumented_functions(3)}) == set()


def test_the_threshold_is_configurable():
    strict = KnowledgeDetector(docstring_threshold=0)
    assert found({**RUFF_D, "pkg/mod.py": undocumented_functions(1)}, strict) == {
        ("missing_docstrings", "pkg/mod.py")}
    with pytest.raises(ValueError):
        KnowledgeDetector(docstring_threshold=-1)


def test_methods_of_public_classes_count_with_their_qualified_names():
    source = '''"""Parsing."""


class Parser:
    """Feeds."""

    def feed(self, data):
        pass

    def close(self):
        pass

    class Inner:
        def reset(self):
            pass

    async def drain(self):
        pass
'''
    q = only({**RUFF_D, "pkg/mod.py": source}, "missing_docstrings", "pkg/mod.py")
    assert q.evidence == ("pkg/mod.py:7 Parser.feed", "pkg/mod.py:10 Parser.close",
                          "pkg/mod.py:13 Parser.Inner", "pkg/mod.py:14 Parser.Inner.reset",
                          "pkg/mod.py:17 Parser.drain")


def test_private_dunder_nested_and_documented_definitions_do_not_count():
    source = '''"""Module."""
from typing import overload


def _helper():
    pass


class _Private:
    def method(self):
        pass


class Public:
    """Documented."""

    def __init__(self):
        pass

    def __repr__(self):
        pass

    def _internal(self):
        pass

    @property
    def value(self):
        """The value."""

    @value.setter
    def value(self, new):
        pass

    @overload
    def pick(self, x: int) -> int: ...

    def pick(self, x):
        """Pick."""


def outer():
    """Outer."""

    def nested():
        pass
'''
    strict = KnowledgeDetector(docstring_threshold=0)
    assert found({**RUFF_D, "pkg/mod.py": source}, strict) == set()


def test_a_missing_module_docstring_counts_and_an_empty_module_is_not_judged():
    strict = KnowledgeDetector(docstring_threshold=0)
    q = only_with(strict, {"pkg/mod.py": "x = 1\n"})
    assert q.evidence == ("pkg/mod.py:1 <module>",)
    assert found({**RUFF_D, "pkg/__init__.py": "", "pkg/_private.py": "x = 1\n"}, strict) == set()
    assert found({**RUFF_D, "pkg/__init__.py": "from .mod import x\n"}, strict) == {
        ("missing_docstrings", "pkg/__init__.py")}


def only_with(detector: KnowledgeDetector, files: dict[str, str]) -> Question:
    (q,) = questions({**RUFF_D, **files}, detector).values()
    return q


def test_a_literal_dunder_all_decides_which_top_level_names_are_public():
    source = '"""M."""\n__all__ = ["kept"]\n' + "".join(
        f"def {name}():\n    pass\n" for name in ("kept", "a", "b", "c", "d"))
    strict = KnowledgeDetector(docstring_threshold=0)
    assert only_with(strict, {"pkg/mod.py": source}).evidence == ("pkg/mod.py:3 kept",)


@pytest.mark.parametrize("path", [
    "tests/test_mod.py", "pkg/tests/helpers.py", "pkg/test_mod.py", "pkg/mod_test.py",
    "conftest.py", "test/util.py",
])
def test_test_files_are_not_judged(path):
    assert found({**RUFF_D, path: undocumented_functions(10)}) == set()


def test_evidence_is_capped_and_many_missing_docstrings_are_medium():
    q = only({**RUFF_D, "pkg/mod.py": undocumented_functions(30)}, "missing_docstrings",
             "pkg/mod.py")
    assert len(q.evidence) == 21
    assert q.evidence[-1] == "... and 10 more"
    assert q.severity == "medium"
    assert "30 public definitions" in q.hypothesis


# --- unindexed_doc -----------------------------------------------------------------------------

def test_a_doc_no_other_doc_links_to_is_asked_about():
    q = only({**RUFF_D, "docs/orphan.md": "# Orphan\n\n[me](orphan.md)\n"}, "unindexed_doc",
             "docs/orphan.md")
    assert q.subject == "unindexed_doc:docs/orphan.md"
    assert q.hypothesis == "UNINDEXED_DOC: docs/orphan.md"
    assert q.evidence == ("docs/orphan.md:1 not linked from any README, index, toctree or "
                          "other doc",)
    assert q.severity == "low"


def test_a_doc_linked_from_a_readme_is_indexed():
    assert found({**RUFF_D, "README.md": README, "docs/guide.md": "# Guide\n"}) == set()


@pytest.mark.parametrize("path", [
    "README.md", "readme.rst", "docs/README.md", "docs/index.rst", "docs/api/index.md",
    "CHANGELOG.md", "CONTRIBUTING.rst", "LICENSE.md", "AUTHORS.txt", "NOTICE.md",
    "CODE_OF_CONDUCT.md", "SECURITY.md",
])
def test_index_roots_are_never_unindexed(path):
    assert found({**RUFF_D, path: "Nothing links here.\n"}) == set()


def test_changelogs_below_the_top_are_ordinary_docs():
    assert found({"docs/CHANGELOG.md": "# Changes\n"}) == {("unindexed_doc", "docs/CHANGELOG.md")}


@pytest.mark.parametrize("path", [
    "requirements.txt", "requirements-dev.txt", "dev-requirements.txt", "constraints.txt",
    "LICENSE.txt", "robots.txt", "CMakeLists.txt", "tests/fixtures/data.txt",
    "tests/sample.md", "pkg.egg-info/SOURCES.txt", "src/pkg.egg-info/top_level.txt",
    "entry_points.txt", ".github/PULL_REQUEST_TEMPLATE.md",
])
def test_files_that_are_not_docs_raise_nothing(path):
    text = "celery>=5\n`pkg.gone`\n[x](missing.md)\n"
    facts = DETECTOR.extract(path, text)
    assert facts.data == {"kind": "other"}
    assert dict(facts.relations) == {"defines": frozenset({f"path:{path}"}),
                                     "top": frozenset({path.split("/")[0]})}
    assert found({**RUFF_D, path: text, "pkg/__init__.py": '"""P."""\n'}) == set()


def test_a_link_to_a_non_doc_text_file_is_not_broken():
    files = {"README.md": "[deps](requirements.txt)\n", "requirements.txt": "redis\n"}
    assert found(files) == set()


def test_markdown_link_forms_all_count():
    readme = """# Project
[inline](docs/a.md#section "Title") and ![picture](docs/b.md)
[ref]: docs/c.md?plain=1
[angle](<docs/with space.md>) and [encoded](docs/per%20cent.md)
<a href="docs/d.md">html</a>
[external](https://example.com/docs/e.md) <https://example.com> [mail](mailto:x@y.z)
"""
    docs = {f"docs/{n}.md": "# Doc\n" for n in ("a", "b", "c", "d", "e")}
    docs.update({"docs/with space.md": "x\n", "docs/per cent.md": "y\n"})
    assert found({**RUFF_D, "README.md": readme, **docs}) == {("unindexed_doc", "docs/e.md")}


def test_links_in_code_do_not_count():
    readme = "`[a](docs/a.md)`\n\n```\n[b](docs/b.md)\n```\n"
    assert found({**RUFF_D, "README.md": readme, "docs/a.md": "a\n", "docs/b.md": "b\n"}) == {
        ("unindexed_doc", "docs/a.md"), ("unindexed_doc", "docs/b.md")}


def test_links_resolve_relative_to_the_linking_doc():
    files = {
        "README.md": "[guide](docs/guide/intro.md)\n",
        "docs/guide/intro.md": "[next](../ref/api.md) [up](../../README.md)\n",
        "docs/ref/api.md": "[root-relative](/docs/ref/more.md)\n",
        "docs/ref/more.md": "# More\n",
    }
    assert found(files) == set()


def test_rst_link_forms_all_count():
    index = """Project
=======

.. toctree::
   :maxdepth: 2

   intro
   Usage <usage>
   self
   api/*

See :doc:`tutorial` and :doc:`The FAQ <faq>` and `notes <notes.rst>`_.

.. include:: snippets/header.rst
.. literalinclude:: snippets/example.txt
.. _external: https://example.com/docs/never.rst
"""
    files = {"docs/index.rst": index}
    for name in ("intro.rst", "usage.md", "tutorial.rst", "faq.rst", "notes.rst",
                 "snippets/header.rst", "snippets/example.txt"):
        files[f"docs/{name}"] = "Text.\n"
    files["docs/never.rst"] = "Not linked.\n"
    assert found(files) == {("unindexed_doc", "docs/never.rst")}


def test_myst_toctree_fences_count():
    index = "# Docs\n\n```{toctree}\n:maxdepth: 1\n\nintro\nGuide <guide>\n```\n"
    files = {"docs/index.md": index, "docs/intro.md": "i\n", "docs/guide.md": "g\n"}
    assert found(files) == set()


def test_docs_that_declare_themselves_orphans_are_not_unindexed():
    files = {
        "docs/moved.rst": ":orphan:\n\nMoved\n=====\n",
        "docs/draft.md": "---\ntitle: Draft\norphan: true\n---\n# Draft\n",
        "docs/late.rst": "Title\n=====\n\n:orphan:\n",  # not in the leading field list
        "docs/plain.md": "---\ntitle: Plain\n---\norphan: true\n",  # not in front matter
    }
    assert found(files) == {("unindexed_doc", "docs/late.rst"), ("unindexed_doc", "docs/plain.md")}


def test_a_directory_link_counts_as_a_link_to_its_readme_and_index_and_is_never_broken():
    facts = DETECTOR.extract("README.md", "[docs](docs/) [api](docs/api) [nowhere](gone/)\n")
    assert {"docs/README.md", "docs/index.rst", "docs/api/index.md",
            "gone/README.md"} <= facts.relations["links"]
    assert found({**RUFF_D, "README.md": "[nowhere](gone/)\n"}) == set()


def test_an_extensionless_link_also_counts_as_a_link_to_that_page():
    files = {"README.md": "[guide](docs/guide)\n", "docs/guide.md": "# Guide\n"}
    assert found(files) == set()


def test_links_that_leave_the_root_are_ignored():
    facts = DETECTOR.extract("docs/a.md", "[out](../../elsewhere.md) [abs](/../../x.md)\n")
    assert not facts.relations.get("links") and not facts.data["refs"]


# --- stale_doc -------------------------------------------------------------------------------

CODE = {
    "pkg/__init__.py": '"""Package."""\nfrom .publish import Publisher\n',
    "pkg/publish.py": '''"""Publishing."""
import os

LIMIT = 3


def publish(x):
    """Publish."""


class Publisher:
    """Publishes."""

    retries: int = 2

    def __init__(self):
        self.client = None

    def send(self):
        """Send."""


class Ledger(dict):
    """Inherits what it does not define."""
''',
    "pkg/cli.py": '"""CLI."""\n\n\ndef main():\n    """Run."""\n',
}


def stale_evidence(doc: str, text: str, files: dict[str, str] | None = None) -> tuple[str, ...]:
    tree = {**CODE, "README.md": f"[doc]({doc})\n", doc: text, **(files or {})}
    matching = [q for q in questions(tree).values() if q.rule == "stale_doc"]
    assert len(matching) <= 1
    return matching[0].evidence if matching else ()


def test_names_and_paths_that_exist_are_not_stale():
    text = """# Guide
`pkg`, `pkg.publish`, `pkg.publish.Publisher`, `pkg.publish.Publisher.send()`,
`pkg.publish.Publisher.retries`, `pkg.publish.Publisher.client`, `pkg.publish.LIMIT`,
`pkg.publish.os`, `pkg.Publisher`, `pkg.cli:main`, `pkg/cli.py`, `../pkg/publish.py`,
[source](../pkg/cli.py)
"""
    assert stale_evidence("docs/guide.md", text) == ()


def test_a_dotted_name_that_no_longer_exists_is_stale():
    text = "# Guide\n\nUse `pkg.publish.Gone` or\n`pkg.gone.Thing()` and `pkg.cli:gone`.\n"
    q = only({**RUFF_D, **CODE, "README.md": "[g](docs/guide.md)\n", "docs/guide.md": text},
             "stale_doc", "docs/guide.md")
    assert q.subject == "stale_doc:docs/guide.md"
    assert q.severity == "medium"
    assert q.hypothesis == "STALE_DOC: docs/guide.md (3 dangling references)"
    assert q.evidence == ("docs/guide.md:3 pkg.publish.Gone", "docs/guide.md:4 pkg.gone.Thing()",
                          "docs/guide.md:4 pkg.cli:gone")


def test_names_outside_the_tree_are_never_judged():
    text = "`os.path.join`, `celery.Celery`, `redis.Redis.from_url()`, `kloros:ledger`\n"
    assert stale_evidence("docs/guide.md", text) == ()


def test_attributes_of_values_and_of_classes_with_bases_are_not_judged():
    text = ("`pkg.publish.LIMIT.real`, `pkg.publish.publish.__name__`, `pkg.Publisher.send`, "
            "`pkg.publish.Ledger.keys`, `pkg.publish.os.path`\n")
    assert stale_evidence("docs/guide.md", text) == ()


def test_a_missing_file_path_in_code_is_stale_and_a_bare_file_name_is_not_judged():
    text = "`pkg/gone.py` is gone; every package has an `__init__.py`; `setup.py`.\n"
    assert stale_evidence("docs/guide.md", text) == ("docs/guide.md:1 pkg/gone.py",)


def test_a_broken_relative_link_is_stale():
    text = "[old](old.md) [api](../pkg/gone.py) [ok](guide.md) [pic](missing.png)\n"
    assert stale_evidence("docs/guide.md", text) == (
        "docs/guide.md:1 old.md (broken link)", "docs/guide.md:1 ../pkg/gone.py (broken link)")


def test_references_in_fenced_code_are_examples_not_references():
    text = ("```python\nfrom pkg.gone import x\n`pkg.gone`\n```\n"
            "1. In a list:\n\n    ~~~~\n    `pkg.gone.too`\n    ~~~~\n")
    assert stale_evidence("docs/guide.md", text) == ()


def test_rst_code_references_count_and_literal_blocks_do_not():
    text = """Guide
=====

Use ``pkg.gone`` and :class:`~pkg.publish.Missing` and `pkg.publish.Absent`.
Also :doc:`nowhere` and :mod:`os.path`.

.. autoclass:: pkg.publish.Vanished
   :members:

Example::

    `pkg.not_a_reference`

.. code-block:: python

    ``pkg.neither``
"""
    # ``pkg.gone``, a plain literal breaking right below the top-level package, is not
    # judged: in Sphinx docs that is a logger or setting name far more often than code.
    assert stale_evidence("docs/guide.rst", text) == (
        "docs/guide.rst:4 pkg.publish.Missing",
        "docs/guide.rst:4 pkg.publish.Absent", "docs/guide.rst:5 nowhere (broken link)",
        "docs/guide.rst:7 pkg.publish.Vanished")


def test_myst_roles_are_read_by_kind():
    text = ("{py:class}`pkg.publish.Gone` {ref}`pkg.label.not_code` {doc}`missing` "
            "{pypi}`pkg.thing`\n")
    assert stale_evidence("docs/guide.md", text) == (
        "docs/guide.md:1 pkg.publish.Gone", "docs/guide.md:1 missing (broken link)")


def test_src_layout_modules_are_named_without_src():
    files = {"src/lib/core.py": '"""Core."""\n\n\ndef run():\n    """Run."""\n'}
    assert stale_evidence("docs/guide.md", "`lib.core.run` `lib.core.gone`\n", files) == (
        "docs/guide.md:1 lib.core.gone",)


def test_a_module_with_getattr_or_a_star_import_accepts_any_name():
    files = {"lazy/__init__.py": '"""L."""\n\n\ndef __getattr__(name):\n    """Any."""\n',
             "star/__init__.py": '"""S."""\nfrom os.path import *\n'}
    assert stale_evidence("docs/guide.md", "`lazy.anything` `star.join`\n", files) == ()


# --- robustness ------------------------------------------------------------------------------

def test_a_syntax_error_gives_error_facts_without_relations():
    facts = DETECTOR.extract("pkg/mod.py", "def ok():\n    pass\n\ndef broken(:\n")
    assert facts.error is not None and facts.error.startswith("line 4: ")
    assert not facts.relations


def test_nul_bytes_give_error_facts():
    facts = DETECTOR.extract("pkg/mod.py", "x = 1\ny = 2\x00\n")
    assert facts.error is not None and facts.error.startswith("line 2: ")
    assert DETECTOR.extract("docs/a.md", "text\x00 `pkg.x`\n").error is None


@pytest.mark.parametrize("source", [
    "(" * 100000,
    "x = " + "[" * 5000 + "]" * 5000,
    "x = " + "+".join(["1"] * 100000),
    "x = " + "-" * 100000 + "1",
    "a" + ".b" * 100000,
], ids=["parens", "lists", "long-sum", "unary", "attributes"])
def test_deeply_nested_source_does_not_raise(source):
    facts = DETECTOR.extract("pkg/deep.py", source)
    assert facts.error is not None and facts.error.startswith("line ")
    assert not facts.relations


@pytest.mark.parametrize("text", [
    "`" * 100000, "``" * 50000 + "x", "[" * 50000 + "](" * 50000, "` `` ``` " * 20000,
    ".. toctree::\n" + "   x\n" * 20000, ":doc:`" * 30000, "a.b:" * 50000, "](<" * 50000,
    "`](a" * 50000, "{doc}`" * 30000,
])
@pytest.mark.timeout(60)
def test_hostile_documents_are_scanned_in_linear_time(text):
    # No wall-clock assertion (a loaded machine is slow, not wrong): 100,000 characters
    # take under a second when the scan is linear, and far beyond a minute when it is
    # quadratic, so the test's own timeout tells the two apart on any machine.
    for path in ("docs/a.md", "docs/a.rst"):
        DETECTOR.extract(path, text)


def test_question_ids_are_stable_across_runs():
    files = {**RUFF_D, "pkg/mod.py": undocumented_functions(4), "docs/orphan.md": "# Orphan\n",
             "README.md": README, "docs/guide.md": "`pkg.mod.gone`\n"}
    assert set(questions(files)) == {
        "knowledge.missing_docstrings.4ab3db1e4bd8288e",  # pkg/mod.py
        "knowledge.unindexed_doc.3b32eeb91bb8ffb1",  # docs/orphan.md
        "knowledge.stale_doc.809d6ee03ac894a8",  # docs/guide.md
    }


def test_moving_definitions_down_keeps_the_question_id():
    before = questions({**RUFF_D, "pkg/mod.py": undocumented_functions(4)})
    after = questions({**RUFF_D, "pkg/mod.py": "\n\n\n" + undocumented_functions(4)})
    assert set(before) == set(after)
    (q_before,), (q_after,) = before.values(), after.values()
    assert q_before.evidence != q_after.evidence


# --- affected: only the documents whose questions can change -------------------------------

def apply(index: MemoryIndex, path: str, text: str | None) -> set[str]:
    """Store one change; what ``affected`` says must be re-evaluated besides ``path``."""
    touched = index.update(path, None if text is None else stored(DETECTOR.extract(path, text)))
    return DETECTOR.affected(path, touched, index)


def test_a_module_joining_a_named_package_re_evaluates_no_document():
    index = index_of({"pkg/__init__.py": '"""P."""\n',
                      "pkg/a.py": '"""A."""\n\n\nclass Thing:\n    """T."""\n',
                      "README.md": "`pkg.a.Thing` `pkg.b.Other`\n"})
    assert found_in(index, "README.md") == {"stale_doc"}
    assert apply(index, "pkg/c.py", '"""C."""\n') == set()  # "pkg" stays defined
    assert apply(index, "pkg/b.py", '"""B."""\n\n\nclass Other:\n    """O."""\n') == {
        "README.md"}
    assert found_in(index, "README.md") == set()


def test_a_name_turning_opaque_or_open_re_evaluates_the_documents_naming_it():
    index = index_of({"pkg/__init__.py": '"""P."""\n', "pkg/a.py": '"""A."""\nX = 1\n',
                      "README.md": "`pkg.a.gone`\n"})
    assert found_in(index, "README.md") == {"stale_doc"}
    assert apply(index, "pkg/a.py", '"""A."""\nX = 1\n\n\ndef __getattr__(name):\n    pass\n'
                 ) == {"README.md"}
    assert found_in(index, "README.md") == set()


def test_only_a_documents_first_inbound_link_re_evaluates_it():
    index = index_of({"README.md": "# P\n", "docs/a.md": "# A\n", "docs/b.md": "# B\n",
                      "docs/guide.md": "# G\n"})
    assert apply(index, "docs/a.md", "[g](guide.md)\n") == {"docs/guide.md"}
    # guide.md was linked already; README.md, an index root, is never unindexed
    assert apply(index, "docs/b.md", "[g](guide.md) [r](../README.md)\n") == set()
    assert apply(index, "docs/a.md", None) == set()
    assert apply(index, "docs/b.md", None) == {"docs/guide.md"}
    assert found_in(index, "docs/guide.md") == {"unindexed_doc"}


def found_in(index: MemoryIndex, path: str) -> set[str]:
    return {q.rule for q in DETECTOR.evaluate(path, index)}


# --- incremental equals batch ------------------------------------------------------------------

TREE = {
    **CODE,
    **RUFF_D,
    "README.md": "# P\n[guide](docs/guide.md) [api](docs/api.rst)\n",
    "docs/guide.md": "# Guide\n`pkg.publish.Publisher.send` `pkg/cli.py` [api](api.rst)\n",
    "docs/api.rst": "API\n===\n\n:class:`pkg.publish.Ledger` ``pkg.cli.main``\n",
    "docs/orphan.md": "# Orphan\n`pkg.cli.main` `pkg.cli.gone` [g](guide.md)\n",
    "pkg/extra.py": undocumented_functions(5),
    "requirements.txt": "redis\n",
}

EDITS: list[tuple[str, str | None]] = [
    ("pkg/cli.py", '"""CLI."""\n\n\ndef start():\n    """Run."""\n'),  # main renamed
    ("docs/guide.md", "# Guide\n[orphan](orphan.md) `pkg.publish.Publisher.send`\n"),
    ("pkg/publish.py", None),  # deleted
    ("pkg/publish.py", "def broken(:\n"),  # re-created, does not parse
    ("pkg/publish.py", CODE["pkg/publish.py"]),  # back
    ("README.md", None),
    ("docs/api.rst", "API\n===\n\n.. include:: ../README.md\n`pkg.extra.f9`\n"),
    ("pkg/extra.py", undocumented_functions(12)),
    ("pkg/extra.py", "def f9(:\n"),
    ("README.md", "[g](docs/guide.md)\n[a](docs/api.rst)\n"),
    ("pkg/cli.py", None),
    ("pkg/__init__.py", '"""P."""\nfrom .lazy import *\n'),
    ("docs/new.md", "# New\n[api](api.rst) `pkg.nothing.here` [gone](gone.md)\n"),
    ("docs/gone.md", "# Gone\n"),
    ("pkg/__init__.py", None),
    ("docs/orphan.md", None),
    ("requirements.txt", None),
    # a docstring policy narrowing, going, coming back nearer the modules, and returning
    ("pyproject.toml", '[tool.ruff.lint]\nselect = ["D"]\nignore = ["D103"]\n'),
    ("pyproject.toml", None),
    ("pkg/setup.cfg", "[pydocstyle]\nconvention = pep257\n"),
    ("pyproject.toml", RUFF_D["pyproject.toml"]),
    ("pkg/setup.cfg", "[pydocstyle]\nadd-ignore = D103\n"),
    ("pkg/setup.cfg", None),
    # a task registered under a name a document uses, then renamed
    ("pkg/tasks.py", "@app.task(name='pkg.cli.gone')\ndef gone():\n    pass\n"),
    ("pkg/tasks.py", "@app.task(name='pkg.cli.went')\ndef gone():\n    pass\n"),
]


class Incremental:
    """What the pipeline does: update the index for one change, re-evaluate the changed
    file plus what ``affected`` names, and keep each owner's current questions."""

    def __init__(self, files: dict[str, str]) -> None:
        self.index = MemoryIndex()
        self.owned: dict[str, dict[str, Question]] = {}
        self.good: dict[str, str] = {}  # the last version of each file that parsed
        for path, text in files.items():
            self.apply(path, text)

    def apply(self, path: str, text: str | None) -> None:
        if text is None:
            touched = self.index.update(path, None)
            self.good.pop(path, None)
        else:
            facts = DETECTOR.extract(path, text)
            if facts.error is not None:
                return  # the previous facts stay
            touched = self.index.update(path, stored(facts))
            self.good[path] = text
        for owner in {path} | DETECTOR.affected(path, touched, self.index):
            self.owned[owner] = {q.id: q for q in DETECTOR.evaluate(owner, self.index)}

    def questions(self) -> dict[str, Question]:
        return {qid: q for qs in self.owned.values() for qid, q in qs.items()}


def test_indexing_order_does_not_change_the_questions():
    expected = questions(TREE)
    assert expected  # the tree does raise questions of every rule
    assert {q.rule for q in expected.values()} == {"missing_docstrings", "unindexed_doc",
                                                   "stale_doc"}
    paths = list(TREE)
    for seed in range(5):
        random.Random(seed).shuffle(paths)
        assert questions({p: TREE[p] for p in paths}) == expected
        assert Incremental({p: TREE[p] for p in paths}).questions() == expected


def test_each_incremental_update_leaves_exactly_the_questions_of_a_full_rebuild():
    live = Incremental(TREE)
    for path, text in EDITS:
        live.apply(path, text)
        assert live.questions() == questions(live.good), (path, text)


def test_random_edit_sequences_match_a_full_rebuild():
    versions = {path: [text, None] for path, text in TREE.items()}
    for path, text in EDITS:
        versions.setdefault(path, [None]).append(text)
    for seed in range(20):
        rng = random.Random(seed)
        live = Incremental(TREE)
        for _ in range(40):
            path = rng.choice(sorted(versions))
            live.apply(path, rng.choice(versions[path]))
            assert live.questions() == questions(live.good), (seed, path)


# --- many files evaluated together -------------------------------------------------------------

def test_files_evaluated_together_ask_the_same_questions_with_fewer_lookups():
    # Real code and documents: this project's own package, docs and README, with a
    # docstring policy and documents whose references go stale.
    files = {**RUFF_D, **project_files("README.md", "kloros_tasks/**/*.py", "docs/*.md")}
    files["docs/old.md"] = ("# Old\n\nSee `kloros_tasks.state.index.RedisIndex.gone` and "
                            "[the plan](plans/none.md).\n")
    one_by_one, together, alone, lookups = evaluated_both_ways(DETECTOR, index_of(files))
    assert together == one_by_one
    assert {q.rule for qs in one_by_one.values() for q in qs} >= {
        "missing_docstrings", "stale_doc"}
    assert lookups * 5 <= alone
