"""Declaration files, parsed: which distributions a project says it needs.

Pure: text in, values out.  Three kinds of file are understood:

* ``pyproject.toml``: ``[project] dependencies`` and ``optional-dependencies``,
  PEP 735 ``[dependency-groups]``, and Poetry's ``[tool.poetry]`` dependency tables;
* ``requirements*.txt`` (and any ``.txt`` under a ``requirements/`` directory);
  lock files (every line pinned, pip-compile's ``# via``) and files for developers
  (``docs/requirements.txt``, ``requirements-test.txt``) declare, but not as runtime needs;
* ``setup.cfg``: ``[metadata] name`` and ``[options] install_requires``;
* an sdist's root ``PKG-INFO`` (core metadata): ``Name`` and ``Requires-Dist``, what
  the build backend made of ``setup.py``, ``setup.cfg`` or ``pyproject.toml``.

Distribution names are normalised per PEP 503, so ``PyYAML``, ``pyyaml`` and
``Py_Yaml`` are one name.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

# Requirement names as PEP 508 spells them: letters, digits, ".", "_", "-".
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_ENV_LINE = re.compile(r"^\s*#?\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Groups, extras and files whose names say "for developers only": their entries are
# never reported as unused, because test runners, linters and plugins are not imported.
_DEV_WORDS = re.compile(r"(^|[-_.])(dev|devel|develop|test|tests|testing|lint|docs?|typing|"
                        r"types|ci|mypy|style|check|bench)($|[-_.])")

PYPROJECT = "pyproject"
REQUIREMENTS = "requirements"
SETUP_CFG = "setup_cfg"
PKG_INFO = "pkg_info"
# Folders whose requirement files serve developers, never the running program.
_DEV_DIRS = frozenset({"docs", "doc", "tests", "test", "testing", "ci", ".github", "dev",
                       "benchmarks", "bench"})
# Requirement files that hold what any install of the tree needs (at the root, or in a
# requirements/ folder): their entries are ``required``; others (extras, examples,
# tooling) are optional even when they are runtime needs of some feature.
_REQUIRED_STEMS = frozenset({"requirements", "base", "default", "main", "prod", "production",
                             "runtime", "common", "install", "requirements-prod",
                             "requirements-production", "requirements-base"})
# pip-compile and friends: every requirement pinned, or "# via" provenance comments.
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*===?\s*[^,;\s]+\s*(;.*)?$")
# Distributions whose import name is not their own name, for declarations the target
# environment cannot answer for (not installed there); an installed one is read from
# its metadata instead.
IMPORT_NAMES: dict[str, tuple[str, ...]] = {
    "pyyaml": ("yaml",), "pillow": ("PIL",), "argon2-cffi": ("argon2",),
    "python-dateutil": ("dateutil",), "beautifulsoup4": ("bs4",), "scikit-learn": ("sklearn",),
    "opencv-python": ("cv2",), "opencv-python-headless": ("cv2",), "pyzmq": ("zmq",),
    "python-memcached": ("memcache",), "mysqlclient": ("MySQLdb",), "attrs": ("attr", "attrs"),
    "protobuf": ("google",), "setuptools": ("setuptools", "pkg_resources"),
    "python-dotenv": ("dotenv",), "pywin32": ("win32api", "win32con", "pywintypes"),
    "pyopenssl": ("OpenSSL",), "pycryptodome": ("Crypto",), "pyjwt": ("jwt",),
    "python-magic": ("magic",), "pyserial": ("serial",), "typing-extensions": (
        "typing_extensions",), "msgpack-python": ("msgpack",), "psycopg2-binary": ("psycopg2",),
    "psycopg-binary": ("psycopg",), "python-multipart": ("multipart",), "pygobject": ("gi",),
    "dnspython": ("dns",), "gitpython": ("git",), "pymupdf": ("fitz",),
    "google-api-python-client": ("googleapiclient",), "ruamel-yaml": ("ruamel",),
    "importlib-metadata": ("importlib_metadata",), "sentry-sdk": ("sentry_sdk",),
}


def normalize(name: str) -> str:
    """PEP 503 normal form of a distribution name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def import_names(dist: str) -> tuple[str, ...]:
    """The import names a distribution conventionally provides, without asking any
    environment: the known exceptions, else ``foo-bar`` -> ``foo_bar``."""
    dist = normalize(dist)
    if dist in IMPORT_NAMES:
        return IMPORT_NAMES[dist]
    # paho-mqtt provides paho, google-cloud-storage google, python-consul consul.
    names = {dist.replace("-", "_"), dist.split("-")[0], dist.removeprefix("python-")}
    return tuple(sorted({n.replace("-", "_") for n in names}))


def name_prefixes(dist: str, shortest: int = 5) -> tuple[str, ...]:
    """Import names a distribution may provide under a shorter form of its own name
    (``graphitesender`` provides ``graphitesend``): every prefix of at least
    ``shortest`` characters, as an import name."""
    name = normalize(dist).replace("-", "_")
    return tuple(name[:i] for i in range(shortest, len(name)))


