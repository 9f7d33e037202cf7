"""KnowledgeDiscovery: documentation the tree does not keep up.

Rules (see docs/detectors.md for the full statement of each):

``missing_docstrings``
    in a tree that declares a docstring policy (ruff ``D``, pydocstyle,
    flake8-docstrings, interrogate: see ``policy``), a Python module with more public
    definitions the policy covers lacking a docstring than the threshold;
``unindexed_doc``
    a document that no other document links to, includes or lists in a toctree;
``stale_doc``
    a document naming, in code spans or links, files or dotted names of this tree that
    do not exist;
``unparsable_module``
    a Python module this Python cannot parse and never could (newer syntax, say):
    opaque, not absent, so one low question instead of broken references.

Relations extracted per file (the index inverts them):

=========  ===================================================================
defines    "path:<relpath>" for every file seen; for Python files also the
           module, its packages, and its top-level and class-level names
opaque     names whose attributes are unknown (functions, variables, imports)
open       modules and classes that accept any attribute (``__getattr__``,
           a star import, a base class)
links      relative paths a document links to
refs       what a document names: "path:<relpath>" candidates, and every prefix
           of each dotted name ("a", "a.b", "a.b.C")
=========  ===================================================================

(plus, from ``docstrings``: ``undoc``, ``py_under`` and the ``docpolicy`` relations of
configuration files), so ``affected`` needs only exact look-ups: a changed ``links``
value re-evaluates that document when it gained its first or lost its last inbound link, a changed
``defines``/``opaque``/``open`` value the documents whose ``refs`` hold it when what
the rules read of that name changed (a module joining a package leaves the package
defined: its documents keep their answers).
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Iterable
from fnmatch import fnmatchcase

from kloros_tasks import names
from kloros_tasks.detectors._pyast import is_test_path
from kloros_tasks.detectors.base import FileFacts, IndexView, Touched, who_each
from kloros_tasks.detectors.knowledge import docrefs as _docrefs
from kloros_tasks.detectors.knowledge import docstrings as _docstrings
from kloros_tasks.detectors.knowledge import policy as _policy
from kloros_tasks.detectors.knowledge import release as _release
from kloros_tasks.detectors.knowledge import together as _together
from kloros_tasks.detectors.knowledge.context import importable_names
from kloros_tasks.detectors.knowledge.docfacts import (
    GLOB_DIR,
    LINK,
    UNDER,
    ancestors,
    dangling_references,
    doc_facts,
    globbed,
    package_init,
    prefixes,
    top_of,
)
from kloros_tasks.detectors.knowledge.docstrings import (
    DOCS_PROJECT,
    POLICY,
    POLICY_SIG,
    PY_UNDER,
    SPHINX_TXT,
    UNDOCUMENTED,
    not_in_docs,
    policy_facts,
    python_facts,
)
from kloros_tasks.questions import Question

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"  # what parses here
DEFAULT_DOCSTRING_THRESHOLD = 3  # the original daemon's "more than 3"
EVIDENCE_CAP = 20
MANY_MISSING = 10  # above this many undocumented definitions: medium severity
SUFFIXES = (".py", ".md", ".rst", ".txt")  # plus the configuration files policy.CONFIG_NAMES

# .txt files that are data or packaging metadata, not documentation (lower-case globs).
NOT_DOC_TXT = (
    "*requirements*.txt", "*constraints*.txt", "license*.txt", "licence*.txt",
    "copying*.txt", "robots.txt", "cmakelists.txt", "top_level.txt", "entry_points.txt",
    "sources.txt", "dependency_links.txt", "requires.txt", "namespace_packages.txt",
    "runtime.txt", "native_libs.txt",
)
NOT_DOC_DIRS = frozenset({"tests", "test", "fixtures", "testdata", "test_data",
                          "node_modules", "site-packages"})
ROOT_STEMS = ("README", "INDEX", "CONTENTS")  # at any depth (contents: Sphinx's old root)
TOP_LEVEL_ROOTS = ("CHANGELOG", "CHANGES", "HISTORY", "CONTRIBUTING", "LICENSE", "LICENCE",
                   "AUTHORS", "NOTICE", "CODE_OF_CONDUCT", "SECURITY")
# Stand-alone files nobody links to, wherever they are (a vendored library's licence).
ANYWHERE_ROOTS = ("LICENSE", "LICENCE", "COPYING", "AUTHORS", "CONTRIBUTORS", "CREDITS",
                  "NOTICE")
NAME_RELATIONS = ("defines", "opaque", "open", "declared")


def is_doc(path: str) -> bool:
    """A .md/.rst/.txt file that is documentation: not under a hidden, test, fixture or
    packaging-metadata directory, and not a requirements/licence/metadata .txt."""
    if not path.endswith(_docrefs.DOC_SUFFIXES):
        return False
    directory, base = posixpath.split(path)
    if base.startswith("."):  # .git_archival.txt, editor and tool files
        return False
    for part in directory.split("/") if directory else ():
        if part.startswith(".") or part in NOT_DOC_DIRS:
            return False
        if part.endswith((".egg-info", ".dist-info")):
            return False
    return not (base.endswith(".txt") and any(fnmatchcase(base.lower(), p) for p in NOT_DOC_TXT))


def is_index_root(path: str) -> bool:
    """README.*, index.*, LICENSE*, AUTHORS*, CREDITS*... anywhere; CHANGELOG*,
    CONTRIBUTING*, SECURITY*... at the top."""
    base = posixpath.basename(path).upper()
    if base.split(".", 1)[0] in ROOT_STEMS or base.startswith(ANYWHERE_ROOTS):
        return True
    return "/" not in path and base.startswith(TOP_LEVEL_ROOTS)


class KnowledgeDetector:
    """Pure KnowledgeDiscovery detector (see the module docstring)."""

    name = names.KNOWLEDGE
    suffixes = SUFFIXES

    def __init__(self, docstring_threshold: int = DEFAULT_DOCSTRING_THRESHOLD) -> None:
        if docstring_threshold < 0:
            raise ValueError(f"docstring_threshold must be >= 0, not {docstring_threshold}")
        self.docstring_threshold = docstring_threshold

    # --- phase 1 --------------------------------------------------------------------

    def extract(self, path: str, text: str) -> FileFacts:
        """Facts of one file; ``error`` set (and no relations) when Python does not parse."""
        if path.endswith(".py"):
            return python_facts(path, text)
        if path == _release.PKG_INFO:  # at the root: the tree is an sdist
            return _release.pkg_info_facts(path, text)
        if _policy.is_config(path):
            return policy_facts(path, text)
        if is_doc(path):
            return doc_facts(path, text, is_index_root(path))
        if path.endswith(SUFFIXES):  # a .txt that is not a doc: it exists, nothing more
            return FileFacts(relations={"defines": frozenset({f"path:{path}"}),
                                        "top": top_of(path)},
                             data={"kind": "other"})
        return FileFacts()

    def opaque(self, path: str, error: str) -> FileFacts | None:
        """Facts of a Python module this Python cannot parse (newer syntax, say): the
        module exists and any name under it may too; asked about once, at low severity."""
        if not path.endswith(".py"):
            return None
        modules = importable_names(path)
        defines = {f"path:{path}", *(p for m in modules for p in prefixes(m))}
        return FileFacts(
            relations={"defines": frozenset(defines), "open": frozenset(modules),
                       "top": top_of(path)},
            data={"kind": "unparsable", "error": error, "python": PYTHON_VERSION})

    # --- phase 2 --------------------------------------------------------------------

    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Documents whose questions can change: link targets that gained their first
        or lost their last inbound link, and documents naming a key whose standing
        (defined, open, defined other than opaquely) changed."""
        targets = _link_targets(path, touched)
        # a declared object documents a definition without a docstring
        declared = {v for r, v in touched if r == "declared"} if is_doc(path) else set()
        # conf.py's source_suffix, a toctree glob: the documents under that directory
        sources = {v for r, v in touched if r in (SPHINX_TXT, GLOB_DIR, DOCS_PROJECT)}
        # a docstring policy appeared, changed or went: the modules it governs
        governed = {v.rsplit("#", 1)[0] if r == POLICY_SIG else v
                    for r, v in touched if r in (POLICY, POLICY_SIG)}
        # the tree's release or version changed: the documents announcing one of it
        releases = {_release.RELEASE_REF + v.split("==", 1)[0] for r, v in touched
                    if r in (_release.RELEASE, _release.RELEASE_AT)}
        keys = {v for r, v in touched if r in NAME_RELATIONS}
        tops = {v for r, v in touched if r == "top"}
        found = who_each(view, {  # the first lookups of every rule, in one round trip
            "links": targets, UNDOCUMENTED: declared, UNDER: sources, PY_UNDER: governed,
            "refs": keys | releases | {f"top:{t}" for t in tops}})
        out = {t for t in targets if not found[("links", t)] - {t, path}}
        for relation, values in ((UNDOCUMENTED, declared), (UNDER, sources),
                                 (PY_UNDER, governed)):
            out |= set().union(*(found[(relation, v)] for v in values))
        out |= set().union(*(found[("refs", v)] for v in releases))
        out |= _readers_of_changed_keys(path, touched, view,
                                        {k: found[("refs", k)] for k in keys})
        out |= _readers_of_changed_tops(path, tops, view,
                                        {t: found[("refs", f"top:{t}")] for t in tops})
        out.discard(path)
        return out

    def evaluate_many(self, paths: Iterable[str], view: IndexView) -> dict[str, list[Question]]:
        """``evaluate`` of each of ``paths``, the lookups their rules ask first made for
        all of them together (together.py)."""
        paths = list(paths)
        kept = _together.prefetched(paths, view)
        return {path: self.evaluate(path, kept) for path in paths}

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now."""
        facts = view.facts(path)
        if facts is None:
            return []
        kind = facts.data.get("kind")
        if kind == "py":
            missing = not_in_docs(facts.data, view)
            if missing:  # only what a declared docstring policy asks for
                missing = _docstrings.wanted(path, facts.data, view, missing)
            return self._missing_docstrings(path, missing)
        if kind == "doc":
            return self._unindexed(path, facts, view) + self._stale(path, facts, view)
        if kind == "unparsable" and not is_test_path(path):  # test data is broken on purpose
            return self._unparsable(path, facts.data)
        return []

    # --- rules ------------------------------------------------------------------------

    def _missing_docstrings(self, path: str, missing: list) -> list[Question]:
        count = len(missing)
        if count <= self.docstring_threshold:
            return []
        return [self._question(
            "missing_docstrings", path,
            hypothesis=f"MISSING_DOCSTRINGS: {path} ({count} public definitions)",
            question=(f"{path} has {count} public definitions without docstrings: "
                      "should they be documented?"),
            severity="medium" if count > MANY_MISSING else "low",
            confidence=0.9,
            suggestion="Add a docstring saying what each public module, class and function "
                       "promises, or make the helpers private with a leading underscore.",
            evidence=_capped([f"{path}:{line} {qualname}" for line, qualname in missing]),
        )]

    def _unparsable(self, path: str, data) -> list[Question]:
        version, error = data.get("python", "?"), data.get("error", "")
        line = error.split(":", 1)[0].removeprefix("line ").strip() or "1"
        return [self._question(
            "unparsable_module", path,
            hypothesis=f"UNPARSABLE_MODULE: {path} (Python {version})",
            question=(f"{path} does not parse with Python {version} ({error}): does it "
                      "need a newer Python, or is it broken?"),
            severity="low",
            confidence=0.7,
            suggestion="Fix the syntax, or run the analysis with the Python the project "
                       "targets; until then what the module defines is unknown.",
            evidence=(f"{path}:{line if line.isdigit() else 1} {error}",),
        )]

    def _unindexed(self, path: str, facts: FileFacts, view: IndexView) -> list[Question]:
        if facts.data.get("root") or facts.data.get("orphan"):
            return []
        if path.endswith(".txt") and not view.exists_many(SPHINX_TXT, ancestors(path)):
            return []  # no conf.py above makes .txt a source: data, templates, notes
        if view.who("links", path) - {path} or globbed(path, view):
            return []
        if view.who("defines", f"path:{package_init(path)}") and not view.exists_many(
                DOCS_PROJECT, ancestors(path)):
            return []  # notes beside the code, read with it: no docs project builds them
        return [self._question(
            "unindexed_doc", path,
            hypothesis=f"UNINDEXED_DOC: {path}",
            question=(f"No other document links to {path}: should it be linked from an "
                      "index or README, or removed?"),
            severity="low",
            confidence=0.6,  # navigation kept outside the docs (mkdocs.yml, say) is unseen
            suggestion="Link it from a README or index, or list it in a toctree.",
            evidence=(f"{path}:1 not linked from any README, index, toctree or other doc",),
        )]

    def _stale(self, path: str, facts: FileFacts, view: IndexView) -> list[Question]:
        entries = facts.data.get("refs", [])
        announced = facts.data.get("announced")
        if entries and announced and _release.outdated_by(announced, view):
            entries = [e for e in entries if e[2] == LINK]  # a record of its time
        dangling = dangling_references(entries, view) if entries else []
        if not dangling:
            return []
        count = len(dangling)
        plural = "" if count == 1 else "s"
        return [self._question(
            "stale_doc", path,
            hypothesis=f"STALE_DOC: {path} ({count} dangling reference{plural})",
            question=(f"{path} refers to code or files that no longer exist "
                      f"({count} reference{plural}): is it out of date?"),
            severity="medium",
            confidence=0.8,
            suggestion="Update the references to the current names and paths, or restore "
                       "what they name.",
            evidence=_capped([
                f"{path}:{line} {text}" + (" (broken link)" if kind == "link" else "")
                for line, text, kind, _ in dangling]),
        )]

    def _question(self, rule: str, path: str, **fields) -> Question:
        return Question(detector=self.name, rule=rule, subject=f"{rule}:{path}", owner=path,
                        paths=(path,), **fields)


def _link_targets(path: str, touched: Touched) -> set[str]:
    """Link targets ``_unindexed`` judges whose "some other document links here" may
    have flipped: only documents that are not index roots are judged (both follow from
    the path), and only the changed file's own link changed, so a target another
    document still links to keeps its answer (``affected`` checks that)."""
    return {v for r, v in touched if r == "links" and v != path
            and is_doc(v) and not is_index_root(v)}


def _readers_of_changed_keys(path: str, touched: Touched, view: IndexView,
                             refs: dict[str, frozenset[str]]) -> set[str]:
    """Documents naming a key whose standing, all ``_dangling`` reads of it, changed
    (``refs``: the documents naming each key ``path`` touched).

    A module joining a package adds the package's name to ``defines`` again, which
    leaves the package defined as before: its documents keep their answers.
    """
    readers = {k: who for k, who in refs.items() if who}
    if not readers:
        return set()
    found = who_each(view, {rel: readers for rel in NAME_RELATIONS})
    out: set[str] = set()
    for key, documents in readers.items():
        now = {rel: found[(rel, key)] for rel in NAME_RELATIONS}
        then = {rel: who ^ {path} if (rel, key) in touched else who for rel, who in now.items()}
        if _standing(now) != _standing(then):
            out |= documents
    return out


def _readers_of_changed_tops(path: str, tops: set[str], view: IndexView,
                             readers: dict[str, frozenset[str]]) -> set[str]:
    """Documents naming a path under a top-level entry that appeared or went (code paths
    are judged only under an existing one); ``readers``: the documents naming each of
    the ``tops`` ``path`` touched."""
    if not any(readers.values()):
        return set()
    facts = view.facts(path)
    mine = facts.relations.get("top", frozenset()) if facts else frozenset()
    counts = view.count_many("top", tops)
    out: set[str] = set()
    for top in tops:
        before = counts[top] - 1 if top in mine else counts[top] + 1
        if (counts[top] > 0) != (before > 0):
            out |= readers[top]
    return out


def _standing(holders: dict[str, frozenset[str]]) -> tuple[bool, bool, bool, bool]:
    """What ``_dangling`` reads of one key: is it defined, open, defined by a file that
    does not hold it as opaque (a module or class whose attributes are known)."""
    defined = holders["defines"]
    return (bool(defined), bool(holders["open"]), bool(defined - holders["opaque"]),
            bool(holders["declared"]))


def _capped(items: list[str]) -> tuple[str, ...]:
    if len(items) <= EVIDENCE_CAP:
        return tuple(items)
    return (*items[:EVIDENCE_CAP], f"... and {len(items) - EVIDENCE_CAP} more")
