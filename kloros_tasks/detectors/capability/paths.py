"""Where a file sits in the import system, and how capability names compare.

Pure functions of relative POSIX paths and names; no file is read.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from kloros_tasks.detectors import layout

# Folders whose files are for developers, not the running program.
NOT_DEPLOYED = frozenset({"tests", "test", "t", "testing", "docs", "doc", "examples", "example",
                          "benchmarks", "bench", "scripts"})


def spelling(name: str) -> str:
    """The spelling-insensitive form of a capability name: ``Web-Search`` == ``web_search``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def module_of(path: str) -> tuple[str, bool]:
    """(dotted module name from the import root, is a package) of a .py path (see
    ``kloros_tasks.detectors.layout``: ``src/a/b.py`` is ``a.b``)."""
    names = layout.module_names(path)
    return (names[0] if names else ""), layout.is_package_file(path)


def nodes_of(path: str) -> set[str]:
    """Every importable location a .py file makes exist, as slash paths of its module
    names (``a/b/c.py`` -> ``a``, ``a/b``, ``a/b/c``); a file under a non-package
    directory such as ``src/`` is importable both with and without it.  A name that
    starts inside a folder of tests, docs, examples or scripts is importable only from
    there (``examples/eventlet/tasks.py`` is no top-level ``eventlet`` for the library):
    it makes only its location from the root (``examples/eventlet/tasks``)."""
    out: set[str] = set()
    dirs = path.split("/")[:-1]
    for name in layout.module_names(path):
        parts = name.split(".")
        packages = len(parts) - (0 if path.endswith("/__init__.py") or path == "__init__.py"
                                 else 1)
        base = dirs[:max(len(dirs) - packages, 0)]
        if base and NOT_DEPLOYED.intersection(p.lower() for p in base):
            continue
        out |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


def is_test_path(path: str) -> bool:
    """True for test modules: anything under tests/ or test/, test_*.py, *_test.py, conftest.py."""
    p = PurePosixPath(path)
    return (any(part in ("tests", "test") for part in p.parts[:-1])
            or p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py")