@dataclass(frozen=True)
class Declared:
    """One distribution a declaration file names, where, and whether it is a runtime need
    (``main``: a runtime dependency, an optional extra included, that is not conditional;
    ``required``: one the project cannot run without, what any install brings)."""

    dist: str
    line: int
    main: bool
    required: bool = False


@dataclass(frozen=True)
class Declarations:
    """What one declaration file says.  ``authoritative`` is False when the file
    leaves dependencies to something this parser cannot read (a pyproject with
    ``dynamic = ["dependencies"]`` or no dependency table at all)."""

    declared: tuple[Declared, ...]
    project: str | None
    authoritative: bool


def is_dev_path(path: str) -> bool:
    """True for a declaration file that serves developers: a dev-named file, or one
    under docs/, tests/, ci/ and the like."""
    p = PurePosixPath(path)
    return is_dev_name(p.stem) or any(part.lower() in _DEV_DIRS for part in p.parts[:-1])


def file_kind(path: str) -> str | None:
    """Which declaration kind ``path`` is, or None when it is not one."""
    p = PurePosixPath(path)
    name = p.name
    if name == "pyproject.toml":
        return PYPROJECT
    if name.endswith(".txt") and (name.startswith("requirements")
                                  or "requirements" in p.parent.parts):
        return REQUIREMENTS
    if name == "setup.cfg":
        return SETUP_CFG
    if path == "PKG-INFO":  # the root's only: a *.egg-info/PKG-INFO is a build product
        return PKG_INFO
    return None


def is_dev_name(name: str) -> bool:
    """True for group, extra or file names that mean developer-only dependencies."""
    return bool(_DEV_WORDS.search(name.lower()))


def requirement_name(text: str) -> str | None:
    """The normalised distribution name of a PEP 508 string, or None if it names none."""
    text = text.strip()
    if not text or _URL.match(text):
        return None
    m = _REQ_NAME.match(text)
    return normalize(m.group(1)) if m else None


def _line_of(lines: list[str], needle: str) -> int:
    """First 1-based line mentioning ``needle`` (quoted or as a TOML key), else 1."""
    for i, line in enumerate(lines, 1):
        if f'"{needle}' in line or f"'{needle}" in line or line.strip().startswith(needle):
            return i
    return 1


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _pep621(doc: dict[str, Any]) -> tuple[list[tuple[str, bool]], bool]:
    """Requirement strings of ``[project]`` with their main flag, and authority."""
    project = doc.get("project")
    if not isinstance(project, dict):
        return [], False
    dynamic = project.get("dynamic", [])
    if isinstance(dynamic, list) and "dependencies" in dynamic:
        return [], False
    reqs = [(s, ";" not in s) for s in _strings(project.get("dependencies", []))]
    optional = project.get("optional-dependencies", {})
    if isinstance(optional, dict):
        for extra, values in optional.items():
            reqs += [(s, not is_dev_name(extra)) for s in _strings(values)]
    return reqs, True


def _groups(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """PEP 735 ``[dependency-groups]``: development needs by definition."""
    groups = doc.get("dependency-groups", {})
    if not isinstance(groups, dict):
        return []
    return [(s, False) for values in groups.values() for s in _strings(values)]


def _keys(table: Any) -> list[str]:
    return list(table) if isinstance(table, dict) else []


def _poetry(doc: dict[str, Any]) -> tuple[list[tuple[str, bool]], bool]:
    poetry = doc.get("tool", {}).get("poetry") if isinstance(doc.get("tool"), dict) else None
    if not isinstance(poetry, dict) or "dependencies" not in poetry:
        return [], False
    names = [(k, True) for k in _keys(poetry.get("dependencies")) if k.lower() != "python"]
    names += [(k, False) for k in _keys(poetry.get("dev-dependencies"))]
    groups = poetry.get("group")
    for group, body in (groups.items() if isinstance(groups, dict) else ()):
        if isinstance(body, dict):
            names += [(k, not is_dev_name(group)) for k in _keys(body.get("dependencies"))]
    return names, True


def parse_pyproject(text: str) -> Declarations:
    """Declarations of a pyproject.toml; raises ``tomllib.TOMLDecodeError`` on bad TOML."""
    doc = tomllib.loads(text)
    lines = text.splitlines()
    reqs, pep621 = _pep621(doc)
    reqs += _groups(doc)
    poetry_reqs, poetry = _poetry(doc)
    project = doc.get("project", {}).get("name") if isinstance(doc.get("project"), dict) else None
    if project is None and poetry:
        project = doc["tool"]["poetry"].get("name")
    required = {raw for raw in _strings((doc.get("project") or {}).get("dependencies", []))
                if ";" not in raw} if pep621 else set()
    if poetry:
        required |= set(_keys(doc["tool"]["poetry"].get("dependencies")))
    out: dict[str, Declared] = {}
    for raw, main in reqs + poetry_reqs:
        dist = requirement_name(raw)
        if dist is None:
            continue
        old = out.get(dist)
        out[dist] = Declared(dist, old.line if old else _line_of(lines, raw),
                             main or (old is not None and old.main),
                             raw in required or (old is not None and old.required))
    own = normalize(project) if isinstance(project, str) else None
    # Dependency groups alone say nothing about runtime needs, so they do not make
    # the file authoritative.
    return Declarations(tuple(out.values()), own, pep621 or poetry)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Requirement lines with comments removed and backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0]
        if line.lstrip().startswith("#"):
            line = ""
        if not pending:
            start = i
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def is_lock_file(text: str) -> bool:
    """True for a lock-style requirements file (pip-compile, ``pip freeze``): it pins
    transitive dependencies on purpose, so an entry nothing imports is not unused."""
    if re.search(r"^\s*#\s+via\b", text, re.M) or "--hash=" in text:
        return True
    reqs = [line.strip() for _, line in _logical_lines(text)
            if line.strip() and not line.strip().startswith(("-", "#"))]
    return len(reqs) >= 3 and all(_PINNED.match(r) for r in reqs)


