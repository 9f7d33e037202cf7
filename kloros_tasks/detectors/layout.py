"""Module names from the import root, the one place every Python rule gets them.

A file's module name is its path from its *import root*: the nearest ancestor
directory without an ``__init__.py``, as mypy and pyright name modules.  Scanning
Django's ``django/`` directory (a package) therefore names ``http/response.py``
``django.http.response``, not a top-level ``http`` that would shadow the standard
library, and ``src/pkg/mod.py`` is ``pkg.mod`` because ``src/`` is no package.  A
non-package directory between the tree's root and the import root (``scripts/``,
``src/``) is also importable as a namespace package when the root is on
``sys.path``, so the same file is known by that longer name too (an alias, after
the primary name).

Which directories are packages is a fact about the whole tree, not about one file's
text, so detectors do not take it as an argument: the caller (the scan, a worker)
sets the ``Layout`` of the tree around ``extract`` and ``evaluate`` with ``using``.
Without one, the historical rule applies: every directory below the root is a
package except a top-level ``src/``, and the root is none.  When an ``__init__.py``
appears or disappears, the names of the files below its directory change; the
engine re-extracts them (see ``kloros_tasks.work.engine``).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from kloros_tasks import names

EXTENSION_SUFFIXES = (".so", ".pyd")
PACKAGE_FILE = names.PACKAGE_FILE


class Layout:
    """Which directories of a tree are regular packages.

    ``is_package(directory)`` answers for a root-relative directory (``""`` is the root
    itself); ``root_package`` is the dotted name the root has when it is itself a
    package (``"django"`` for a scan of ``.../Django-5.2/django``), from the edge that
    can see the directories above the root.
    """

    def __init__(self, is_package: Callable[[str], bool] | None = None,
                 root_package: str = "") -> None:
        self._is_package = lru_cache(maxsize=4096)(is_package) if is_package else None
        self.root_package = root_package

    def is_package(self, directory: str) -> bool:
        if self._is_package is None:  # unknown layout: the historical rule
            return directory not in ("", "src")
        return self._is_package(directory)


UNKNOWN = Layout()
_CURRENT: ContextVar[Layout] = ContextVar("kloros_layout", default=UNKNOWN)


@contextmanager
def using(layout: Layout) -> Iterator[Layout]:
    """Name modules by ``layout`` inside the block."""
    token = _CURRENT.set(layout)
    try:
        yield layout
    finally:
        _CURRENT.reset(token)


def current() -> Layout:
    return _CURRENT.get()


def is_extension(path: str) -> bool:
    """A compiled extension module (``_speedups.cpython-311-x86_64-linux-gnu.so``)."""
    return path.endswith(EXTENSION_SUFFIXES)


def is_package_file(path: str) -> bool:
    return path == PACKAGE_FILE or path.endswith("/" + PACKAGE_FILE)


def _stem(name: str) -> str:
    if is_extension(name):
        return name.split(".")[0]  # the ABI tag is not part of the name
    return name[: -len(".py")] if name.endswith(".py") else name


def import_root(path: str, layout: Layout | None = None) -> str | None:
    """The root-relative directory ``path``'s module is named from: its nearest ancestor
    without ``__init__.py`` (``""`` for the tree's root); None when every directory up
    to and including the root is a package (the root's own package name then leads)."""
    layout = layout or current()
    dirs = path.split("/")[:-1]
    for depth in range(len(dirs), -1, -1):
        if not layout.is_package("/".join(dirs[:depth])):
            return "/".join(dirs[:depth])
    return None


def module_names(path: str, layout: Layout | None = None) -> tuple[str, ...]:
    """Dotted names a root-relative module path is importable as, primary first.

    The primary name is the path from the import root; aliases are the paths from each
    higher directory that is no package (namespace packages).  Empty when the file is
    the root's own ``__init__.py`` and the root's package name is not known.
    """
    layout = layout or current()
    *dirs, base = path.split("/")
    stem = [] if base == PACKAGE_FILE else [_stem(base)]
    root = import_root(path, layout)
    if root is None:  # every directory up to the root is a package: the root's name leads
        prefix = layout.root_package.split(".") if layout.root_package else []
        names = [".".join(prefix + dirs + stem)]
    else:
        depth = root.count("/") + 1 if root else 0
        names = [".".join(dirs[depth:] + stem)]
        names += [".".join(dirs[k:] + stem) for k in range(depth - 1, -1, -1)
                  if not layout.is_package("/".join(dirs[:k]))]
    return tuple(n for n in dict.fromkeys(names) if n)


def module_name(path: str, layout: Layout | None = None) -> str | None:
    """The primary module name of a ``.py`` path; None when it is not a ``.py`` file or
    a component of the name cannot be imported (not an identifier, or a keyword)."""
    if not path.endswith(".py"):
        return None
    found = module_names(path, layout)
    if not found:
        return None
    parts = found[0].split(".")
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        return None
    return found[0]


def package_directories(path: str) -> list[str]:
    """Root-relative directories whose package status decides ``path``'s names."""
    dirs = path.split("/")[:-1]
    return ["/".join(dirs[:k]) for k in range(len(dirs) + 1)]
