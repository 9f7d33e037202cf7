"""CapabilityDiscovery: what the code expects to be able to do but cannot.

Six rules, each judged against the watched tree (through the index) and against an
``Environment``, the probed facts of the target interpreter, PATH and service
environment (see ``kloros_tasks.detectors.capability.environment``), asking only
what a maintainer would act on (docs/detectors.md has the details):

* ``missing_module``: a module-level, unconditional import of a deployed module that
  resolves neither in the tree nor in the environment, once per missing name;
* ``target_environment``: required dependencies a declaration file names that the
  environment lacks (one question instead of a missing module per importer);
* ``undeclared_dependency``: a third-party import no declaration file provides, and
  a required dependency that nothing imports or names (``low``);
* ``missing_capability``: a name imported from an in-tree tool package that nothing
  defines or registers;
* ``missing_executable``: a program run by literal name, unhandled, not on the PATH;
* ``missing_env``: a variable read where its absence raises that neither the service
  environment nor any file of the tree sets or documents.

Pure: nothing here reads files, ``os.environ`` or PATH; the Environment is passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from kloros_tasks import names
from kloros_tasks.detectors._kept import kept as keeping
from kloros_tasks.detectors.base import (
    FileFacts,
    IndexView,
    Touched,
    held_by_others,
    who_each,
)
from kloros_tasks.detectors.capability import deps, envfiles
from kloros_tasks.detectors.capability.facts import CONDITIONAL, GUARDED, scan_python
from kloros_tasks.detectors.capability.paths import is_test_path, module_of, nodes_of, spelling
from kloros_tasks.detectors.capability.rules import (
    evaluate_declarations,
    evaluate_python,
    is_stdlib,
    needed_tops,
    python_nodes,
)
from kloros_tasks.detectors.capability.target import Environment
from kloros_tasks.questions import Question

PYTHON = "python"
DEFAULT_TOOL_PACKAGES = ("tools", "skills")


def file_kind(path: str) -> str | None:
    """``python``, a declaration kind (see ``deps``), ``env_source`` (see ``envfiles``),
    or None if not ours."""
    if path.endswith(".py"):
        return PYTHON
    kind = deps.file_kind(path)
    if kind is None and envfiles.is_env_source(path):
        return envfiles.ENV_SOURCE
    return kind


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
                return _declaration_facts(path, deps.parse_pyproject(text))
            if kind == deps.REQUIREMENTS:
                return _declaration_facts(path, deps.parse_requirements(path, text))
            if kind == deps.SETUP_CFG:
                return _declaration_facts(path, deps.parse_setup_cfg(text))
            if kind == deps.PKG_INFO:
                return _declaration_facts(path, deps.parse_pkg_info(text))
            if kind == envfiles.ENV_SOURCE:
                return FileFacts(relations={"env_documented": frozenset(envfiles.mentioned(text))})
        # tomllib.TOMLDecodeError is a ValueError; RecursionError comes from deep nesting.
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            return _error(exc)
        return FileFacts()

    def opaque(self, path: str, error: str) -> FileFacts | None:
        """Facts of a module that never parsed here (newer syntax, say): it exists and
        may define any name, so nothing it would provide is "missing"."""
        if file_kind(path) != PYTHON:
            return None
        module, _ = module_of(path)
        return FileFacts(
            relations={"py": frozenset({"1"}), "node": frozenset(nodes_of(path)),
                       "tool_defines": frozenset({f"{module}:*"})},
            data={"imports": [], "wants": [], "execs": [], "env_reads": [],
                  "guarded_modules": {}, "test": is_test_path(path), "opaque": error})

    def _extract_python(self, path: str, text: str) -> FileFacts:
        scan = scan_python(path, text, self.tool_packages)
        wanted_modules = {m for m, _, _ in scan.wants}
        relations = {
            "py": frozenset({"1"}),
            "node": frozenset(nodes_of(path)),
            "imports": frozenset(top for top, _, _, _ in scan.imports),
            "needs": frozenset(needed_tops(path, scan.imports, scan.sys_path)),
            # names the tree itself treats as optional somewhere (see missing_module)
            "optional_tops": frozenset(top for top, _, _, kind in scan.imports
                                       if kind in (GUARDED, CONDITIONAL)),
            "wants": frozenset(f"{m}:{n}" for m, n, _ in scan.wants if n),
            "wants_mod": frozenset(p for m in wanted_modules for p in _prefixes(m)),
            "wants_norm": frozenset(spelling(n) for _, n, _ in scan.wants if n),
            "registered": frozenset(scan.registered),
            "env_uses": frozenset(k for k, _ in scan.env_reads),
            "env_sets": frozenset(scan.env_sets),
            "str_refs": frozenset(scan.string_refs),
            "mod_plain": frozenset(scan.modules_plain),
            "mod_guarded": frozenset(scan.modules_guarded),
        }
        module, _ = module_of(path)
        if any(part in self.tool_packages for part in module.split(".")):
            defines = set(scan.defines)
            if path.startswith("src/"):
                # `from src.tools.x import y` names the same file through the src folder.
                defines |= {f"src.{d}" for d in scan.defines}
            relations["tool_defines"] = frozenset(defines)
        data = {
            "imports": [list(i) for i in scan.imports],
            "wants": [list(w) for w in scan.wants],
            "execs": [list(e) for e in scan.execs],
            "env_reads": [list(e) for e in scan.env_reads],
            "guarded_modules": scan.modules_guarded,
            "test": is_test_path(path),
            "sys_path": scan.sys_path,
        }
        return FileFacts(relations=relations, data=data)

    # --- phase 2 ----------------------------------------------------------------------
    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Other files whose questions may change because ``path``'s facts changed.

        Every lookup is exact: a module location that appears or disappears (no other
        file holds it) re-evaluates the files whose imports resolve through it; a
        changed declaration re-evaluates the importers of what that distribution
        provides (and nothing else); a changed import re-evaluates the declaration
        files that declare its distributions, and the imported module's file when
        whether the tree imports it only under a guard changed; the first or last root
        declaration file with a required dependency re-evaluates PKG-INFO.
        """
        env = self.environment
        nodes = _flipped_nodes(path, {v for r, v in touched if r == "node"}, view)
        # relation -> values to look up: for the module locations (their holders are
        # filtered by folder, see _node_readers), and for the other touched values
        # (every holder is affected).  Asked together, read apart.
        node_asks: dict[str, set[str]] = defaultdict(set)
        for node in nodes:
            _ask_node_readers(node, node_asks, env)
        asks: dict[str, set[str]] = defaultdict(set)
        needed: set[str] = set()  # names whose missing_module question may change owner
        for relation, value in touched:
            if relation in ("imports", "str_refs"):
                asks["declares"] |= env.dists_of(value) | {deps.normalize(value)}
            elif relation in ("declares", "own_dist"):
                asks["imports"] |= set(env.tops_of(value))
            elif relation in ("declares_top", "optional_tops"):
                asks["imports"].add(value)
            elif relation == "needs":
                if not is_stdlib(value, env):  # the standard library is never missing
                    needed.add(value)
            elif relation in ("registered", "env_documented", "env_sets"):
                asks[_ASKED[relation]].add(value)
            elif relation in ("depfile", "root_required"):
                asks[relation].add("1")
                if relation == "root_required":
                    asks["pkg_info"].add("1")
            elif relation == "tool_defines":
                module, _, name = value.partition(":")
                if name == "*":
                    asks["wants_mod"].add(module)
                else:
                    asks["wants"].add(value)
        found = who_each(view, {r: asks.get(r, set()) | node_asks.get(r, set())
                                for r in asks.keys() | node_asks.keys()})  # one round trip
        out = _guard_status_affected(path, touched, view)
        for node in nodes:
            out |= _node_readers(node, found, env)
        for relation in ("declares", "imports", "wants_mod", "wants", "wants_norm", "env_uses"):
            out |= set().union(*(found[(relation, v)] for v in asks.get(relation, ())))
        # The owner of each name's missing_module question: its first needer other than
        # ``path`` (the first two are all it takes, however many need the name).
        for first, _count in view.first_many("needs", needed, 2).values() if needed else ():
            out.update([p for p in first if p != path][:1])
        if "depfile" in asks and not found[("depfile", "1")] - {path}:
            out |= view.who("py", "1")  # the first or last declaration file
        if "root_required" in asks and not found[("root_required", "1")] - {path}:
            out |= found[("pkg_info", "1")]  # PKG-INFO's questions change owner
        out.discard(path)
        return out

    def evaluate_many(self, paths: Iterable[str], view: IndexView) -> dict[str, list[Question]]:
        """``evaluate`` of each of ``paths`` over one view whose answers are kept (a
        name or a declaration file many of them ask about is looked up once), the
        Python files' first lookups made for all of them together."""
        paths = list(paths)
        kept = keeping(view)
        found = kept.owners(paths)
        python = [p for p, f in found.items() if f is not None and file_kind(p) == PYTHON]
        nodes = set().union(*(python_nodes(p, found[p]) for p in python))
        modules = {m for m in (module_of(p)[0] for p in python) if m}
        if nodes:
            kept.exists_many("node", sorted(nodes))
        if modules:  # whether a module's importers all guard it (missing_module)
            kept.exists_many("mod_plain", sorted(modules))
        return {path: self.evaluate(path, kept) for path in paths}

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now (empty when it is not indexed)."""
        facts = view.facts(path)
        if facts is None:
            return []
        kind = file_kind(path)
        if kind == PYTHON:
            return evaluate_python(path, facts, view, self.environment)
        if kind == deps.PKG_INFO and view.exists_many("root_required", ["1"]):
            # The file PKG-INFO was built from declares the same: it asks, not both.
            return []
        if kind in (deps.PYPROJECT, deps.REQUIREMENTS, deps.SETUP_CFG, deps.PKG_INFO):
            return evaluate_declarations(path, facts, view, self.environment)
        return []


def _declaration_facts(path: str, found: deps.Declarations) -> FileFacts:
    """The relations of a declaration file.  ``pkg_info`` marks an sdist's root PKG-INFO,
    ``root_required`` any other root declaration file with a required dependency: while
    one exists, PKG-INFO (built from it) still declares but asks nothing."""
    declared = [d for d in found.declared if d.dist != found.project]
    # The import names each declared distribution (and the project itself) conventionally
    # provides: an import of one of them that the target lacks is the environment's
    # shortfall (one target_environment question), not a missing module of the code.
    tops = {t for d in declared for t in deps.import_names(d.dist) + deps.name_prefixes(d.dist)}
    relations = {"declares": frozenset(d.dist for d in declared)}
    if found.project:
        relations["own_dist"] = frozenset({found.project})
        tops |= set(deps.import_names(found.project))
    relations["declares_top"] = frozenset(tops)
    if found.authoritative:
        relations["depfile"] = frozenset({"1"})
    if deps.file_kind(path) == deps.PKG_INFO:
        relations["pkg_info"] = frozenset({"1"})
    elif deps.is_root_file(path) and any(d.required for d in declared):
        relations["root_required"] = frozenset({"1"})
    data = {"declared": [[d.dist, d.line, d.main, d.required] for d in declared]}
    return FileFacts(relations=relations, data=data)


# The relation whose holders a touched value of these relations concerns.
_ASKED = {"registered": "wants_norm", "env_documented": "env_uses", "env_sets": "env_uses"}


def _flipped_nodes(path: str, nodes: set[str], view: IndexView) -> list[str]:
    """The module locations ``path`` added or removed that no other file holds.

    The rules read ``node`` only as "does some file make this location exist", so a
    location another file still holds changed nothing (a module joining an existing
    package, ``a/b.py`` beside ``a/b/c.py``).  ``view`` is the index after the
    update; without ``path`` its holders are the same before and after.
    """
    if not nodes:
        return []
    return sorted(set(nodes) - held_by_others(view, "node", nodes, path))


def _ask_node_readers(node: str, asks: dict[str, set[str]], env: Environment) -> None:
    """The lookups ``_node_readers`` needs for ``node``, added to ``asks``."""
    parent, _, leaf = node.rpartition("/")
    if not is_stdlib(leaf, env):
        asks["imports"].add(leaf)
    asks["wants_mod"].add(node.replace("/", "."))
    if parent:
        asks["wants"].add(f"{parent.replace('/', '.')}:{leaf}")


def _node_readers(node: str, found: Mapping[tuple[str, str], frozenset[str]],
                  env: Environment) -> set[str]:
    """Every file whose rules ask whether ``node`` exists (see capability_rules), from
    the holders ``found`` (``_ask_node_readers`` says which were looked up).

    ``resolve_imports`` asks for ``top`` and for ``<folder>/top`` of every folder
    holding the importer;
    ``missing_capability`` asks, for ``from m import n``, for ``m``'s first component,
    for ``m`` itself and for ``m/n`` (a submodule satisfying the name).  Each
    location is looked up on its own: a prefix of it may not have changed.
    """
    parent, _, leaf = node.rpartition("/")
    # A standard-library name resolves there first: an in-tree os.py changes nothing.
    importers = frozenset() if is_stdlib(leaf, env) else found[("imports", leaf)]
    if parent:
        # A nested location resolves only imports of files in its folder or below it
        # (see resolve_imports).
        importers = frozenset(p for p in importers if p.startswith(parent + "/"))
    # "wants_mod" holds every prefix of a wanted module, so this reaches whoever wants
    # module "a.b" or a module below it (and, for node "a", every "a..." module).
    out = set(importers) | found[("wants_mod", node.replace("/", "."))]
    if parent:
        out |= found[("wants", f"{parent.replace('/', '.')}:{leaf}")]
    return out


def _guard_status_affected(path: str, touched: Touched, view: IndexView) -> set[str]:
    """Module files whose "the tree imports me only under a guard" evidence changed.

    ``_guarded_by`` (capability_rules) gives nothing while some file imports the
    module plainly, else the files importing it under a guard; a module file is
    re-evaluated only when that answer differs before and after ``path``'s update.
    """
    modules = {v for r, v in touched if r in ("mod_plain", "mod_guarded")}
    if not modules:
        return set()
    located = view.who_many("node", {m.replace(".", "/") for m in modules})
    files = {m: {p for p in located[m.replace(".", "/")] if module_of(p)[0] == m}
             for m in modules}
    files = {m: found for m, found in files.items() if found}  # "os" is rarely in the tree
    # Only modules no file but ``path`` imports plainly can change: counted first, so a
    # module imported throughout costs a number, not the list of its importers.
    counts = view.count_many("mod_plain", files) if files else {}
    single = [m for m, n in counts.items() if n == 1]
    held = view.who_many("mod_plain", single) if single else {}
    plain = {m: held.get(m, frozenset()) for m, n in counts.items()
             if n == 0 or held.get(m) == {path}}
    alone = [m for m in files if m in plain]
    guarded = view.who_many("mod_guarded", alone) if alone else {}
    out: set[str] = set()
    for module in alone:
        now = _guard_evidence(plain[module], guarded[module])
        then = _guard_evidence(_before(path, "mod_plain", module, plain[module], touched),
                               _before(path, "mod_guarded", module, guarded[module], touched))
        if now != then:
            out |= files[module]
    return out


def _guard_evidence(plain: frozenset[str], guarded: frozenset[str]) -> frozenset[str]:
    """The importers ``_guarded_by`` lists as evidence, given the holders of both."""
    return frozenset() if plain else guarded


def _before(path: str, relation: str, value: str, holders: frozenset[str],
            touched: Touched) -> frozenset[str]:
    """The holders of ``value`` before ``path``'s update, from those after it: under
    the index lock only ``path``'s own membership changed, and only when the pair is
    in ``touched``."""
    return holders ^ {path} if (relation, value) in touched else holders
