"""The five CapabilityDiscovery rules, judged from stored facts and the index.

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
from kloros_tasks.detectors.base import FileFacts, IndexView
from kloros_tasks.detectors.capability.facts import OPTIONAL_KINDS, PLAIN, RUN, TYPING
from kloros_tasks.detectors.capability.paths import module_of, spelling
from kloros_tasks.questions import Question

if TYPE_CHECKING:
    from kloros_tasks.detectors.capability.target import Environment

MAX_EVIDENCE = 10
# Always importable, yet listed by neither pkgutil nor sys.stdlib_module_names.
ALWAYS_IMPORTABLE = frozenset({"__main__", "__future__", "builtins"})
# Modules that exist only in type stubs: importing them under TYPE_CHECKING is correct.
STUB_ONLY = frozenset({"_typeshed"})
STDLIB, TREE, ENV, MISSING = "stdlib", "tree", "env", "missing"


def _question(rule: str, subject: str, path: str, **kw) -> Question:
    evidence = tuple(kw.pop("evidence", ()))
    if len(evidence) > MAX_EVIDENCE:
        evidence = (*evidence[:MAX_EVIDENCE], f"... and {len(evidence) - MAX_EVIDENCE} more")
    return Question(detector=names.CAPABILITY, rule=rule, subject=subject, owner=path,
                    paths=(path,), evidence=evidence, **kw)


def _grouped(rows: Iterable[list], key_len: int = 1) -> dict[tuple, list[list]]:
    out: dict[tuple, list[list]] = defaultdict(list)
    for row in rows:
        out[tuple(row[:key_len])].append(row)
    return out


def _has(view: IndexView, relation: str, values: Iterable[str]) -> set[str]:
    """The values that some indexed file holds under ``relation`` (one round trip)."""
    return {v for v, who in view.who_many(relation, set(values)).items() if who}


def evaluate_python(path: str, facts: FileFacts, view: IndexView,
                    env: Environment) -> list[Question]:
    """Every question a Python file owns, over all five rules."""
    data = facts.data
    by_top = _grouped(data.get("imports", []))
    status = resolve_imports(path, {t for (t,) in by_top}, view, env)
    return [
        *missing_module(path, by_top, status, bool(data.get("test")), _guarded_by(path, view)),
        *undeclared_dependency(path, by_top, status, view, env),
        *missing_capability(path, data.get("wants", []), view),
        *missing_executable(path, data.get("execs", []), env),
        *missing_env(path, data.get("env_reads", []), view, env),
    ]


def resolve_imports(path: str, tops: set[str], view: IndexView,
                    env: Environment) -> dict[str, str]:
    """Where each top-level name resolves: stdlib, the tree, the environment, or nowhere.

    In the tree means a module or package at the root (or under ``src/``), or beside
    the importing file (a script importing its sibling).
    """
    folder = str(PurePosixPath(path).parent)
    local = {t: (f"{folder}/{t}" if folder != "." else t) for t in tops}
    present = _has(view, "node", set(tops) | set(local.values()))
    status = {}
    for top in tops:
        if is_stdlib(top, env):
            status[top] = STDLIB
        elif top in present or local[top] in present:
            status[top] = TREE
        else:
            status[top] = ENV if env.importable(top) else MISSING
    return status


def is_stdlib(top: str, env: Environment) -> bool:
    """True when ``top`` resolves to the standard library, whatever the tree holds."""
    return top in env.stdlib or top in ALWAYS_IMPORTABLE


def _guarded_by(path: str, view: IndexView) -> list[str]:
    """Evidence that every in-tree import of ``path``'s module is guarded (try/except
    ImportError, TYPE_CHECKING...), one ``path:line`` entry per importer; else empty."""
    module = module_of(path)[0]
    if not module or view.who("mod_plain", module):
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
                   is_test: bool, guarded_by: list[str]) -> list[Question]:
    """Absolute imports that resolve nowhere.  Optional ones (guarded, TYPE_CHECKING,
    version/platform-conditional, or in a module the tree only imports under a guard)
    are ``low``; lazy ones (in a function or behind a runtime test) are ``medium``."""
    out = []
    for (top,), rows in sorted(by_top.items()):
        kinds = {kind for *_, kind in rows}
        if status[top] != MISSING or (top in STUB_ONLY and kinds == {TYPING}):
            continue
        evidence = _import_evidence(path, rows) + guarded_by
        if kinds - OPTIONAL_KINDS and not guarded_by:
            severity = "high" if PLAIN in kinds and not is_test else "medium"
            out.append(_missing(path, top, evidence, severity))
        else:
            out.append(_optional(path, top, evidence))
    return out


def _missing(path: str, top: str, evidence: list[str], severity: str) -> Question:
    return _question(
        "missing_module", f"{path}:{top}", path, evidence=evidence,
        hypothesis=f"MISSING_MODULE: {top}",
        question=(f"{path} imports {top}, which neither the tree nor the target "
                  f"environment provides: should it be installed or the import removed?"),
        severity=severity, confidence=0.9,
        suggestion=f"Install the distribution that provides '{top}' into the target "
                   "environment (and declare it), or remove the import.",
        extra={"module": top})


def _optional(path: str, top: str, evidence: list[str]) -> Question:
    return _question(
        "missing_module", f"{path}:{top}:optional", path, evidence=evidence,
        hypothesis=f"OPTIONAL_CAPABILITY_UNAVAILABLE: {top}",
        question=(f"{path} can use the optional module {top}, which the target "
                  f"environment does not provide: should it be installed?"),
        severity="low", confidence=0.7,
        suggestion=f"Install '{top}' if the optional capability is wanted; "
                   "otherwise nothing breaks.",
        extra={"module": top})


def undeclared_dependency(path: str, by_top: dict[tuple, list[list]], status: dict[str, str],
                          view: IndexView, env: Environment) -> list[Question]:
    """Third-party imports that no declaration file of the tree provides."""
    third_party = {t: env.dists_of(t) for (t,) in by_top if status[t] == ENV and env.dists_of(t)}
    if not third_party or not view.who("depfile", "1"):
        return []  # a tree that declares nothing is not judged
    declared = _has(view, "declares", set().union(*third_party.values()))
    out = []
    for top, dists in sorted(third_party.items()):
        if dists & declared:
            continue
        rows = by_top[(top,)]
        dist = sorted(dists)[0]
        optional = all(kind in OPTIONAL_KINDS for *_, kind in rows)
        out.append(_question(
            "undeclared_dependency", f"{path}:{top}", path,
            evidence=_import_evidence(path, rows),
            hypothesis=f"UNDECLARED_DEPENDENCY: {top} ({', '.join(sorted(dists))})",
            question=(f"{path} imports {top} from {dist}, which no pyproject.toml or "
                      f"requirements file declares: should {dist} be declared?"),
            severity="low" if optional else "medium", confidence=0.8,
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
    """Programs run by literal name that are not on the target PATH."""
    out = []
    for (program,), rows in sorted(_grouped(execs).items()):
        if program in env.executables:
            continue
        breaking = any(kind == RUN for _, _, kind in rows)
        out.append(_question(
            "missing_executable", f"{path}:{program}" + ("" if breaking else ":optional"), path,
            evidence=[f"{path}:{line} {'runs' if kind != 'which' else 'looks up'} {program}"
                      for _, line, kind in rows],
            hypothesis=f"MISSING_EXECUTABLE: {program}",
            question=(f"{path} runs {program}, which is not on the target PATH: should it be "
                      f"installed or the call made optional?" if breaking else
                      f"{path} can use {program}, which is not on the target PATH: should it "
                      f"be installed?"),
            severity="medium" if breaking else "low", confidence=0.85 if breaking else 0.6,
            suggestion=f"Install '{program}' on the hosts that run this code, or handle its "
                       "absence (shutil.which, FileNotFoundError).",
            extra={"program": program}))
    return out


def missing_env(path: str, reads: list[list], view: IndexView,
                env: Environment) -> list[Question]:
    """Variables read without a default that nothing sets or documents."""
    by_name = _grouped(reads)
    unknown = {k for (k,) in by_name if k not in env.env_vars}
    if not unknown:
        return []
    known = _has(view, "env_documented", unknown) | _has(view, "env_sets", unknown)
    return [_question(
        "missing_env", f"{path}:{name}", path,
        evidence=[f"{path}:{line} reads {name}" for _, line in by_name[(name,)]],
        hypothesis=f"MISSING_ENV: {name}",
        question=(f"{path} reads {name} without a default, but the service environment does "
                  f"not set it and no .env.example lists it: should it be set or documented?"),
        severity="low", confidence=0.6,
        suggestion=f"Set {name} in the service environment, list it in .env.example, "
                   "or give the read a default.",
        extra={"variable": name}) for name in sorted(unknown - known)]


def evaluate_declarations(path: str, facts: FileFacts, view: IndexView,
                          env: Environment) -> list[Question]:
    """Declared runtime dependencies of one declaration file that nothing imports."""
    declared = [d for d in facts.data.get("declared", []) if d[2]]
    tops = {dist: env.tops_of(dist) for dist, _, _ in declared}
    used = _has(view, "imports", set().union(*tops.values()) if tops else set())
    out = []
    for dist, line, _ in sorted(declared):
        if not tops[dist] or tops[dist] & used:
            continue  # used, or installed without anything importable (a command-line tool)
        out.append(_question(
            "undeclared_dependency", f"{path}:unused:{dist}", path,
            evidence=[f"{path}:{line} declares {dist}"],
            hypothesis=f"UNUSED_DEPENDENCY: {dist}",
            question=(f"{path} declares {dist}, but nothing in the tree imports "
                      f"{', '.join(sorted(tops[dist]))}: is the dependency still needed?"),
            severity="low", confidence=0.6 if dist in env.installed else 0.4,
            suggestion=f"Remove '{dist}' from {path}, or move it to a development group.",
            extra={"distribution": dist}))
    return out
