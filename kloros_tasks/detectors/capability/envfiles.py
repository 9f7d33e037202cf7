"""Files that set or document environment variables, and the names they mention.

Pure: a path decides the kind, text in, names out.  A variable named in any of
these files is one the tree knows about, so reading it is not a missing_env
question: ``.env`` files (``.env``, ``.env.local``, ``prod.env``, ``.env.example``),
systemd units (``Environment=``), compose files (``environment:``, ``${X}``),
Dockerfiles (``ENV``, ``ARG``), shell scripts (``export X=``, ``$X``) and the
documentation: Markdown and reST anywhere (``README.md``, ``docs/config.rst``), and
plain text under a docs folder (Sphinx sources) or as a ``README``/``INSTALL`` text.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

ENV_SOURCE = "env_source"
# Basename globs of each kind; routing (names.FILE_DETECTOR_SUFFIXES) lists the same.
ENV_FILE_GLOBS = ("*.env", ".env.*", "env.example", "*.env.example")
CONFIG_GLOBS = ("*.service", "docker-compose*.yml", "docker-compose*.yaml", "compose*.yml",
                "compose*.yaml", "Dockerfile*", "*.dockerfile", "*.sh", "*.bash")
_DOC_DIRS = frozenset({"docs", "doc", "documentation"})
DOC_SUFFIXES = (".md", ".rst")
# How a variable name looks wherever it is mentioned: upper case, digits, underscores.
_NAME = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![A-Za-z0-9_])")
_ASSIGNED = re.compile(r"^\s*#?\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def is_env_source(path: str) -> bool:
    """True when ``path`` is a file that may set or document environment variables."""
    p = PurePosixPath(path)
    name = p.name
    if any(fnmatchcase(name, g) for g in ENV_FILE_GLOBS + CONFIG_GLOBS):
        return True
    if name.endswith(DOC_SUFFIXES):
        return True
    return name.endswith(".txt") and (name.upper().startswith(("README", "INSTALL"))
                                      or any(part in _DOC_DIRS for part in p.parts[:-1]))


def mentioned(text: str) -> set[str]:
    """Every variable-like name the text mentions (``API_KEY``, ``HOME``), plus those it
    assigns in any case (``export http_proxy=``): a superset of what it sets or documents."""
    found = {m.group(0) for m in _NAME.finditer(text) if len(m.group(0)) > 1}
    for line in text.splitlines():
        m = _ASSIGNED.match(line)
        if m:
            found.add(m.group(1))
    return found
