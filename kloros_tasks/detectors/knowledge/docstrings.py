"""The facts of Python modules and configuration files ``missing_docstrings`` reads.

A module's facts list its public definitions without a docstring, each with the
pydocstyle code a linter would report it under (D100 module, D101 class, D102 method,
D103 function, D104 package, D106 nested class), less those a ``# noqa`` on their
line silences.  A configuration file's facts hold the docstring policies it declares
(see ``policy``), under the directory it governs.  ``governing`` finds, for a module,
the policies of the nearest directory above it that declares one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import posixpath
import re

from kloros_tasks.detectors._pyast import (
    Definitions,
    assigned_module_attributes,
    flatten_block,
    is_test_path,
    nodes_by_type,
    parse,
    undocumented,
)
from kloros_tasks.detectors.base import FileFacts, IndexView
from kloros_tasks.detectors.knowledge.context import (
    importable_names,
    is_generated,
    is_sphinx_conf,
    sphinx_suffixes,
)
from kloros_tasks.detectors.knowledge.docfacts import ancestors, prefixes, top_of
from kloros_tasks.detectors.knowledge.policy import Policy, enforced, read_policies

SPHINX_TXT = "sphinx_txt"  # a conf.py's directory, when its source_suffix has .txt
DOCS_PROJECT = "docs_project"  # a Sphinx conf.py's directory: documents under it are built
UNDOCUMENTED = "undoc"  # dotted names of a module's definitions without a docstring
POLICY = "docpolicy"  # a configuration file's directory, when it declares a policy
POLICY_SIG = "docpolicy_sig"  # "<directory>#<digest>": changes whenever the policy does
PY_UNDER = "py_under"  # every directory holding a Python module
# A bare noqa comment, or one naming a code that covers a missing docstring (D, D1, D10x).
_NOQA = re.compile(r"#\s*noqa(?!:)|#\s*noqa:[^#]*\bD(?:1(?:0\d?)?)?\b", re.I)
_FILE_NOQA = re.compile(r"^#\s*(?:ruff|flake8)\s*:\s*noqa\s*$", re.I | re.M)


def python_facts(path: str, text: str) -> FileFacts:
    """Facts of one Python module; ``error`` set when it does not parse."""
    tree, error = parse(text)
    if tree is None:
        return FileFacts(error=error)
    try:
        found = Definitions(tree)
        module_of_facts = next(iter(importable_names(path)), None)
        for module in importable_names(path):
            found.defines.update(prefixes(module))
            found.body(tree.body, module)
        for name in assigned_module_attributes(tree):  # bound here, on another module
            found.defines.add(name)
            found.opaque.add(name)
        # Nobody documents tests or generated code by hand, and a module importable only
        # from its own directory (examples/, scripts/, docs/conf.py) is no library API.
        skip = is_test_path(path) or is_generated(text) or not importable_names(path)
        missing = [] if skip else _not_silenced(text, undocumented(path, tree))
        codes = _codes(path, tree, missing)
        total = _public_count(tree) if missing else 0
    except RecursionError:  # the parser's limits make this unlikely, not impossible
        return FileFacts(error="line 1: too deeply nested to analyse")
    found.defines.add(f"path:{path}")
    relations = {"defines": frozenset(found.defines), "opaque": frozenset(found.opaque),
                 "open": frozenset(found.open), "top": top_of(path),
                 UNDOCUMENTED: frozenset(qualified(module_of_facts, missing)),
                 PY_UNDER: frozenset(ancestors(path)),
                 "declared": frozenset(p for n in registered_names(tree) for p in prefixes(n))}
    if posixpath.basename(path) == "conf.py" and ".txt" in sphinx_suffixes(tree):
        relations[SPHINX_TXT] = frozenset({posixpath.dirname(path)})
    if posixpath.basename(path) == "conf.py" and is_sphinx_conf(tree):
        relations[DOCS_PROJECT] = frozenset({posixpath.dirname(path)})
    return FileFacts(relations=relations,
                     data={"kind": "py", "missing": missing, "codes": codes, "total": total,
                           "module": module_of_facts})


_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")


def registered_names(tree: ast.Module) -> set[str]:
    """Dotted names a decorator registers an object under (``@app.task(name='celery.map')``):
    documents name the object so, and no module binds that name."""
    out: set[str] = set()
    groups = nodes_by_type(tree)
    for node in (*groups.get(ast.FunctionDef, ()), *groups.get(ast.AsyncFunctionDef, ()),
                 *groups.get(ast.ClassDef, ())):
        for decorator in node.decorator_list:
            for keyword in decorator.keywords if isinstance(decorator, ast.Call) else ():
                value = keyword.value
                if keyword.arg == "name" and isinstance(value, ast.Constant) and isinstance(
                        value.value, str) and _DOTTED_NAME.match(value.value):
                    out.add(value.value)
    return out


def policy_facts(path: str, text: str) -> FileFacts:
    """Facts of a configuration file: the docstring policies it declares, if any."""
    policies = read_policies(path, text)
    if not policies:
        return FileFacts(data={"kind": "config"})
    directory = posixpath.dirname(path)
    digest = hashlib.sha256(json.dumps(policies, sort_keys=True).encode()).hexdigest()[:16]
    return FileFacts(relations={POLICY: frozenset({directory}),
                                POLICY_SIG: frozenset({f"{directory}#{digest}"})},
                     data={"kind": "config", "policies": policies})


def governing(path: str, view: IndexView) -> list[tuple[str, Policy]]:
    """(directory, policy) of the policies that govern the module at ``path``: those
    of the nearest directory above it whose configuration files declare one (as ruff
    and pydocstyle take the nearest configuration)."""
    holders = view.who_many(POLICY, ancestors(path))
    for directory in sorted((d for d, who in holders.items() if who), key=len, reverse=True):
        out = []
        for config in sorted(holders[directory]):
            facts = view.facts(config)
            out += [(directory, p) for p in (facts.data.get("policies", []) if facts else [])]
        if out:
            return out
    return []


def wanted(path: str, data, view: IndexView, missing: list) -> list:
    """The undocumented definitions a governing policy asks a docstring of (none when
    no policy governs the module); interrogate's ``fail-under`` spares a module whose
    own coverage reaches it."""
    codes = data.get("codes") or ["D103"] * len(missing)
    code_of = {(line, name): code for (line, name), code in zip(data.get("missing", []),
                                                                  codes, strict=False)}
    total = max(int(data.get("total", 0)), 1)
    asked: set[tuple[int, str]] = set()
    for directory, policy in governing(path, view):
        rel = path[len(directory) + 1:] if directory else path
        on = enforced(policy, rel)
        mine = [m for m in missing if code_of.get((m[0], m[1]), "D103") in on]
        fail_under = policy.get("fail_under")
        all_missing = [m for m in data.get("missing", [])
                       if code_of.get((m[0], m[1]), "D103") in on]
        if fail_under is not None and 100.0 * (total - len(all_missing)) / total >= fail_under:
            continue
        asked.update((m[0], m[1]) for m in mine)
    return [m for m in missing if (m[0], m[1]) in asked]


def qualified(module: str | None, missing: list) -> list[str]:
    """Dotted names the docs may document the undocumented definitions under: the
    defining module's path, and each package above it (``django.template.Engine`` for
    ``django/template/engine.py``'s ``Engine``: Sphinx pages use the public path)."""
    if not module:
        return []
    parts = module.split(".")
    bases = [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
    return [f"{b}.{q}" for _, q in missing if q != "<module>" for b in bases]


def not_in_docs(data, view: IndexView) -> list:
    """The undocumented definitions the documentation does not declare either: an object
    a Sphinx page documents (``.. method:: SessionBase.get``) needs no docstring."""
    missing, module = data.get("missing", []), data.get("module")
    names = qualified(module, missing)
    if not names:
        return missing
    documented = view.exists_many("declared", names)
    return [m for m in missing if m[1] == "<module>"
            or not documented.intersection(qualified(module, [m]))]


def _not_silenced(text: str, missing: list) -> list:
    """``missing`` less what a ``# noqa`` on the definition's line (or a file-wide
    ``# ruff: noqa``/``# flake8: noqa``) silences for the linter."""
    if not missing:
        return missing
    if _FILE_NOQA.search(text):
        return []
    lines = text.splitlines()
    return [m for m in missing
            if not (0 < m[0] <= len(lines) and _NOQA.search(lines[m[0] - 1]))]


def _codes(path: str, tree: ast.Module, missing: list) -> list[str]:
    """The pydocstyle code of each undocumented definition, by what it is and where."""
    classes = _class_names(tree.body, "")
    out = []
    for _, name in missing:
        if name == "<module>":
            out.append("D104" if posixpath.basename(path) == "__init__.py" else "D100")
        elif "." in name:
            out.append("D106" if name in classes else "D102")
        else:
            out.append("D101" if name in classes else "D103")
    return out


def _class_names(body: list[ast.stmt], prefix: str) -> set[str]:
    out: set[str] = set()
    for stmt in flatten_block(body):
        if isinstance(stmt, ast.ClassDef):
            name = f"{prefix}{stmt.name}"
            out |= {name} | _class_names(stmt.body, f"{name}.")
    return out


def _public_count(tree: ast.Module) -> int:
    """The module and its public classes, functions and methods (what interrogate's
    coverage counts, near enough)."""
    count, stack = 1, list(flatten_block(tree.body))
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and \
                not stmt.name.startswith("_"):
            count += 1
            if isinstance(stmt, ast.ClassDef):
                stack.extend(flatten_block(stmt.body))
    return count
