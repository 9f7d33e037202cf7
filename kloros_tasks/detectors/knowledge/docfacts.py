"""A document's facts for KnowledgeDiscovery, and which of its references dangle.

A document *references* this tree with links (which must resolve to a file), code
paths (``pkg/mod.py``) and dotted names in code context: a code span or literal, an
interpreted-text role (``:class:``), an autodoc-style directive.  What it names in
prose is not read.  Not every name in code context is a reference, though:

* release notes, changelogs and deprecation timelines name removed code on purpose,
  so only their links are judged;
* a code span that names a logger (``the ``django.request`` logger``) or is a
  section title on its own is not a reference;
* a code path is judged only when its first directory is a top-level entry of the
  tree (``mysite/settings.py`` in a tutorial names the reader's project);
* a dotted name is judged only when its first part is a top-level module of the tree
  (see ``importable_names`` in the detector), and a plain reStructuredText literal
  only when the name breaks below a submodule: a bare ``django.request`` is a logger,
  a setting or a JavaScript namespace far more often than code (Sphinx projects link
  their API with roles, which stay judged);
* a name on a line saying it was removed, renamed or moved is mentioned on purpose,
  and a name the document's own examples define (a tutorial's ``def make_toast():``)
  is the example's;
* a reference to a Python object the documentation declares itself (``.. class::``
  under ``.. module::``) resolves for Sphinx to that declaration, whether or not the
  code binds that exact name (``django.contrib.admin.InlineModelAdmin``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

from kloros_tasks.detectors.base import FileFacts, IndexView
from kloros_tasks.detectors.knowledge import docrefs as _docrefs
from kloros_tasks.detectors.knowledge import release as _release
from kloros_tasks.detectors.knowledge.context import (
    declared_objects,
    example_definitions,
    is_historical,
    is_old_name,
    names_no_code,
    says_gone,
)

NAME, LITERAL_NAME, PATH, LINK = "name", "lname", "path", "link"
GLOB_DIR = "globdir"  # the fixed directory of each toctree glob pattern of a document
UNDER = "under"  # every directory holding a document
NAME_KINDS = (NAME, LITERAL_NAME)


def prefixes(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b", "a.b.c"]."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def top_of(path: str) -> frozenset[str]:
    """The ``top`` relation of a file: the top-level entry of the tree that holds it."""
    return frozenset({path.split("/", 1)[0]})


def path_top(text: str) -> str | None:
    """The top-level entry a code path lives under when read from the root; None for a
    path written relative to the document (``./x.py``, ``../pkg/x.py``)."""
    text = text.strip()
    if text.startswith("."):
        return None
    return posixpath.normpath(text).split("/", 1)[0]


def doc_facts(path: str, text: str, root: bool) -> FileFacts:
    """Facts of one document (``root``: an index root, never "unindexed")."""
    found = _docrefs.scan(path, text)
    lines = text.splitlines()
    history = is_historical(path)
    links: set[str] = set()
    entries: dict[tuple, tuple[int, list]] = {}  # (line, text, kind) -> (column, entry)
    globs: list[str] = []
    for target in found.targets:
        if target.style == "glob":
            globs += _docrefs.glob_patterns(path, target)
            continue
        resolved = _docrefs.resolve(path, target)
        if resolved is None:
            continue
        kind, candidates = resolved
        links.update(candidates if kind in ("file", "dir") else ())
        if kind == "file":
            raw = target.target.strip()
            entry = [target.line, raw, LINK, list(candidates)]
            entries.setdefault((target.line, raw, LINK), (target.column, entry))
    examples = example_definitions(lines)
    for code in [] if history else found.code:
        ref = _docrefs.code_reference(path, code.text)
        if ref is None or says_gone(lines, code.line) or (
                code.kind == "literal" and names_no_code(lines, code.line, code.column)) or (
                is_old_name(lines, code.line, code.column)):
            continue
        if ref[0] == NAME and ref[1][0].rpartition(".")[2] in examples:
            continue  # the document's own example defines it
        kind = ref[0]
        if kind == NAME and code.kind == "literal" and not path.endswith(".md"):
            kind = LITERAL_NAME
        entry = [code.line, code.text, kind, list(ref[1])]
        entries.setdefault((code.line, code.text, kind), (code.column, entry))
    # Not judged themselves: Sphinx pages declare conceptual objects (a RelatedManager,
    # a CustomUser, a Storage subclass's methods) that no module binds by that name.
    declared = [] if path.endswith(".md") or history else declared_objects(lines)
    ordered = [entry for _, entry in sorted(entries.values(), key=lambda c: (c[1][0], c[0]))]
    announced = [] if history else _release.announcements(lines)
    refs = ref_keys(ordered) | {f"{_release.RELEASE_REF}{name}" for _, name, _ in announced}
    refs.add(f"path:{package_init(path)}")  # a document beside the code (unindexed_doc)
    return FileFacts(
        relations={"defines": frozenset({f"path:{path}"}),
                   "declared": frozenset(p for _, name in declared for p in prefixes(name)),
                   "links": frozenset(links), "refs": frozenset(refs),
                   "top": top_of(path), GLOB_DIR: frozenset(map(_fixed_dir, globs)),
                   UNDER: frozenset(ancestors(path))},
        data={"kind": "doc", "root": root, "orphan": found.orphan, "refs": ordered,
              **({"globs": globs} if globs else {}),
              **({"announced": announced} if announced else {})},
    )


def package_init(path: str) -> str:
    """The ``__init__.py`` that would make ``path``'s directory a Python package."""
    return posixpath.join(posixpath.dirname(path), "__init__.py")


