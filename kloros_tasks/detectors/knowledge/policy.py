"""A tree's declared docstring policy, read from its configuration files.

``missing_docstrings`` asks only where the maintainer declared they want docstrings:
pydocstyle's missing-docstring codes (D100-D107) selected in ruff, a pydocstyle
configuration, flake8-docstrings' ``docstring-convention``, or an interrogate
section.  Each reader returns a ``Policy`` as plain JSON (it is stored in the index):

    {"tool": "ruff", "codes": ["D100", ...], "exclude": [glob, ...],
     "per_file": [[glob, [code, ...]], ...], "match": regex | None,
     "match_dir": regex | None, "fail_under": percent | None}

``codes`` are the D1xx codes the policy enforces; globs and regexes are relative to
the directory of the configuration file, which governs the Python files under it.
Pure: the text is parsed (``tomllib``, ``configparser``), never read from disk, and a
file that does not parse declares nothing.
"""

from __future__ import annotations

import configparser
import posixpath
import re
import tomllib
from fnmatch import fnmatchcase
from typing import Any

# D100 module, D101 class, D102 method, D103 function, D104 package, D105 magic
# method, D106 nested class, D107 __init__.
MISSING_CODES = ("D100", "D101", "D102", "D103", "D104", "D105", "D106", "D107")
# The conventions that leave a missing-docstring code out (pydocstyle's own tables).
CONVENTION_OFF = {"numpy": {"D107"}}
CONFIG_NAMES = ("pyproject.toml", "ruff.toml", ".ruff.toml", "setup.cfg", "tox.ini",
                ".flake8", ".pydocstyle", ".pydocstyle.ini", ".pydocstylerc",
                ".pydocstylerc.ini")
PYDOCSTYLE_MATCH = r"(?!test_).*\.py"  # pydocstyle's defaults
PYDOCSTYLE_MATCH_DIR = r"[^\.].*"

Policy = dict[str, Any]


def is_config(path: str) -> bool:
    """A file that may declare a docstring policy (by its name alone)."""
    return posixpath.basename(path) in CONFIG_NAMES


def read_policies(path: str, text: str) -> list[Policy]:
    """The docstring policies ``path`` declares (none when it does not parse)."""
    base = posixpath.basename(path)
    try:
        if base.endswith(".toml"):
            data = tomllib.loads(text)
            if base == "pyproject.toml":
                tool = data.get("tool", {})
                found = [_ruff(tool.get("ruff")), _pydocstyle(tool.get("pydocstyle")),
                         _interrogate(tool.get("interrogate"))]
            else:  # ruff.toml / .ruff.toml: ruff's settings at the top level
                found = [_ruff(data)]
        else:
            parser = configparser.RawConfigParser(strict=False, interpolation=None)
            parser.read_string(text)
            sections = {s.lower(): dict(parser.items(s)) for s in parser.sections()}
            found = [_pydocstyle(sections.get("pydocstyle")),
                     _flake8(sections.get("flake8"))]
    except (tomllib.TOMLDecodeError, configparser.Error, TypeError, AttributeError,
            ValueError, RecursionError):  # tomllib recurses into nested arrays
        return []  # a broken configuration declares nothing; its own tool says why
    return [p for p in found if p is not None and p["codes"]]


# --- per tool -------------------------------------------------------------------------

def _ruff(section: Any) -> Policy | None:
    """``[tool.ruff.lint]`` (or the older ``[tool.ruff]``) selecting D1xx codes."""
    if not isinstance(section, dict):
        return None
    lint = section.get("lint") if isinstance(section.get("lint"), dict) else {}
    merged = {**section, **lint}  # ruff reads lint settings from either place
    selected = _codes(merged.get("select", [])) | _codes(merged.get("extend-select", []))
    ignored = _codes(merged.get("ignore", [])) | _codes(merged.get("extend-ignore", []))
    pydocstyle = merged.get("pydocstyle") if isinstance(merged.get("pydocstyle"), dict) else {}
    ignored |= CONVENTION_OFF.get(str(pydocstyle.get("convention", "")).lower(), set())
    per_file = {**_table(merged.get("per-file-ignores")),
                **_table(merged.get("extend-per-file-ignores"))}
    return _policy("ruff", selected - ignored,
                   exclude=[*_strings(section.get("exclude")),
                            *_strings(section.get("extend-exclude"))],
                   per_file=[[g, sorted(_codes(c))] for g, c in per_file.items()])


def _pydocstyle(section: Any) -> Policy | None:
    """A pydocstyle section: ``select``, else all but ``ignore``, else a ``convention``
    (pep257 by default), then ``add-select``/``add-ignore``; ``match``/``match-dir``."""
    if not isinstance(section, dict):
        return None
    if "select" in section:
        codes = _codes(section["select"])
    elif "ignore" in section:
        codes = set(MISSING_CODES) - _codes(section["ignore"])
    else:
        convention = str(section.get("convention", "pep257")).strip().lower()
        codes = set(MISSING_CODES) - CONVENTION_OFF.get(convention, set())
    codes = (codes | _codes(section.get("add-select", []))) - _codes(
        section.get("add-ignore", []))
    return _policy("pydocstyle", codes,
                   match=str(section.get("match", PYDOCSTYLE_MATCH)).strip(),
                   match_dir=str(section.get("match-dir", PYDOCSTYLE_MATCH_DIR)).strip())


