"""The package layout is the architecture: imports run one way, down the stages.

Every module's imports are read with ``ast``; a module importing a stage it may not,
or modules importing each other in a circle, fail here.  See docs/architecture.md
("Where things are") for the map this test keeps true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kloros_tasks"
GROUND = {"settings", "connections", "names", "questions", "routing", "celery_app", "heap",
          "__init__"}

# stage -> the stages (or single modules, as "stage.module") it may import besides ground.
ALLOWED: dict[str, set[str]] = {
    "cli": {"cli", "watch", "work", "state", "detectors", "deliver"},
    "watch": {"watch", "work.payload", "work.blobs", "state.snapshot"},
    "work": {"work", "state", "detectors"},
    "deliver": {"deliver", "state"},
    "state": {"state", "detectors.base"},
    "detectors": {"detectors"},
    "ground": set(),
}
# Ground modules that may reach down: the Celery app names the task module for
# Celery's autodiscovery only (a string, not an import), so nothing here.
FRAMEWORKS = ("celery", "kombu", "redis", "zmq", "watchdog", "billiard", "flower")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in GROUND:
        return "ground"
    return parts[1]


def is_module(dotted: str) -> bool:
    where = PACKAGE.parent / dotted.replace(".", "/")
    return where.is_dir() or where.with_suffix(".py").exists()


def imported(path: Path) -> list[tuple[str, int]]:
    """Absolute names of the kloros_tasks modules (or packages) ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # "from kloros_tasks.work import blobs" imports the module work.blobs only
            modules = [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
            out += [(m, node.lineno) for m in modules or [base]]
    return [(name, line) for name, line in out if name.split(".")[0] == "kloros_tasks"]


def allowed(importer: str, target: str) -> bool:
    stage, target_stage = stage_of(importer), stage_of(target)
    if target_stage == "ground" or target == "kloros_tasks":
        return True
    rest = target.split(".")[1:]
    return any(rest[: len(rule.split("."))] == rule.split(".") for rule in ALLOWED[stage])


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_split_into_the_stages():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == set(ALLOWED) - {"ground"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_its_stage_may(path):
    me = module_name(path)
    wrong = [f"line {line}: {name}" for name, line in imported(path) if not allowed(me, name)]
    assert not wrong, f"{me} ({stage_of(me)}) may not import: {wrong}"


@pytest.mark.parametrize("path", [p for p in MODULES if stage_of(module_name(p)) == "detectors"
                                  and p.name not in {"environment.py", "probes.py"}],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_detectors_import_no_framework(path):
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in FRAMEWORKS + ("subprocess", "socket")]


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(PACKAGE)}: {n}" for p in MODULES
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long


def test_modules_import_each_other_in_no_circle():
    known = {module_name(p): p for p in MODULES}
    graph = {m: {name for name, _ in imported(p) if name in known and name != m
                 and not known[name].name == "__init__.py"} for m, p in known.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_guard_sees_a_forbidden_import():
    # The rules themselves, on names a wrong import would produce.
    assert not allowed("kloros_tasks.detectors.knowledge.detector", "kloros_tasks.state.index")
    assert not allowed("kloros_tasks.state.index", "kloros_tasks.work.tasks")
    assert not allowed("kloros_tasks.watch.producer", "kloros_tasks.work.tasks")
    assert allowed("kloros_tasks.watch.producer", "kloros_tasks.work.payload")
    assert allowed("kloros_tasks.state.index", "kloros_tasks.detectors.base")
    assert not allowed("kloros_tasks.state.index", "kloros_tasks.detectors.integration.keys")
