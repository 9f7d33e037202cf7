"""KnowledgeDiscovery: documentation the tree does not keep up.

Rules (see docs/detectors.md for the full statement of each):

``missing_docstrings``
    a Python module with more public definitions lacking a docstring than the threshold;
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

so ``affected`` needs only exact look-ups: a changed ``links`` value re-evaluates
that document when it gained its first or lost its last inbound link, a changed
``defines``/``opaque``/``open`` value the documents whose ``refs`` hold it when what
the rules read of that name changed (a module joining a package leaves the package
defined: its documents keep their answers).
"""

from __future__ import annotations

import keyword
import posixpath
import sys
from collections.abc import Iterable
from fnmatch import fnmatchcase

from kloros_tasks import names
from kloros_tasks.detectors._pyast import (
    Definitions,
    is_test_path,
    parse,
    undocumented,
)
from kloros_tasks.detectors.base import FileFacts, IndexView, Touched
from kloros_tasks.detectors.knowledge import docrefs as _docrefs
from kloros_tasks.detectors.layout import module_names
from kloros_tasks.questions import Question

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"  # what parses here
DEFAULT_DOCSTRING_THRESHOLD = 3  # the original daemon's "more than 3"
EVIDENCE_CAP = 20
MANY_MISSING = 10  # above this many undocumented definitions: medium severity
SUFFIXES = (".py", ".md", ".rst", ".txt")

# .txt files that are data or packaging metadata, not documentation (lower-case globs).
NOT_DOC_TXT = (
    "*requirements*.txt", "*constraints*.txt", "license*.txt", "licence*.txt",
    "copying*.txt", "robots.txt", "cmakelists.txt", "top_level.txt", "entry_points.txt",
    "sources.txt", "dependency_links.txt", "requires.txt", "namespace_packages.txt",
    "runtime.txt", "native_libs.txt",
)
NOT_DOC_DIRS = frozenset({"tests", "test", "fixtures", "testdata", "test_data",
                          "node_modules", "site-packages"})
ROOT_STEMS = ("README", "INDEX")  # at any depth
TOP_LEVEL_ROOTS = ("CHANGELOG", "CHANGES", "HISTORY", "CONTRIBUTING", "LICENSE", "LICENCE",
                   "AUTHORS", "NOTICE", "CODE_OF_CONDUCT", "SECURITY")
NAME_RELATIONS = ("defines", "opaque", "open")


def is_doc(path: str) -> bool:
    """A .md/.rst/.txt file that is documentation: not under a hidden, test, fixture or
    packaging-metadata directory, and not a requirements/licence/metadata .txt."""
    if not path.endswith(_docrefs.DOC_SUFFIXES):
        return False
    directory, base = posixpath.split(path)
    for part in directory.split("/") if directory else ():
        if part.startswith(".") or part in NOT_DOC_DIRS:
            return False
        if part.endswith((".egg-info", ".dist-info")):
            return False
    return not (base.endswith(".txt") and any(fnmatchcase(base.lower(), p) for p in NOT_DOC_TXT))


def is_index_root(path: str) -> bool:
    """README.* and index.* anywhere; CHANGELOG*, CONTRIBUTING*, LICENSE*... at the top."""
    base = posixpath.basename(path).upper()
    if base.split(".", 1)[0] in ROOT_STEMS:
        return True
    return "/" not in path and base.startswith(TOP_LEVEL_ROOTS)


