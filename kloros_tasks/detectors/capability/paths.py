"""Where a file sits in the import system, and how capability names compare.

Pure functions of relative POSIX paths and names; no file is read.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath


def spelling(name: str) -> str:
    """The spelling-insensitive form of a capability name: ``Web-Search`` == ``web_search``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def module_of(path: str) -> tuple[str, bool]:
    """(dotted module name, is a package) of a .py path; a leading ``src/`` is dropped."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if len(parts) > 1 and parts[0] == "src":
        parts = parts[1:]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def nodes_of(path: str) -> set[str]:
    """Every importable location a .py file makes exist, as slash paths from the root
    (``a/b/c.py`` -> ``a``, ``a/b``, ``a/b/c``); files under ``src/`` add the same
    without the ``src/`` prefix, since an installed src layout imports them so."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    out = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    if len(parts) > 1 and parts[0] == "src":
        out |= {"/".join(parts[1:i]) for i in range(2, len(parts) + 1)}
    return out


def is_test_path(path: str) -> bool:
    """True for test modules: anything under tests/ or test/, test_*.py, *_test.py, conftest.py."""
    p = PurePosixPath(path)
    return (any(part in ("tests", "test") for part in p.parts[:-1])
            or p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py")
