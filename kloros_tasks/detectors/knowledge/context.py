"""What a name in a document is, judged from where it stands.

Pure helpers for the KnowledgeDiscovery rules: which documents are history (release
notes, changelogs, deprecation timelines name removed code on purpose), which
Python objects a Sphinx document declares itself (``.. class::`` under
``.. module::``: Sphinx resolves references to them whether or not the code binds
that exact name), which code spans name a logger or title a section rather than
refer to code, and which Python modules are generated.
"""

from __future__ import annotations

import ast
import keyword
import posixpath
import re

from kloros_tasks.detectors.layout import import_root, module_names

HISTORY_DIRS = frozenset({"releases", "release-notes", "release_notes", "history", "changelog",
                          "changelogs", "changes", "whatsnew", "news"})
HISTORY_STEMS = ("changelog", "change_log", "change-log", "changes", "history", "news",
                 "release-notes", "release_notes", "releasenotes", "releases", "whatsnew",
                 "whats_new", "whats-new", "deprecation")

_PY_DIRECTIVE = re.compile(
    r"^(\s*)\.\.\s+(?:py:)?(module|currentmodule|class|exception|function|method|"
    r"classmethod|staticmethod|attribute|property|data|decorator|decoratormethod)::\s*(.*)$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_LOGGER_AFTER = re.compile(r"^\s*(?:logger|loggers|log\s+(?:record|message)s?)\b", re.I)
_LOGGER_BEFORE = re.compile(r"\b(?:logger|loggers)(?:\s+(?:named|called))?\s*$", re.I)
# What tools that generate Python write at the top (codec tables say "generated from").
_GENERATED = re.compile(
    r"\b(?:auto-?generated|generated\s+(?:by|from|with|automatically)|do\s+not\s+edit|"
    r"this\s+file\s+(?:is|was)\s+(?:automatically\s+)?generated)\b", re.I)
GENERATED_HEAD_LINES = 15
# Directories of code that is no library: examples, scripts, documentation helpers.
NOT_LIBRARY_DIRS = frozenset({"examples", "example", "samples", "demo", "demos", "scripts",
                              "docs", "doc", "benchmarks", "bench", "extra", "extras"})
_EXAMPLE_DEFINITION = re.compile(r"^\s*(?:>>>\s*|\.\.\.\s*)?(?:async\s+)?(?:def|class)\s+"
                                 r"([A-Za-z_]\w*)")
# The left side of a mapping (``old`` -> ``new``): the old name is named on purpose.
_ARROW_AFTER = re.compile(r"^[\s)\]}*]*(?:->|=>|\u2192|\u21d2)")
# A sentence that says the name is gone mentions it on purpose.
_SAYS_GONE = re.compile(r"\b(?:no\s+longer|removed|renamed|was\s+moved|were\s+moved|"
                        r"used\s+to|formerly|previously)\b", re.I)


def is_historical(path: str) -> bool:
    """Release notes, changelogs, "what's new" pages and deprecation timelines: under a
    releases/history/changelog directory, or named so (``CHANGES.md``, ``1.8.7.txt``
    under ``releases/``, ``deprecation.txt``)."""
    directory, base = posixpath.split(path.lower())
    if HISTORY_DIRS.intersection(directory.split("/")):
        return True
    return base.split(".", 1)[0].startswith(HISTORY_STEMS)


def declared_objects(lines: list[str]) -> list[tuple[int, str]]:
    """(line, dotted name) of the Python objects an rst document declares with py-domain
    directives, qualified by the current ``.. module::``/``.. currentmodule::`` and by
    an enclosing ``.. class::`` (``.. method:: render`` inside ``.. class:: Template``)."""
    module: str | None = None
    classes: list[tuple[int, str]] = []  # (indent, name relative to the module)
    out: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        match = _PY_DIRECTIVE.match(line)
        if match is None:
            continue
        indent, kind, argument = len(match.group(1)), match.group(2), match.group(3).strip()
        name = re.split(r"[\s(\[]", argument, maxsplit=1)[0] if argument else ""
        if kind in ("module", "currentmodule"):
            module = name if _DOTTED.match(name) else None
            classes.clear()
            continue
        if not _DOTTED.match(name):
            continue
        while classes and classes[-1][0] >= indent:
            classes.pop()
        relative = name
        if classes and not (name == classes[-1][1] or name.startswith(classes[-1][1] + ".")):
            relative = f"{classes[-1][1]}.{name}"  # Sphinx: a repeated class name is not doubled
        out.append((number, f"{module}.{relative}" if module else relative))
        if kind in ("class", "exception"):
            classes.append((indent, relative))
    return out


def sphinx_suffixes(tree) -> frozenset[str]:
    """The ``source_suffix`` a Sphinx ``conf.py`` assigns (a string, a list or tuple, or
    a dict keyed by suffix), read from its syntax tree: never executed."""
    found: set[str] = set()
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else (
            [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value else [])
        if not any(isinstance(t, ast.Name) and t.id == "source_suffix" for t in targets):
            continue
        value = stmt.value
        items = value.keys if isinstance(value, ast.Dict) else (
            value.elts if isinstance(value, ast.List | ast.Tuple | ast.Set) else [value])
        found = {i.value for i in items
                 if isinstance(i, ast.Constant) and isinstance(i.value, str)}
    return frozenset(found)


SPHINX_SETTINGS = frozenset({"extensions", "master_doc", "root_doc", "source_suffix",
                             "html_theme", "templates_path", "exclude_patterns"})


def is_sphinx_conf(tree) -> bool:
    """A ``conf.py`` that configures Sphinx: it assigns one of Sphinx's own settings."""
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else (
            [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id in SPHINX_SETTINGS for t in targets):
            return True
    return False


def names_no_code(lines: list[str], number: int, column: int) -> bool:
    """The code span at ``lines[number - 1][column:]`` names a logger (``the
    ``django.request`` logger``) or is a section title on its own, not a reference."""
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    span = re.match(r"(`+)(.*?)\1", line[column:])
    if span is None:
        return False
    before, after = line[:column], line[column + span.end():]
    if _LOGGER_AFTER.match(after) or _LOGGER_BEFORE.search(before):
        return True
    if before.strip() or after.strip():
        return False
    below = lines[number] if number < len(lines) else ""
    above = lines[number - 2] if number >= 2 else ""
    return bool(_UNDERLINE.match(below) or _UNDERLINE.match(above))


def is_generated(text: str) -> bool:
    """A module written by a tool (a "generated" notice in its first lines or its
    docstring's opening, as parser tables and most codec tables carry), or a codec
    module's registration boilerplate: nobody documents it by hand."""
    head = "\n".join(text.splitlines()[:GENERATED_HEAD_LINES])
    if _GENERATED.search(head):
        return True
    # A codec module: the table and the Codec/IncrementalEncoder/getregentry boilerplate
    # every encodings module repeats.
    return "def getregentry(" in text and "codecs.CodecInfo(" in text


def example_definitions(lines: list[str]) -> frozenset[str]:
    """Names the document's own examples define (``def make_toast():`` in a tutorial that
    has the reader write it): a reference to one is to the example, not to the tree."""
    return frozenset(m.group(1) for m in map(_EXAMPLE_DEFINITION.match, lines) if m)


def says_gone(lines: list[str], number: int) -> bool:
    """The line says what it names was removed, renamed or moved."""
    return 0 < number <= len(lines) and bool(_SAYS_GONE.search(lines[number - 1]))


def importable_names(path: str) -> list[str]:
    """The module's name when it is library code documents can name: its import root is
    the tree's root, a top-level ``src/`` or ``lib/``, or above the root (the root is a
    package); or it sits in namespace packages (no ``__init__.py``) from the root, outside
    the directories that hold examples, scripts and docs.  A module under
    ``examples/proj/`` is importable only from there: no top-level module of the tree.
    A name with a component that is no identifier is left out."""
    root = import_root(path)
    names = module_names(path)
    if root in (None, "", "src", "lib"):
        names = names[:1]
    elif NOT_LIBRARY_DIRS.isdisjoint(path.split("/")[:-1]):
        names = names[-1:]  # from the tree's root, through namespace packages
    else:
        return []
    return [m for m in names if all(
        p.isidentifier() and not keyword.iskeyword(p) for p in m.split("."))]


def is_old_name(lines: list[str], number: int, column: int) -> bool:
    """The code span at ``lines[number - 1][column:]`` is what a migration table maps
    from: the left side of ``old -> new`` on its line, or a list item holding only the
    span whose sub-items map ``.attr -> new`` (celery's "Aliases" pages)."""
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    span = re.match(r"(`+)(.*?)\1", line[column:])
    if span is None:
        return False
    if _ARROW_AFTER.match(line[column + span.end():]):
        return True
    if line[:column].strip() not in ("*", "-") or line[column + span.end():].strip():
        return False
    below = next((b for b in lines[number:] if b.strip()), "")
    indent = len(line) - len(line.lstrip())
    return len(below) - len(below.lstrip()) > indent and bool(
        re.search(r"(?:->|=>|\u2192|\u21d2)", below))
