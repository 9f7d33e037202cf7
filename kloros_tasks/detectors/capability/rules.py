"""The CapabilityDiscovery rules, judged from stored facts and the index.

Each function takes one file's facts, a read-only ``IndexView`` and the probed
``Environment`` and returns the Questions that file owns.  Subjects name the file
and the thing missing, never a line or a count, so ids stay stable while a file
is edited around them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts, Holders, IndexView, path_order
from kloros_tasks.detectors.capability.facts import OPTIONAL_KINDS, PLAIN
from kloros_tasks.detectors.capability.paths import is_test_path, module_of, spelling
from kloros_tasks.detectors.capability.scope import (
    adapts,
    import_folders,
    is_deployed_path,
    is_provided,
)
from kloros_tasks.questions import Question

if TYPE_CHECKING:
    from kloros_tasks.detectors.capability.target import Environment

MAX_EVIDENCE = 10
# Always importable, yet listed by neither pkgutil nor sys.stdlib_module_names.
ALWAYS_IMPORTABLE = frozenset({"__main__", "__future__", "builtins"})
STDLIB, TREE, ENV, MISSING = "stdlib", "tree", "env", "missing"


def _question(rule: str, subject: str, path: str, *, unlisted: int = 0, **kw) -> Question:
    """``unlisted``: evidence entries that would follow those given (counted, not read)."""
    evidence = tuple(kw.pop("evidence", ()))
    if len(evidence) + unlisted > MAX_EVIDENCE:
        more = len(evidence) + unlisted - MAX_EVIDENCE
        evidence = (*evidence[:MAX_EVIDENCE], f"... and {more} more")
    return Question(detector=names.CAPABILITY, rule=rule, subject=subject, owner=path,
                    paths=(path,), evidence=evidence, **kw)


def _grouped(rows: Iterable[list], key_len: int = 1) -> dict[tuple, list[list]]:
    out: dict[tuple, list[list]] = defaultdict(list)
    for row in rows:
        out[tuple(row[:key_len])].append(row)
    return out


def _has(view: IndexView, relation: str, values: Iterable[str]) -> set[str]:
    """The values that some indexed file holds under ``relation`` (one round trip; no
    holder is listed: a package folder's node has as many as it has files)."""
    return view.exists_many(relation, set(values))


def evaluate_python(path: str, facts: FileFacts, view: IndexView,
                    env: Environment) -> list[Question]:
    """Every question a Python file owns, over all five rules."""
    data = facts.data
    by_top = _grouped(data.get("imports", []))
    status = resolve_imports(path, {t for (t,) in by_top}, view, env)
    if data.get("test") or not is_deployed_path(path):
        # Tests, docs, examples and maintainers' scripts are not deployment: what they
        # import, run or read is the developers' business, not the target host's.
        return missing_capability(path, data.get("wants", []), view)
    # A module that needs an optional name the target lacks (a declared extra, a name
    # guarded elsewhere) is an optional integration: its other imports come with it.
    integration = optional_integration(by_top, status, view)
    return [
        *([] if integration else missing_module(path, by_top, status, view,
                                                sys_path=bool(data.get("sys_path")))),
        *([] if integration else undeclared_dependency(path, by_top, status, view, env)),
        *missing_capability(path, data.get("wants", []), view),
        *missing_executable(path, data.get("execs", []), env),
        *missing_env(path, data.get("env_reads", []), view, env),
    ]


def resolve_imports(path: str, tops: set[str], view: IndexView,
                    env: Environment) -> dict[str, str]:
    """Where each top-level name resolves: stdlib, the tree, the environment, or nowhere.

    In the tree means a module or package at the root (or under ``src/``), or in the
    importing file's folder or any folder above it: a script imports its siblings, and
    a test runner puts its own folder on ``sys.path`` (Django's ``tests/`` imports
    ``admin_views`` from ``tests/admin_views/``).
    """
    local = local_nodes(path, tops)
    present = _has(view, "node", set(tops).union(*local.values()) if local else set())
    status = {}
    for top in tops:
        if is_stdlib(top, env):
            status[top] = STDLIB
        elif top in present or local[top] & present:
            status[top] = TREE
        else:
            status[top] = ENV if env.importable(top) else MISSING
    return status


def local_nodes(path: str, tops: Iterable[str]) -> dict[str, set[str]]:
    """Each top-level name's folder nodes that would serve ``path``'s import of it: the
    name in the importing file's folder or any folder above it."""
    folders = import_folders(path)
    itself = str(PurePosixPath(path).with_suffix(""))  # `import sphinx` in .../sphinx.py
    return {t: {f"{folder}/{t}" for folder in folders} - {itself} for t in tops}


def python_nodes(path: str, facts: FileFacts) -> set[str]:
    """The "node" values ``evaluate_python`` looks up first for ``path``."""
    tops = {t for (t,) in _grouped(facts.data.get("imports", []))}
    local = local_nodes(path, tops)
    return tops.union(*local.values()) if local else tops


def is_stdlib(top: str, env: Environment) -> bool:
    """True when ``top`` resolves to the standard library, whatever the tree holds."""
    return top in env.stdlib or top in ALWAYS_IMPORTABLE


def _guarded_by(path: str, view: IndexView) -> list[str]:
    """Evidence that every in-tree import of ``path``'s module is guarded (try/except
    ImportError, TYPE_CHECKING...), one ``path:line`` entry per importer; else empty."""
    module = module_of(path)[0]
    if not module or view.exists_many("mod_plain", [module]):
        return []
    out = []
    for importer in sorted(view.who("mod_guarded", module)):
        facts = view.facts(importer)
        line = facts.data.get("guarded_modules", {}).get(module, 1) if facts else 1
        out.append(f"{importer}:{line} imports {module} only under a guard")
    return out


def _import_evidence(path: str, rows: list[list]) -> list[str]:
    return [f"{path}:{line} import {module} ({kind})" if kind != PLAIN
            else f"{path}:{line} import {module}" for _, module, line, kind in rows]


def missing_module(path: str, by_top: dict[tuple, list[list]], status: dict[str, str],
                   view: IndexView, *, sys_path: bool) -> list[Question]:
    """Module-level, unconditional imports that resolve nowhere: the module cannot even
    be loaded.  ``high``.

    Not asked (besides tests, docs, examples and scripts, see ``evaluate_python``): lazy
    imports (in a function or behind a runtime test: the idiom
    of optional features); optional imports (guarded, ``TYPE_CHECKING``, version or
    platform conditional, ``pytest.importorskip``, an ``except ImportError`` fallback,
    or in a module the tree only imports under a guard); a name the tree imports under
    a guard anywhere (the project treats it as optional); imports of a file that
    changes ``sys.path``; names a declaration of the tree provides, the project's
    own included (the target environment lacks them: ``target_environment`` asks that
    once); and any import of a module that needs such an optional name: it is an
    optional integration (``celery/contrib/sphinx.py`` needs sphinx, and docutils)."""
    # What the module needs (plain or lazy): a guarded-only import is optional anyway.
    missing = {top: rows for (top,), rows in by_top.items() if status[top] == MISSING
               and {kind for *_, kind in rows} - OPTIONAL_KINDS}
    if sys_path or not any(PLAIN in {kind for *_, kind in rows} for rows in missing.values()):
        return []
    if _guarded_by(path, view):
        return []
    missing = {t: rows for t, rows in missing.items()
               if PLAIN in {kind for *_, kind in rows} and not adapts(path, t)}
    # One question per missing name, owned by the first module that needs it (in path
    # order): a target without asgiref is one gap, not one per importer.  Only the
    # first needers are read, as many as the evidence lists, however many there are.
    needers = view.first_many("needs", set(missing), MAX_EVIDENCE + 1) if missing else {}
    out = []
    for top, rows in sorted(missing.items()):
        held = needers.get(top, Holders((), 0))
        others = [p for p in held.first if p != path]
        if others and path_order(others[0]) < path_order(path):
            continue
        # Not skipped: no needer comes before this one, so if it needs the name, it is
        # the first listed.
        count = held.count - (1 if held.first[:1] == (path,) else 0)
        evidence = _import_evidence(path, rows) + [f"{p} imports {top} too"
                                                   for p in others[:MAX_EVIDENCE]]
        out.append(_missing(path, top, evidence, count,
                            unlisted=count - len(others[:MAX_EVIDENCE])))
    return out


def optional_integration(by_top: dict[tuple, list[list]], status: dict[str, str],
                         view: IndexView) -> bool:
    """True when the module needs (plainly or lazily) a name the target lacks that the
    tree treats as optional: declared (in any group, or the project's own) or imported
    under a guard somewhere (``celery/concurrency/eventlet.py`` needs eventlet, an
    extra, and greenlet with it)."""
    needed = {top for (top,), rows in by_top.items() if status[top] == MISSING
              and {kind for *_, kind in rows} - OPTIONAL_KINDS}
    return bool(needed and (_has(view, "declares_top", needed)
                            or _has(view, "optional_tops", needed)))


def needed_tops(path: str, imports: list[tuple[str, str, int, str]], sys_path: bool) -> set[str]:
    """The names a deployed module cannot load without (see ``missing_module``): what
    the ``needs`` relation holds, so the first needer of a name owns its question."""
    if sys_path or is_test_path(path) or not is_deployed_path(path):
        return set()
    return {top for top, _, _, kind in imports if kind == PLAIN and not adapts(path, top)}


def _missing(path: str, top: str, evidence: list[str], others: int, *,
             unlisted: int) -> Question:
    who = f"{path} and {others} other module{'s' if others > 1 else ''}" if others else path
    return _question(
        "missing_module", f"{path}:{top}", path, evidence=evidence, unlisted=unlisted,
        hypothesis=f"MISSING_MODULE: {top}",
        question=(f"{who} import{'' if others else 's'} {top}, which neither the tree nor the "
                  f"target environment provides: should it be installed or the import removed?"),
        severity="high", confidence=0.9,
        suggestion=f"Install the distribution that provides '{top}' into the target "
                   "environment (and declare it), or remove the import.",
        extra={"module": top})


def undeclared_dependency(path: str, by_top: dict[tuple, list[list]], status: dict[str, str],
                          view: IndexView, env: Environment) -> list[Question]:
    """Third-party imports, installed in the target, that no declaration file of the
    tree provides; optional imports (guarded, conditional, ``TYPE_CHECKING``) are not
    asked about."""
    third_party = {t: env.dists_of(t) for (t,) in by_top if status[t] == ENV and env.dists_of(t)}
    if not third_party or not view.exists_many("depfile", ["1"]):
        return []  # a tree that declares nothing is not judged
    dists = set().union(*third_party.values())
    # The project's own distribution, installed into the target, provides its own names.
    declared = _has(view, "declares", dists) | _has(view, "own_dist", dists)
    out = []
    for top, dists in sorted(third_party.items()):
        if dists & declared:
            continue
        rows = by_top[(top,)]
        if PLAIN not in {kind for *_, kind in rows} or adapts(path, top):
            continue  # optional or lazy (the module loads without it), or its adapter
        dist = sorted(dists)[0]
        out.append(_question(
            "undeclared_dependency", f"{path}:{top}", path,
            evidence=_import_evidence(path, rows),
            hypothesis=f"UNDECLARED_DEPENDENCY: {top} ({', '.join(sorted(dists))})",
            question=(f"{path} imports {top} from {dist}, which no pyproject.toml or "
                      f"requirements file declares: should {dist} be declared?"),
            severity="medium", confidence=0.8,
            suggestion=f"Add '{dist}' to the project's dependencies (or an optional group).",
            extra={"module": top, "distributions": sorted(dists)}))
    return out


def missing_capability(path: str, wants: list[list], view: IndexView) -> list[Question]:
    """Names imported from an in-tree tool package that nothing defines or registers."""
    wants = [w for w in wants if w[0]]
    if not wants:
        return []
    modules = {m for m, _, _ in wants}
    nodes = {m.replace(".", "/") for m in modules} | {m.split(".")[0] for m in modules}
    nodes |= {f"{m.replace('.', '/')}/{n}" for m, n, _ in wants if n}
    present = _has(view, "node", nodes)
    defined = _has(view, "tool_defines", {f"{m}:{n}" for m, n, _ in wants if n}
                   | {f"{m}:*" for m in modules})
    registered = _has(view, "registered", {spelling(n) for _, n, _ in wants if n})
    gaps: dict[str, list[str]] = defaultdict(list)
    for module, name, line in wants:
        where = module.replace(".", "/")
        if module.split(".")[0] not in present:
            continue  # not an in-tree package: missing_module's business
        if where not in present:
            gaps[module].append(f"{path}:{line} import {module}")
        elif name and not ({f"{module}:{name}", f"{module}:*"} & defined
                           or f"{where}/{name}" in present or spelling(name) in registered):
            gaps[f"{module}.{name}"].append(f"{path}:{line} from {module} import {name}")
    return [_question(
        "missing_capability", f"{path}:{thing}", path, evidence=evidence,
        hypothesis=f"MISSING_CAPABILITY: {thing}",
        question=f"Should we implement {thing}, which {path} imports but nothing in the tree "
                 f"defines?",
        severity="medium", confidence=0.75,
        suggestion=f"Implement {thing} (or register a capability under that name), "
                   "or drop the import.",
        extra={"capability": thing}) for thing, evidence in sorted(gaps.items())]


def missing_executable(path: str, execs: list[list], env: Environment) -> list[Question]:
    """Programs run by literal name, where a failure to start them raises, that are not
    on the PATH judged (``env.path_label`` says whose).  Lookups (``shutil.which``),
    runs inside ``try/except OSError`` and platform branches are not recorded at all."""
    out = []
    for (program,), rows in sorted(_grouped(execs).items()):
        # An adapter class or function named after the program (ranger's
        # UeberzugImageDisplayer runs ueberzug) is chosen by configuration.
        rows = [r for r in rows if not adapts(r[2].replace(".", "/"), program)]
        if not rows or program in env.executables or adapts(path, program):
            continue
        where = env.path_label or "the target PATH"
        out.append(_question(
            "missing_executable", f"{path}:{program}", path,
            evidence=[f"{path}:{line} runs {program}" for _, line, _ in rows],
            hypothesis=f"MISSING_EXECUTABLE: {program}",
            question=(f"{path} runs {program}, which is not on {where}: should it be "
                      f"installed there or the call made optional?"),
            severity="medium", confidence=0.85,
            suggestion=f"Install '{program}' on the hosts that run this code, or handle its "
                       "absence (shutil.which, FileNotFoundError).",
            extra={"program": program, "judged_on": where}))
    return out


def missing_env(path: str, reads: list[list], view: IndexView,
                env: Environment) -> list[Question]:
    """Variables read where their absence raises (``os.environ["X"]``, or a ``get``
    whose None is used at once) that neither the service environment sets nor any
    file of the tree sets or mentions (code, .env files, units, compose files, shell
    scripts, documentation)."""
    by_name = _grouped(reads)
    unknown = {k for (k,) in by_name if k not in env.env_vars and not is_provided(k)}
    if not unknown:
        return []
    known = _has(view, "env_documented", unknown) | _has(view, "env_sets", unknown)
    return [_question(
        "missing_env", f"{path}:{name}", path,
        evidence=[f"{path}:{line} reads {name}" for _, line in by_name[(name,)]],
        hypothesis=f"MISSING_ENV: {name}",
        question=(f"{path} needs the environment variable {name}, but the service "
                  f"environment does not set it and nothing in the tree sets or documents "
                  f"it: should it be set or documented?"),
        severity="low", confidence=0.6,
        suggestion=f"Set {name} in the service environment, list it in .env.example or "
                   "the docs, or give the read a default.",
        extra={"variable": name}) for name in sorted(unknown - known)]


def evaluate_declarations(path: str, facts: FileFacts, view: IndexView,
                          env: Environment) -> list[Question]:
    """The declaration file's questions: runtime dependencies the target environment
    lacks (one question), and installed runtime dependencies nothing uses."""
    # Only what every install needs is judged: an extra often serves a dependency
    # (celery's zeromq extra installs pyzmq for kombu's transport), not the tree.
    required = [d[:3] for d in facts.data.get("declared", []) if d[3:4] == [True]]
    return [*target_environment(path, required, env),
            *unused_dependency(path, required, view, env)]


def target_environment(path: str, declared: list[list], env: Environment) -> list[Question]:
    """One question when the target lacks runtime dependencies the file declares: the
    environment judged is not (or not fully) the one the tree runs in, and every import
    of those distributions would otherwise be a missing module of its own."""
    lacking = sorted(dist for dist, _, _ in declared if dist not in env.installed)
    if not lacking or not env.stdlib:  # no stdlib: not a probed environment at all
        return []
    shown = ", ".join(lacking[:MAX_EVIDENCE]) + (" ..." if len(lacking) > MAX_EVIDENCE else "")
    lines = {dist: line for dist, line, _ in declared}
    return [_question(
        "target_environment", f"{path}:environment", path,
        evidence=[f"{path}:{lines[d]} declares {d}" for d in lacking],
        hypothesis=f"TARGET_ENVIRONMENT_INCOMPLETE: {len(lacking)}/{len(declared)}",
        question=(f"The target environment ({env.python or 'the worker interpreter'}) lacks "
                  f"{len(lacking)} of the {len(declared)} runtime dependencies {path} declares "
                  f"({shown}): is it the environment this tree runs in?"),
        severity="medium" if 2 * len(lacking) > len(declared) else "low", confidence=0.8,
        suggestion="Install the declared dependencies into the target environment, or point "
                   "KLOROS_TARGET_PYTHON at the tree's own interpreter (a .venv/ in the "
                   "root is used by default).",
        extra={"missing": lacking})]


def unused_dependency(path: str, declared: list[list], view: IndexView,
                      env: Environment) -> list[Question]:
    """Declared runtime dependencies, installed in the target, whose import names
    nothing in the tree imports or names in a string (``INSTALLED_APPS``), and that
    are not used without an import (plugins with entry points, data such as tzdata,
    command-line tools)."""
    judged = {dist: env.tops_of(dist) for dist, _, _ in declared
              if dist in env.installed and dist not in env.unimported}
    judged = {dist: tops for dist, tops in judged.items() if tops}
    wanted = set().union(*judged.values()) if judged else set()
    used = _has(view, "imports", wanted) | _has(view, "str_refs", wanted)
    out = []
    for dist, line, _ in sorted(declared):
        if dist not in judged or judged[dist] & used:
            continue
        out.append(_question(
            "undeclared_dependency", f"{path}:unused:{dist}", path,
            evidence=[f"{path}:{line} declares {dist}"],
            hypothesis=f"UNUSED_DEPENDENCY: {dist}",
            question=(f"{path} declares {dist}, but nothing in the tree imports "
                      f"{', '.join(sorted(judged[dist]))}: is the dependency still needed?"),
            severity="low", confidence=0.6,
            suggestion=f"Remove '{dist}' from {path}, or move it to a development group.",
            extra={"distribution": dist}))
    return out