def prefixes(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b", "a.b.c"]."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


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
            return _python_facts(path, text)
        if is_doc(path):
            return _doc_facts(path, text)
        if path.endswith(SUFFIXES):  # a .txt that is not a doc: it exists, nothing more
            return FileFacts(relations={"defines": frozenset({f"path:{path}"})},
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
            relations={"defines": frozenset(defines), "open": frozenset(modules)},
            data={"kind": "unparsable", "error": error, "python": PYTHON_VERSION})

    # --- phase 2 --------------------------------------------------------------------

    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Documents whose questions can change: link targets that gained their first
        or lost their last inbound link, and documents naming a key whose standing
        (defined, open, defined other than opaquely) changed."""
        out = _newly_linked_or_unlinked(path, touched, view)
        out |= _readers_of_changed_keys(path, touched, view)
        out.discard(path)
        return out

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now."""
        facts = view.facts(path)
        if facts is None:
            return []
        kind = facts.data.get("kind")
        if kind == "py":
            return self._missing_docstrings(path, facts.data.get("missing", []))
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
        if view.who("links", path) - {path}:
            return []
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
        dangling = _dangling(entries, view) if entries else []
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


def _newly_linked_or_unlinked(path: str, touched: Touched, view: IndexView) -> set[str]:
    """Link targets ``_unindexed`` judges whose "some other document links here" flipped.

    Only documents that are not index roots are judged (both follow from the path),
    and only ``path``'s own link changed, so a target another document still links
    to keeps its answer.
    """
    targets = {v for r, v in touched if r == "links" and v != path
               and is_doc(v) and not is_index_root(v)}
    if not targets:
        return set()
    return {t for t, linkers in view.who_many("links", targets).items()
            if not linkers - {t, path}}


def _readers_of_changed_keys(path: str, touched: Touched, view: IndexView) -> set[str]:
    """Documents naming a key whose standing, all ``_dangling`` reads of it, changed.

    A module joining a package adds the package's name to ``defines`` again, which
    leaves the package defined as before: its documents keep their answers.
    """
    keys = {v for r, v in touched if r in NAME_RELATIONS}
    readers = {k: who for k, who in view.who_many("refs", keys).items() if who} if keys else {}
    if not readers:
        return set()
    holders = {rel: view.who_many(rel, readers) for rel in NAME_RELATIONS}
    out: set[str] = set()
    for key, documents in readers.items():
        now = {rel: holders[rel][key] for rel in NAME_RELATIONS}
        then = {rel: who ^ {path} if (rel, key) in touched else who for rel, who in now.items()}
        if _standing(now) != _standing(then):
            out |= documents
    return out


def _standing(holders: dict[str, frozenset[str]]) -> tuple[bool, bool, bool]:
    """What ``_dangling`` reads of one key: is it defined, open, defined by a file that
    does not hold it as opaque (a module or class whose attributes are known)."""
    defined = holders["defines"]
    return bool(defined), bool(holders["open"]), bool(defined - holders["opaque"])


def _capped(items: list[str]) -> tuple[str, ...]:
    if len(items) <= EVIDENCE_CAP:
        return tuple(items)
    return (*items[:EVIDENCE_CAP], f"... and {len(items) - EVIDENCE_CAP} more")


def _dangling(entries: list, view: IndexView) -> list:
    """The doc's references that name nothing in the tree.

    A dotted name is judged only when its first component is defined here (so
    ``os.path`` never is) and the longest defined prefix is a module or class whose
    attributes are all known (not only a variable, function or import, and not open).
    """
    dotted_keys = sorted({p for e in entries if e[2] == "name" for p in prefixes(e[3][0])})
    path_keys = sorted({f"path:{c}" for e in entries if e[2] != "name" for c in e[3]})
    defined = view.who_many("defines", dotted_keys + path_keys)
    opaque = view.who_many("opaque", dotted_keys) if dotted_keys else {}
    open_ = view.who_many("open", dotted_keys) if dotted_keys else {}
    out = []
    for entry in entries:  # in document order
        _, _, kind, candidates = entry
        if kind != "name":
            if not any(defined[f"path:{c}"] for c in candidates):
                out.append(entry)
            continue
        chain = prefixes(candidates[0])
        if not defined[chain[0]] or defined[chain[-1]]:
            continue
        longest = next(p for p in reversed(chain) if defined[p])
        if not open_[longest] and defined[longest] - opaque[longest]:
            out.append(entry)
    return out


# --- documents ------------------------------------------------------------------------------

def _doc_facts(path: str, text: str) -> FileFacts:
    found = _docrefs.scan(path, text)
    links: set[str] = set()
    entries: dict[tuple, tuple[int, list]] = {}  # (line, text, kind) -> (column, entry)
    for target in found.targets:
        resolved = _docrefs.resolve(path, target)
        if resolved is None:
            continue
        kind, candidates = resolved
        links.update(candidates if kind in ("file", "dir") else ())
        if kind == "file":
            raw = target.target.strip()
            entry = [target.line, raw, "link", list(candidates)]
            entries.setdefault((target.line, raw, "link"), (target.column, entry))
    for code in found.code:
        ref = _docrefs.code_reference(path, code.text)
        if ref is not None:
            entry = [code.line, code.text, ref[0], list(ref[1])]
            entries.setdefault((code.line, code.text, ref[0]), (code.column, entry))
    ordered = [entry for _, entry in sorted(entries.values(), key=lambda c: (c[1][0], c[0]))]
    return FileFacts(
        relations={"defines": frozenset({f"path:{path}"}), "links": frozenset(links),
                   "refs": frozenset(_ref_keys(ordered))},
        data={"kind": "doc", "root": is_index_root(path), "orphan": found.orphan,
              "refs": ordered},
    )


def _ref_keys(entries: Iterable[list]) -> set[str]:
    keys: set[str] = set()
    for _, _, kind, candidates in entries:
        if kind == "name":
            keys.update(prefixes(candidates[0]))
        else:
            keys.update(f"path:{c}" for c in candidates)
    return keys


# --- Python ---------------------------------------------------------------------------------

def importable_names(path: str) -> list[str]:
    """The names a module is importable as (see ``kloros_tasks.detectors.layout``),
    those with a component that is no identifier left out."""
    return [m for m in module_names(path) if all(
        p.isidentifier() and not keyword.iskeyword(p) for p in m.split("."))]


def _python_facts(path: str, text: str) -> FileFacts:
    tree, error = parse(text)
    if tree is None:
        return FileFacts(error=error)
    try:
        found = Definitions()
        for module in importable_names(path):  # the primary name, then namespace aliases
            found.defines.update(prefixes(module))
            found.body(tree.body, module)
        missing = [] if is_test_path(path) else undocumented(path, tree)
    except RecursionError:  # the parser's limits make this unlikely, not impossible
        return FileFacts(error="line 1: too deeply nested to analyse")
    found.defines.add(f"path:{path}")
    return FileFacts(
        relations={"defines": frozenset(found.defines), "opaque": frozenset(found.opaque),
                   "open": frozenset(found.open)},
        data={"kind": "py", "missing": missing},
    )
