"""CapabilityDiscovery: what the code expects to be able to do but cannot.

Five rules, each judged against the watched tree (through the index) and against an
``Environment``, the probed facts of the target interpreter, PATH and service
environment (see ``kloros_tasks.environment``):

* ``missing_module``: an absolute import resolved neither in the tree nor in the
  environment (guarded, ``TYPE_CHECKING`` and version/platform-conditional imports
  are ``low`` "optional capability unavailable");
* ``undeclared_dependency``: a third-party import no declaration file provides, and
  a declared runtime dependency that nothing imports (``low``);
* ``missing_capability``: a name imported from an in-tree tool package that nothing
  defines or registers;
* ``missing_executable``: a program run by literal name that is not on PATH;
* ``missing_env``: an environment variable read without a default that is neither
  set in the service environment, set by the tree, nor listed in an ``.env.example``.

Pure: nothing here reads files, ``os.environ`` or PATH; the Environment is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any

from .. import names
from ..questions import Question
from . import capability_deps as deps
from .base import FileFacts, IndexView, Touched
from .capability_facts import scan_python
from .capability_paths import is_test_path, module_of, nodes_of, spelling
from .capability_rules import evaluate_declarations, evaluate_python

PYTHON = "python"
DEFAULT_TOOL_PACKAGES = ("tools", "skills")
# Suffixes a producer routes to this detector; ``wants_path`` decides exactly.
SUFFIXES = (".py", ".toml", ".txt", ".example")


@dataclass(frozen=True)
class Environment:
    """What a probe found in the target environment, as plain JSON-able data.

    ``distributions`` maps an importable top-level name to the (PEP 503 normalised)
    distributions that provide it; ``installed`` holds every installed distribution;
    ``executables`` every executable basename on the target PATH; ``env_vars`` the
    names (never the values) set in the service environment.  ``fingerprint``
    changes when the interpreter, its site directories or PATH change.
    """

    modules: frozenset[str] = frozenset()
    stdlib: frozenset[str] = frozenset()
    distributions: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    installed: frozenset[str] = frozenset()
    executables: frozenset[str] = frozenset()
    env_vars: frozenset[str] = frozenset()
    python: str = ""
    site_dirs: tuple[str, ...] = ()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        # Normalise once, so callers may pass raw metadata names and plain iterables.
        dists = {k: frozenset(deps.normalize(d) for d in v) for k, v in self.distributions.items()}
        object.__setattr__(self, "distributions", dists)
        for name in ("modules", "stdlib", "executables", "env_vars"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        object.__setattr__(self, "installed", frozenset(deps.normalize(d) for d in self.installed))
        object.__setattr__(self, "site_dirs", tuple(self.site_dirs))

    def importable(self, top: str) -> bool:
        """True when the target interpreter can import top-level name ``top``."""
        return top in self.stdlib or top in self.modules or top in self.distributions

    def dists_of(self, top: str) -> frozenset[str]:
        """Installed distributions that provide top-level import name ``top``."""
        return self.distributions.get(top, frozenset())

    @cached_property
    def _tops(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for top, dists in self.distributions.items():
            for d in dists:
                out.setdefault(d, set()).add(top)
        return {d: frozenset(t) for d, t in out.items()}

    def tops_of(self, dist: str) -> frozenset[str]:
        """Import names distribution ``dist`` provides; for one that is not installed,
        the conventional guess (``foo-bar`` -> ``foo_bar``)."""
        dist = deps.normalize(dist)
        if dist in self._tops or dist in self.installed:
            return self._tops.get(dist, frozenset())
        return frozenset({dist.replace("-", "_")})

    def to_json(self) -> dict[str, Any]:
        """A JSON object that ``from_json`` turns back into an equal Environment."""
        return {
            "modules": sorted(self.modules),
            "stdlib": sorted(self.stdlib),
            "distributions": {k: sorted(v) for k, v in sorted(self.distributions.items())},
            "installed": sorted(self.installed),
            "executables": sorted(self.executables),
            "env_vars": sorted(self.env_vars),
            "python": self.python,
            "site_dirs": list(self.site_dirs),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Environment:
        """Rebuild an Environment from ``to_json`` output; raises ValueError if malformed."""
        try:
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not an Environment: {exc}") from exc


def file_kind(path: str) -> str | None:
    """``python``, a declaration kind (see capability_deps), or None if not ours."""
    if path.endswith(".py"):
        return PYTHON
    return deps.file_kind(path)


def wants_path(path: str) -> bool:
    """True when this detector has something to say about ``path``."""
    return file_kind(path) is not None


def _prefixes(dotted: str) -> set[str]:
    parts = dotted.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _error(exc: BaseException) -> FileFacts:
    line = getattr(exc, "lineno", None)
    where = f"line {line}: " if line else ""
    return FileFacts(error=f"{where}{type(exc).__name__}: {exc}"[:500])


class CapabilityDetector:
    """The CapabilityDiscovery file detector (see the module docstring for its rules).

    ``environment`` is the probed target; when its fingerprint changes, every file's
    questions may change, so the caller re-evaluates the whole tree.
    """

    name = names.CAPABILITY

    def __init__(self, environment: Environment,
                 tool_packages: Iterable[str] = DEFAULT_TOOL_PACKAGES) -> None:
        self.environment = environment
        self.tool_packages = frozenset(tool_packages)

    # --- phase 1 ----------------------------------------------------------------------
    def extract(self, path: str, text: str) -> FileFacts:
        """Facts of one file; a file that cannot be parsed gives ``FileFacts(error=...)``."""
        kind = file_kind(path)
        try:
            if kind == PYTHON:
                return self._extract_python(path, text)
            if kind == deps.PYPROJECT:
                return _declaration_facts(deps.parse_pyproject(text))
            if kind == deps.REQUIREMENTS:
                return _declaration_facts(deps.parse_requirements(path, text))
            if kind == deps.ENV_EXAMPLE:
                documented = deps.parse_env_example(text)
                return FileFacts(relations={"env_documented": frozenset(documented)})
        # tomllib.TOMLDecodeError is a ValueError; RecursionError comes from deep nesting.
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            return _error(exc)
        return FileFacts()

    def _extract_python(self, path: str, text: str) -> FileFacts:
        scan = scan_python(path, text, self.tool_packages)
        wanted_modules = {m for m, _, _ in scan.wants}
        relations = {
            "py": frozenset({"1"}),
            "node": frozenset(nodes_of(path)),
            "imports": frozenset(top for top, _, _, _ in scan.imports),
            "wants": frozenset(f"{m}:{n}" for m, n, _ in scan.wants if n),
            "wants_mod": frozenset(p for m in wanted_modules for p in _prefixes(m)),
            "wants_norm": frozenset(spelling(n) for _, n, _ in scan.wants if n),
            "registered": frozenset(scan.registered),
            "env_uses": frozenset(k for k, _ in scan.env_reads),
            "env_sets": frozenset(scan.env_sets),
            "mod_plain": frozenset(scan.modules_plain),
            "mod_guarded": frozenset(scan.modules_guarded),
        }
        module, _ = module_of(path)
        if any(part in self.tool_packages for part in module.split(".")):
            relations["tool_defines"] = frozenset(scan.defines)
        data = {
            "imports": [list(i) for i in scan.imports],
            "wants": [list(w) for w in scan.wants],
            "execs": [list(e) for e in scan.execs],
            "env_reads": [list(e) for e in scan.env_reads],
            "guarded_modules": scan.modules_guarded,
            "test": is_test_path(path),
        }
        return FileFacts(relations=relations, data=data)

    # --- phase 2 ----------------------------------------------------------------------
    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Other files whose questions may change because ``path``'s facts changed.

        Every lookup is exact: a new module location re-evaluates the files importing
        that name; a changed declaration re-evaluates the importers of what that
        distribution provides (and nothing else); a changed import re-evaluates the
        declaration files that declare its distributions.
        """
        out: set[str] = set()
        env = self.environment
        for relation, value in touched:
            if relation == "node":
                out |= self._node_affected(value, view)
            elif relation == "imports":
                dists = env.dists_of(value) | {deps.normalize(value)}
                out |= _union(view.who_many("declares", dists))
            elif relation == "declares":
                out |= _union(view.who_many("imports", env.tops_of(value)))
            elif relation == "depfile" and not view.who("depfile", "1") - {path}:
                out |= view.who("py", "1")  # the first or last declaration file
            elif relation == "tool_defines":
                module, _, name = value.partition(":")
                out |= view.who("wants_mod", module) if name == "*" else view.who("wants", value)
            elif relation == "registered":
                out |= view.who("wants_norm", value)
            elif relation in ("env_documented", "env_sets"):
                out |= view.who("env_uses", value)
            elif relation in ("mod_plain", "mod_guarded"):
                # The file that is module `value` may have become (or stopped being) optional.
                out |= {p for p in view.who("node", value.replace(".", "/"))
                        if module_of(p)[0] == value}
        out.discard(path)
        return out

    @staticmethod
    def _node_affected(node: str, view: IndexView) -> set[str]:
        parent, _, leaf = node.rpartition("/")
        importers = view.who("imports", leaf)
        if parent not in ("", "src"):
            # Only a sibling import resolves through a nested location.
            importers = frozenset(p for p in importers
                                  if str(PurePosixPath(p).parent) == parent)
        # A file's nodes include every prefix, so a module appearing at "a/b/c" also
        # touches "a/b", and "wants_mod" holds every prefix of a wanted module: this one
        # lookup reaches whoever imports "a.b.c" and whoever imports name "c" from "a.b".
        return set(importers) | view.who("wants_mod", node.replace("/", "."))

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now (empty when it is not indexed)."""
        facts = view.facts(path)
        if facts is None:
            return []
        kind = file_kind(path)
        if kind == PYTHON:
            return evaluate_python(path, facts, view, self.environment)
        if kind in (deps.PYPROJECT, deps.REQUIREMENTS):
            return evaluate_declarations(path, facts, view, self.environment)
        return []


def _declaration_facts(found: deps.Declarations) -> FileFacts:
    declared = [d for d in found.declared if d.dist != found.project]
    relations = {"declares": frozenset(d.dist for d in declared)}
    if found.authoritative:
        relations["depfile"] = frozenset({"1"})
    data = {"declared": [[d.dist, d.line, d.main] for d in declared]}
    return FileFacts(relations=relations, data=data)


def _union(found: Mapping[str, frozenset[str]]) -> set[str]:
    return set().union(*found.values()) if found else set()