def ancestors(path: str) -> list[str]:
    """Every directory holding ``path``, the root ("") included."""
    dirs = path.split("/")[:-1]
    return ["/".join(dirs[:k]) for k in range(len(dirs) + 1)]


def _fixed_dir(pattern: str) -> str:
    """The directory a glob pattern's matches all live under (``docs/api/*`` -> ``docs/api``)."""
    parts = pattern.split("/")
    fixed = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    return "/".join(parts[: min(fixed, len(parts) - 1)])


def _glob_regex(pattern: str) -> re.Pattern:
    """Sphinx's toctree glob: ``*`` and ``?`` stay within a directory, ``**`` does not."""
    out = []
    for token in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(out) + r"\Z")


def globbed(path: str, view: IndexView) -> bool:
    """Some other document's toctree glob matches ``path``'s docname."""
    holders = view.who_many(GLOB_DIR, ancestors(path))
    docname = path.rsplit(".", 1)[0]
    for doc in set().union(*holders.values()) - {path}:
        facts = view.facts(doc)
        patterns = facts.data.get("globs", []) if facts else []
        if any(_glob_regex(p).match(docname) for p in patterns):
            return True
    return False


def ref_keys(entries: Iterable[list]) -> set[str]:
    """The keys a document's references look up (its ``refs`` relation)."""
    keys: set[str] = set()
    for _, text, kind, candidates in entries:
        if kind in NAME_KINDS:
            keys.update(prefixes(candidates[0]))
            continue
        keys.update(f"path:{c}" for c in candidates)
        if kind == LINK and _release.top_level_target(candidates):
            keys.add(_release.SDIST_KEY)  # an sdist may leave such a file out
        top = path_top(text) if kind == PATH else None
        if top is not None:
            keys.add(f"top:{top}")
    return keys


def _dunder(name: str) -> bool:
    """``a.B.__proxy__``: special names are made by the runtime, not bound in source."""
    last = name.rpartition(".")[2]
    return last.startswith("__") and last.endswith("__")


def reference_keys(entries: list) -> tuple[set[str], list[str], list[str]]:
    """What ``dangling_references`` looks up for ``entries``: the top directories of
    their paths ("top"), the prefixes of their dotted names ("defines", "declared",
    "opaque", "open") and their path keys ("defines")."""
    dotted_keys = sorted({p for e in entries if e[2] in NAME_KINDS for p in prefixes(e[3][0])})
    path_keys = sorted({f"path:{c}" for e in entries if e[2] not in NAME_KINDS for c in e[3]}
                       | {_release.SDIST_KEY})
    tops = {path_top(e[1]) for e in entries if e[2] == PATH} - {None}
    return tops, dotted_keys, path_keys


def dangling_references(entries: list, view: IndexView) -> list:
    """The document's references that name nothing in the tree.

    A dotted name is judged only when its first component is defined here (so
    ``os.path`` never is) and the longest defined prefix is a module or class whose
    attributes are all known (not only a variable, function or import, and not open).
    """
    tops, dotted_keys, path_keys = reference_keys(entries)
    present_tops = view.exists_many("top", tops) if tops else set()
    defined = view.who_many("defines", dotted_keys + path_keys)
    declared = view.who_many("declared", dotted_keys) if dotted_keys else {}
    opaque = view.who_many("opaque", dotted_keys) if dotted_keys else {}
    open_ = view.who_many("open", dotted_keys) if dotted_keys else {}
    out = []
    for entry in entries:  # in document order
        _, text, kind, candidates = entry
        if kind not in NAME_KINDS:
            top = path_top(text) if kind == PATH else None
            if top is not None and top not in present_tops:
                continue  # the reader's project (``mysite/settings.py``), not this tree
            if kind == LINK and defined[_release.SDIST_KEY] and _release.top_level_target(
                    candidates):
                continue  # packaging picks the top-level files an sdist holds
            if not any(defined[f"path:{c}"] for c in candidates):
                out.append(entry)
            continue
        chain = prefixes(candidates[0])
        if not defined[chain[0]] or defined[chain[-1]] or _dunder(chain[-1]):
            continue
        if declared[chain[-1]]:
            continue  # Sphinx resolves it to the page that declares it
        longest = next(p for p in reversed(chain) if defined[p])
        if kind == LITERAL_NAME and "." not in longest:
            continue  # breaks right below the top-level package: seldom code
        if not open_[longest] and defined[longest] - opaque[longest]:
            out.append(entry)
    return out
