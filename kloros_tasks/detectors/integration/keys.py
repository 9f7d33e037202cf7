"""Module names of paths, and the index keys the IntegrationMonitor speaks in.

Every cross-file fact is a *contribution* of one file to one key.  A key is a
kind prefix and a name:

``s:<qualified name>``  a symbol: a module (``s:pkg.mod``), a top-level name
                        (``s:pkg.mod.Name``) or a class nested in a class.
``x:<qualified ref>``   "is subclassed through this reference": classes whose
                        base is written as that name, and aliases of it.
``t:<module>``          modules that ``from <module> import *``.
``a:<attribute>``       some file reads ``obj.<attribute>`` on an object that
                        is not ``self`` (existence only).
``w:<attribute>``       some file assigns ``obj.<attribute>`` on an object that
                        is not ``self`` (existence only).
``n:<dotted dir>``      a directory of the tree (namespace packages; existence only).
``su:/pp:/pd:<text>``   subscription prefixes, prefixes of published topics, and
                        literal prefixes of dynamically built topics (existence only).
``kc:/kp:<text>``       a topic-shaped string held in a module-level or class-body
                        constant, and its prefixes: a channel name kept in a constants
                        module may be published or subscribed elsewhere through that name.
``sr:<qualified name>`` a subscription given as a constant of another module
                        (``sub.subscribe(Topics.X)``; existence only).
``ca:``                 files holding a catch-all subscription (content: listed in the
                        evidence of publications nobody else consumes).
``wr:<name>``           a function, method or class named so passes a parameter through
                        as the topic of a publish or subscribe call (content: which).
``lr:/lh:<key>``        a Redis list key read (``brpop("jobs")``), and literal heads of
                        keys built at run time (existence only).

The index inverts four relations per file: ``def`` (keys it contributes), ``sig``
(``key#digest`` of each contribution that carries content, so a changed
contribution shows up as a touched pair), ``ptr`` (keys its contributions depend
on) and ``read`` (keys its own evaluation looks up first).  Every lookup is exact.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kloros_tasks.detectors import layout
from kloros_tasks.detectors.base import SIGNATURE

SYM, SUB, STAR, ATTR, WRITTEN, NSDIR = "s:", "x:", "t:", "a:", "w:", "n:"
SUBSCRIBED, PUBLISHED, PUBLISHED_DYN = "su:", "pp:", "pd:"
DECLARED, DECLARED_PREFIX = "kc:", "kp:"
SUB_REF, LIST_READ, LIST_HEAD = "sr:", "lr:", "lh:"
CATCH_ALL, WRAPPER = "ca:", "wr:"

# Keys whose readers only ask "does anyone contribute this?"; they carry no content.
EXISTENCE_KINDS = (ATTR, WRITTEN, NSDIR, SUBSCRIBED, PUBLISHED, PUBLISHED_DYN, DECLARED,
                   DECLARED_PREFIX, SUB_REF, LIST_READ, LIST_HEAD)

REL_DEF, REL_SIG, REL_PTR, REL_READ = "def", SIGNATURE, "ptr", "read"


def kind(key: str) -> str:
    """The kind prefix of a key (``"s:"``, ``"su:"``...)."""
    return key[: key.index(":") + 1]


def is_existence_key(key: str) -> bool:
    return key.startswith(EXISTENCE_KINDS)


def parent(dotted: str) -> str:
    """``"a.b.c" -> "a.b"``; ``""`` for a single component."""
    return dotted.rpartition(".")[0]


def last(dotted: str) -> str:
    return dotted.rpartition(".")[2]


def dotted_prefixes(dotted: str) -> list[str]:
    """``"a.b.c" -> ["a", "a.b", "a.b.c"]``."""
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def text_prefixes(text: str) -> list[str]:
    """Every prefix of a topic, the empty one and the topic itself included."""
    return [text[:i] for i in range(len(text) + 1)]


def sym_ptrs(ref: str) -> list[str]:
    """Keys a resolution of ``ref`` looks up: the symbol and its container."""
    keys = [SYM + ref]
    if "." in ref:
        keys.append(SYM + parent(ref))
    return keys


def sub_ptrs(ref: str) -> list[str]:
    """Keys a subclass search through ``ref`` looks up: the reference and the
    star-importers of its container (names re-exported by ``import *``)."""
    keys = [SUB + ref]
    if "." in ref:
        keys.append(STAR + parent(ref))
    return keys


EXTENSION_SUFFIXES = layout.EXTENSION_SUFFIXES


def is_extension(path: str) -> bool:
    """A compiled extension module (``_speedups.cpython-311-x86_64-linux-gnu.so``)."""
    return layout.is_extension(path)


def module_names(path: str) -> tuple[str, ...]:
    """Dotted module names a POSIX relative path is importable as, primary first,
    from its import root (see ``kloros_tasks.detectors.layout``):
    ``pkg/mod.py -> ("pkg.mod",)``, ``pkg/__init__.py -> ("pkg",)``,
    ``pkg/_c.abi3.so -> ("pkg._c",)``, ``src/pkg/mod.py -> ("pkg.mod", "src.pkg.mod")``.
    """
    return layout.module_names(path) or ("__init__",)


def is_package(path: str) -> bool:
    return layout.is_package_file(path)


def directories(path: str) -> list[str]:
    """Dotted names of the packages holding ``path`` under each of its names (for
    namespace packages)."""
    out: list[str] = []
    for name in layout.module_names(path):
        parts = name.split(".")
        end = len(parts) + 1 if is_package(path) else len(parts)
        out += [".".join(parts[:i]) for i in range(1, end)]
    return list(dict.fromkeys(out))


def resolve_relative(path: str, level: int, module: str | None) -> str | None:
    """The absolute module a ``from <dots><module> import`` in ``path`` names, or
    None when the dots climb above the top-level package."""
    if level == 0:
        return module
    own = module_names(path)[0]
    package = own if is_package(path) else parent(own)
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return None  # Python refuses to climb above the top-level package
    base = parts[: len(parts) - (level - 1)]
    if module:
        base += module.split(".")
    return ".".join(base) or None


# json.dumps with these arguments builds an encoder per call: one, kept, writes the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def digest(content: Any) -> str:
    """Short stable digest of a JSON-able contribution."""
    text = _CANONICAL.encode(content)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def sig_value(key: str, content: Any) -> str:
    return f"{key}#{digest(content)}"


def sig_key(value: str) -> str:
    """The key part of a ``sig`` relation value."""
    return value.rpartition("#")[0]
