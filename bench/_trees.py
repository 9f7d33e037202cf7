"""Trees for the benchmarks: a generated package tree of any size, a copy of the
installed standard library, and the "toggle" file whose every edit publishes exactly
one envelope.

The generated tree is deterministic for a given (size, seed): packages of up to
``PER_PACKAGE`` files, mostly Python modules with imports between siblings, classes
and functions (some without docstrings, so a few modules raise
``knowledge.missing_docstrings`` under the ruff ``D`` policy its ``pyproject.toml``
declares), plus one Markdown document in ten that links to
and names code of its package (some with dangling references or no inbound link).
"""

from __future__ import annotations

import os
import random
import shutil
import sysconfig
from pathlib import Path

from kloros_tasks.watch import filters

PER_PACKAGE = 100
DOC_EVERY = 10  # one file in ten is a Markdown document
STDLIB_SKIP = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                         "__pycache__"})
TOGGLE_PATH = "pkg000/toggle.py"
# missing_docstrings asks only in a tree that declares a docstring policy.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["E", "F", "D"]\n'

TOGGLE_DOC = '"""A module whose fourth function gains and loses its docstring."""\n\n\n'


def toggle_text(state: int) -> str:
    """State 1: four undocumented public functions (above the default threshold of 3,
    so ``knowledge.missing_docstrings`` holds); state 0: three (it is resolved)."""
    body = [TOGGLE_DOC]
    for i in range(4):
        doc = '    """Documented."""\n' if (i == 3 and state == 0) else ""
        body.append(f"def toggled_{i}(value):\n{doc}    return value + {i}\n\n\n")
    return "".join(body).rstrip() + "\n"


def _module(pkg: int, mod: int, rng: random.Random, siblings: int, package: str) -> str:
    documented = rng.random() > 0.05  # 5 % of modules leave most definitions bare
    lines = []
    if documented:
        lines.append(f'"""Module {mod} of package {pkg}: records and their helpers."""\n')
    lines += ["from __future__ import annotations", "", "import json", "import os", ""]
    if siblings > 1 and mod > 0:
        lines += [f"from {package} import mod_{rng.randrange(mod):04d} as sibling", ""]
    lines += [f"LIMIT_{mod} = {rng.randrange(1000)}", "", ""]
    lines += [f"class Record{mod}:"]
    if documented:
        lines += ['    """A record with a value."""']
    lines += ["", "    def __init__(self, value):", "        self.value = value", ""]
    for m in range(rng.randrange(1, 4)):
        lines += [f"    def method_{m}(self, other):"]
        if documented:
            lines += [f'        """Combine with other ({m})."""']
        lines += [f"        return json.dumps([self.value, other, {m}])", ""]
    lines.append("")
    for f in range(rng.randrange(2, 6)):
        lines += [f"def helper_{f}(path, count=LIMIT_{mod}):"]
        if documented or f == 0:
            lines += [f'    """Join path {f} times."""']
        lines += ["    out = path", "    for _ in range(count % 7):",
                  f"        out = os.path.join(out, 'part{f}')", "    return out", "", ""]
    return "\n".join(lines).rstrip() + "\n"


def _document(pkg: int, doc: int, rng: random.Random, modules: int, package: str) -> str:
    target = rng.randrange(max(modules, 1))
    lines = [f"# Notes {doc} of package {pkg}", "",
             f"See [module {target}](mod_{target:04d}.py) and "
             f"`{package}.mod_{target:04d}.Record{target}`.", ""]
    if rng.random() < 0.05:  # a dangling reference: stale_doc
        lines += [f"The old helper `{package}.mod_{target:04d}.removed_helper` is gone.", ""]
    if doc > 0:
        previous = "README.md" if doc == 1 else f"doc_{doc - 1:04d}.md"
        lines += [f"Previous: [notes {doc - 1}]({previous})", ""]
    return "\n".join(lines)


def generate_tree(root: Path, files: int, seed: int = 1, prefix: str = "pkg") -> int:
    """Write ``files`` files under ``root`` (which may already hold others); returns
    how many were written.  With ``prefix`` "pkg" the toggle module is one of them,
    in state 0, and so is a ``pyproject.toml`` declaring a docstring policy."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    written, pkg = 0, 0
    if prefix == "pkg" and files > 0:  # the tree declares a docstring policy (ruff D)
        (root / "pyproject.toml").write_text(DOC_POLICY)
        written = 1
    while written < files:
        directory = root / f"{prefix}{pkg:03d}"
        directory.mkdir(exist_ok=True)
        count = min(PER_PACKAGE, files - written)
        written += _write_package(directory, pkg, count, rng, with_toggle=(
            prefix == "pkg" and pkg == 0))
        pkg += 1
    return written


def _write_package(directory: Path, pkg: int, count: int, rng: random.Random,
                   with_toggle: bool) -> int:
    n_docs = count // DOC_EVERY
    n_mods = count - n_docs - 1  # one slot for __init__.py (or README when docs exist)
    (directory / "__init__.py").write_text(f'"""Package {pkg}."""\n')
    written = 1
    if with_toggle and n_mods > 0:
        (directory / "toggle.py").write_text(toggle_text(0))
        n_mods, written = n_mods - 1, written + 1
    for mod in range(max(n_mods, 0)):
        (directory / f"mod_{mod:04d}.py").write_text(_module(pkg, mod, rng, n_mods, directory.name))
        written += 1
    for doc in range(n_docs):
        name = "README.md" if doc == 0 else f"doc_{doc:04d}.md"
        (directory / name).write_text(_document(pkg, doc, rng, n_mods, directory.name))
        written += 1
    return written


def copy_stdlib(dest: Path) -> Path:
    """Copy the routed files of this interpreter's standard library (test directories,
    site-packages and caches left out) into ``dest``/stdlib; returns that root."""
    source = Path(sysconfig.get_paths()["stdlib"])
    root = dest / "stdlib"
    for directory, dirs, names_ in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIP and not d.startswith("."))
        rel_dir = Path(directory).relative_to(source)
        for name in names_:
            rel = (rel_dir / name).as_posix()
            full = Path(directory, name)
            if full.is_symlink() or not filters.should_enqueue(rel):
                continue
            (root / rel_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(full, root / rel)
    return root


def routed_files(root: Path) -> tuple[int, int, int]:
    """(files the pipeline analyses, of which .py, tasks they make) under ``root``."""
    files = py = tasks = 0
    for directory, dirs, names_ in os.walk(root):
        rel_dir = Path(directory).relative_to(root)
        dirs[:] = [d for d in dirs if not filters.dir_is_excluded((rel_dir / d).as_posix())]
        for name in names_:
            detectors = filters.should_enqueue((rel_dir / name).as_posix())
            if detectors:
                files, tasks = files + 1, tasks + len(detectors)
                py += name.endswith(".py")
    return files, py, tasks