def _flake8(section: Any) -> Policy | None:
    """flake8-docstrings: a ``[flake8]`` section naming a ``docstring-convention``, or
    selecting or ignoring the plugin's D codes (celery ignores D102 and D104: the
    plugin runs, with its default pep257 convention, on everything else)."""
    if not isinstance(section, dict):
        return None
    listed = ("select", "extend-select", "ignore", "extend-ignore")
    names_d = any(_names_d_codes(section.get(k, "")) for k in listed) or any(
        _names_d_codes(" ".join(c)) for _, c in _per_file_ignores(section))
    if "docstring-convention" not in section and not names_d:
        return None
    codes = set(MISSING_CODES) - CONVENTION_OFF.get(
        section.get("docstring-convention", "pep257").strip().lower(), set())
    if "select" in section:
        codes &= _codes(section["select"]) | _codes(section.get("extend-select", ""))
    codes -= _codes(section.get("ignore", "")) | _codes(section.get("extend-ignore", ""))
    per_file = [[glob, sorted(_codes(listed_codes))]
                for glob, listed_codes in _per_file_ignores(section)]
    return _policy("flake8-docstrings", codes, exclude=_strings(section.get("exclude", "")),
                   per_file=per_file)


def _names_d_codes(value: str) -> bool:
    return any(re.fullmatch(r"D\d*", s.strip().upper()) for s in _strings(value))


def _per_file_ignores(section: dict) -> list[tuple[str, list[str]]]:
    """flake8's ``per-file-ignores``: ``glob[,glob...]: code[,code...]`` groups, on one
    line or several (``t/*,setup.py:`` then ``D,`` on the next)."""
    out: list[tuple[str, list[str]]] = []
    globs: list[str] = []
    codes: list[str] = []
    after_colon = False
    for token in re.findall(r"[^\s,:]+|:", section.get("per-file-ignores", "")):
        if token == ":":
            after_colon = True
        elif after_colon and re.fullmatch(r"[A-Z]+\d*", token):
            codes.append(token)
        else:
            if after_colon:  # a new group starts
                out += [(g, codes) for g in globs]
                globs, codes, after_colon = [], [], False
            globs.append(token)
    out += [(g, codes) for g in globs] if after_colon else []
    return out


def _interrogate(section: Any) -> Policy | None:
    """``[tool.interrogate]``: every definition, less what its ignore-* flags leave out;
    ``fail-under`` (default 80) is the coverage it asks of the tree."""
    if not isinstance(section, dict):
        return None
    codes = set(MISSING_CODES)
    if section.get("ignore-module"):
        codes -= {"D100", "D104"}
    if section.get("ignore-init-module"):
        codes -= {"D104"}
    if section.get("ignore-nested-classes"):
        codes -= {"D106"}
    if section.get("ignore-magic"):
        codes -= {"D105"}
    if section.get("ignore-init-method"):
        codes -= {"D107"}
    fail_under = section.get("fail-under", 80)
    return _policy("interrogate", codes, exclude=_strings(section.get("exclude")),
                   fail_under=float(fail_under) if isinstance(fail_under, int | float) else 80.0)


def _policy(tool: str, codes: set[str], *, exclude=(), per_file=(), match=None,
            match_dir=None, fail_under=None) -> Policy:
    return {"tool": tool, "codes": sorted(codes & set(MISSING_CODES)),
            "exclude": list(exclude), "per_file": [list(p) for p in per_file],
            "match": match, "match_dir": match_dir, "fail_under": fail_under}


def _codes(value: Any) -> set[str]:
    """The D1xx codes a list of selectors covers (``D``, ``D1``, ``D10``, ``D102``,
    ``ALL``); ``value`` is a TOML list or a comma/space-separated INI string."""
    selectors = _strings(value)
    out: set[str] = set()
    for selector in selectors:
        selector = selector.strip().upper()
        if selector == "ALL":
            out.update(MISSING_CODES)
        elif selector:
            out.update(c for c in MISSING_CODES if c.startswith(selector))
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [s for s in re.split(r"[,\s]+", value) if s]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    return []


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- judging one module ---------------------------------------------------------------

def _matches(pattern: str, rel: str) -> bool:
    """A ruff/flake8-style path glob: the whole path, a directory above it, or the
    file's name."""
    pattern = pattern.strip().removeprefix("./").rstrip("/")
    if not pattern:
        return False
    if fnmatchcase(rel, pattern) or fnmatchcase(posixpath.basename(rel), pattern):
        return True
    parts = rel.split("/")
    return any(fnmatchcase("/".join(parts[:k]), pattern) for k in range(1, len(parts)))


def enforced(policy: Policy, rel: str) -> set[str]:
    """The missing-docstring codes ``policy`` enforces on the module at ``rel``
    (relative to the policy's directory)."""
    if any(_matches(p, rel) for p in policy.get("exclude", [])):
        return set()
    match, match_dir = policy.get("match"), policy.get("match_dir")
    try:
        if match and not re.fullmatch(match, posixpath.basename(rel)):
            return set()
        if match_dir and not all(re.fullmatch(match_dir, d) for d in rel.split("/")[:-1]):
            return set()
    except re.error:
        pass  # a regex Python does not accept: judge the file as pydocstyle would not fail
    codes = set(policy.get("codes", []))
    for glob, ignored in policy.get("per_file", []):
        if _matches(glob, rel):
            codes -= set(ignored)
    return codes