def _is_required_file(path: str) -> bool:
    p = PurePosixPath(path)
    parents = p.parts[:-1]
    return p.stem.lower() in _REQUIRED_STEMS and parents in ((), ("requirements",))


def parse_requirements(path: str, text: str) -> Declarations:
    """Declarations of a requirements file: options (-r, -c, -e, --index-url ...),
    URLs and local paths are skipped; markers, extras and versions are stripped.
    Entries of dev files, lock files, and entries with a marker are not ``main``."""
    main = not is_dev_path(path) and not is_lock_file(text)
    required = main and _is_required_file(path)
    out: dict[str, Declared] = {}
    for line_no, line in _logical_lines(text):
        line = line.strip()
        if not line or line.startswith(("-", ".", "/", "~")) or _URL.match(line):
            continue
        if ("/" in line or "\\" in line) and " @ " not in line:
            continue  # a local path: pip installs it as a project, not by name
        dist = requirement_name(line.split(";", 1)[0])
        if dist is not None and dist not in out:
            runtime = main and ";" not in line
            out[dist] = Declared(dist, line_no, runtime, runtime and required)
    return Declarations(tuple(out.values()), None, True)


def parse_setup_cfg(text: str) -> Declarations:
    """Declarations of a setup.cfg: ``[metadata] name``, ``[options] install_requires``
    and ``[options.extras_require]``; raises ValueError when it is not INI."""
    import configparser  # noqa: PLC0415 -- only setup.cfg needs it

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
    lines = text.splitlines()
    project = parser.get("metadata", "name", fallback=None)
    found: list[tuple[str, bool]] = []
    for raw in parser.get("options", "install_requires", fallback="").splitlines():
        found.append((raw, ";" not in raw))
    if parser.has_section("options.extras_require"):
        for _extra, body in parser.items("options.extras_require"):
            found += [(raw, False) for raw in body.splitlines()]
    out: dict[str, Declared] = {}
    for raw, main in found:
        dist = requirement_name(raw.split(";", 1)[0])
        if dist is not None and dist not in out:
            out[dist] = Declared(dist, _line_of(lines, raw.strip()), main, main)
    authoritative = parser.has_option("options", "install_requires")
    return Declarations(tuple(out.values()), normalize(project) if project else None,
                        authoritative)


def is_root_file(path: str) -> bool:
    """True for a declaration file that speaks for the whole tree: at the root, or in
    a ``requirements/`` folder there."""
    return PurePosixPath(path).parts[:-1] in ((), ("requirements",))


def parse_pkg_info(text: str) -> Declarations:
    """Declarations of an sdist's root ``PKG-INFO``: ``Name`` and every ``Requires-Dist``;
    one with a marker (``; extra == "png"``, ``; python_version < "3.8"``) is optional,
    as in ``setup.cfg``.  Authoritative only when it lists a ``Requires-Dist``: metadata
    older than 1.2 lists none even for a project that has dependencies.  Lenient like
    the standard library's header parser: a malformed header is skipped, never raised."""
    from email.parser import HeaderParser  # noqa: PLC0415 -- only PKG-INFO needs it

    headers = HeaderParser().parsestr(text)
    lines = {}  # normalised name -> first line of a Requires-Dist naming it
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            break  # the description follows the first blank line
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "requires-dist":
            lines.setdefault(requirement_name(value.split(";", 1)[0]), i)
    out: dict[str, Declared] = {}
    # A value holding undecodable bytes comes back as an email Header: no requirement.
    for raw in headers.get_all("Requires-Dist") or []:
        if not isinstance(raw, str):
            continue
        raw = " ".join(raw.split())
        dist = requirement_name(raw.split(";", 1)[0])
        if dist is None:
            continue
        main = ";" not in raw or (dist in out and out[dist].main)
        out[dist] = Declared(dist, lines.get(dist, 1), main, main)
    name = headers.get("Name")
    project = " ".join(name.split()) if isinstance(name, str) else ""
    own = requirement_name(project) if project else None
    return Declarations(tuple(out.values()), own, bool(out))
