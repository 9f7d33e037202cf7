"""Phase 2 lookups: resolve names, class lineages and subclasses through the index.

Every lookup here is an exact ``who("def", key)`` plus reading the contributing
files' facts, memoised for one evaluation.  Which keys an evaluation may reach is
exactly what ``integration_deps.affected`` walks backwards, so the two must change
together.
"""

from __future__ import annotations

import builtins
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kloros_tasks.detectors.base import IndexView
from kloros_tasks.detectors.integration.keys import (
    NSDIR,
    STAR,
    SUB,
    SYM,
    last,
    parent,
)
from kloros_tasks.detectors.integration.lookups import Lookups

TEST_PACKAGES = frozenset({"test", "tests"})
MAX_HOPS = 32  # alias and star chains longer than this are treated as unknown
# Names every module has without binding them.
MODULE_DUNDERS = frozenset({
    "__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__",
    "__path__", "__builtins__", "__cached__", "__dict__", "__annotations__",
})
# Attributes every instance of a Python class has, beyond dir(object).
# Attributes every instance of a Python class has, beyond dir(object); and those of
# ``type``, which ``self`` has in metaclass methods and class-level properties.
OBJECT_ATTRS = frozenset(dir(object)) | frozenset(dir(type)) | {
    "__dict__", "__weakref__", "__module__", "__doc__", "__annotations__", "__slots__",
    "__orig_class__"}


@dataclass(frozen=True)
class ClassNode:
    """A class of the tree: the file that defines it and its summary."""

    path: str
    summary: dict[str, Any]

    @property
    def qn(self) -> str:
        return self.summary["qns"][0]

    @property
    def key(self) -> tuple[str, str]:
        return (self.path, self.qn)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassNode) and self.key == other.key


@dataclass
class Lineage:
    """A class and its in-tree ancestors, the attributes of builtin ancestors, and
    the first reason (if any) some ancestor could not be followed."""

    nodes: list[ClassNode]
    builtin_attrs: set[str]
    unknown: str | None
    # Set when every ancestor that could not be followed is simply outside the tree
    # (``threading.Thread``): the class's own code can still be judged for what it
    # alone decides, such as draining a queue it created.
    external: list[str] = field(default_factory=list)
    opaque: str | None = None

    @property
    def stateful(self) -> bool:
        """Some class of the lineage is constructed with state (a builtin base,
        other than object, counts): otherwise it is a mixin reading its host."""
        return bool(self.builtin_attrs) or any(n.summary.get("st") for n in self.nodes)

    def defines(self, attr: str) -> bool:
        return (attr in OBJECT_ATTRS or attr in self.builtin_attrs
                or any(attr in n.summary["defs"] for n in self.nodes))


def _cooperative_mixin(nodes: list[ClassNode],
                       parents: dict[tuple[str, str], list[ClassNode | set[str]]]) -> str | None:
    """A ``super().m()`` that no known ancestor answers means the class is mixed
    with others at run time: its real MRO is not what the tree shows."""
    for node in nodes:
        wanted = [m for m in node.summary.get("sup", []) if m not in OBJECT_ATTRS]
        if not wanted:
            continue
        defined: set[str] = set()
        stack, seen = list(parents.get(node.key, [])), set()
        while stack:
            item = stack.pop()
            if isinstance(item, set):
                defined |= item
            elif item.key not in seen:
                seen.add(item.key)
                defined.update(item.summary["defs"])
                stack.extend(parents.get(item.key, []))
        missing = [m for m in wanted if m not in defined]
        if missing:
            return f"{node.qn}: super().{missing[0]}() beyond its known bases"
    return None


class Resolver(Lookups):
    """Memoised, read-only lookups over one detector's index (lookups.py), and what
    the rules build of them: names, class lineages and subclasses, imports."""

    def __init__(self, view: IndexView) -> None:
        super().__init__(view)
        self._lineage: dict[tuple[str, str], Lineage] = {}

    # --- names and classes ---------------------------------------------------------
    def resolve(self, ref: str, hops: int = 0) -> ClassNode | set[str] | str:
        """A class of the tree, the attribute set of a builtin class, or the reason
        the reference cannot be followed."""
        if hops > MAX_HOPS:
            return "alias chain too long"
        if ref.startswith("builtins."):
            obj = getattr(builtins, ref[len("builtins."):], None)
            return set(dir(obj)) if isinstance(obj, type) else "not a class"
        found = self.contributions(SYM + ref)
        if not found:
            return self._through_module(ref, hops)
        if len(found) > 1:
            return "defined more than once"
        path, content = found[0]
        kind = content.get("k")
        if kind == "class":
            return ClassNode(path, content)
        if kind == "alias":
            return self.resolve(content["t"], hops + 1)
        return "not a class"

    def _through_module(self, ref: str, hops: int) -> ClassNode | set[str] | str:
        """A name a module does not bind itself: follow its star imports."""
        container, name = parent(ref), last(ref)
        mods = self.modules(container) if container else []
        if not mods:
            return "outside the tree"
        if any(m["dyn"] for m in mods):
            return "dynamic module"
        for mod in mods:
            for star in mod["stars"]:
                if not self.modules(star):
                    return "star import from outside the tree"
                found = self.resolve(f"{star}.{name}", hops + 1)
                if found != "undefined":
                    return found
        return "undefined"

    def lineage(self, node: ClassNode) -> Lineage:
        """The class and its in-tree ancestors (across files, through aliases)."""
        if node.key in self._lineage:
            return self._lineage[node.key]
        result = Lineage([node], set(), None)
        parents: dict[tuple[str, str], list[ClassNode | set[str]]] = {}
        queue = deque([node])
        while queue:
            current = queue.popleft()
            parents[current.key] = []
            for reason in current.summary["op"]:
                result.unknown = result.unknown or f"{current.qn}: {reason}"
                result.opaque = result.opaque or result.unknown
            for base in current.summary["bases"]:
                found = self.resolve(base) if base is not None else "computed base"
                if isinstance(found, str):
                    result.unknown = result.unknown or f"{base}: {found}"
                    if found == "outside the tree":
                        result.external.append(base)
                    else:
                        result.opaque = result.opaque or f"{base}: {found}"
                    continue
                parents[current.key].append(found)
                if base == "builtins.type":
                    result.unknown = result.unknown or f"{current.qn}: a metaclass"
                    result.opaque = result.opaque or result.unknown
                if isinstance(found, set):
                    result.builtin_attrs |= found
                elif found.key not in parents and found not in queue:
                    result.nodes.append(found)
                    queue.append(found)
        if not result.external:  # an outside base answers super() calls we cannot see
            mixin = _cooperative_mixin(result.nodes, parents)
            result.unknown = result.unknown or mixin
            result.opaque = result.opaque or mixin
        self._lineage[node.key] = result
        return result

    def descendants(self, node: ClassNode) -> list[ClassNode]:
        """In-tree subclasses at any depth, found through the ``x:`` keys of every
        name the class is referred to by (aliases, star re-exports)."""
        found: dict[tuple[str, str], ClassNode] = {}
        targets = deque(node.summary["qns"])
        visited: set[str] = set()
        while targets:
            target = targets.popleft()
            if target in visited or len(visited) > 100_000:
                continue
            visited.add(target)
            for path, content in self.contributions(SUB + target):
                for qns in content.get("sub", []):
                    summary = self.content(path, SYM + qns[0])
                    if summary is not None and summary.get("k") == "class":
                        sub = ClassNode(path, summary)
                        found.setdefault(sub.key, sub)
                        targets.extend(qns)
                targets.extend(content.get("alias", []))
            if "." in target:
                for _, content in self.contributions(STAR + parent(target)):
                    targets.extend(f"{m}.{last(target)}" for m in content["m"])
        found.pop(node.key, None)
        return [found[k] for k in sorted(found)]

    def constant(self, ref: str, hops: int = 0) -> tuple[str, str] | None:
        """(value, qualified name) of the string constant ``ref`` names: a module's
        constant or a class's (Enum members included), through aliases; None when it
        is not one (or not in the tree)."""
        if hops > MAX_HOPS:
            return None
        found = self.contributions(SYM + ref)
        if len(found) == 1:
            content = found[0][1]
            if content.get("k") == "alias":
                return self.constant(content["t"], hops + 1)
            return (content["v"], ref) if "v" in content else None
        if found or "." not in ref:
            return None
        owner = self.resolve(parent(ref))
        if not isinstance(owner, ClassNode):
            return None
        value = owner.summary.get("kv", {}).get(last(ref))
        return (value, f"{owner.qn}.{last(ref)}") if value else None

    # --- imports -----------------------------------------------------------------------
    def broken_import(self, parts: list[str], root: str = "",
                      own: str = "") -> tuple[str, str] | None:
        """(module, missing name) when importing ``parts`` from a file named from the
        import root ``root`` must fail, else None.

        Only judged from the first in-tree package down: a module that is
        in the tree (file or namespace directory) must contain the next part as a
        submodule or a name (bound, re-exported, star-imported, or possibly served
        by a module ``__getattr__``).  A top-level module counts as the one imported
        only when it is named from the tree's root, a ``src/`` root, or the importer's
        own root: ``tests/data/cases/collections.py`` or ``examples/pydantic/`` is not
        what ``src/black/trans.py`` or ``t/integration/tasks.py`` imports.  A missing
        name that is a test package (``idle_test``, ``tests``) is most likely left
        out of the watch, not missing.  A package outside those roots importing its
        own top-level name (celery's ``examples/pydantic/tasks.py`` imports
        ``pydantic``) is run from inside its directory, where that name is the
        distribution it demonstrates.
        """
        top = self.modules(parts[0])
        if not (top or self.exists(NSDIR + parts[0])):
            return None
        if top and not any(m.get("r", "") in ("", "src", root) for m in top):
            return None
        if root not in ("", "src") and parts[0] == own.partition(".")[0]:
            return None
        current = parts[0]
        for name in parts[1:]:
            if name == "__init__" and self.modules(current):
                continue  # ``pkg.__init__`` is the package's own file
            child = f"{current}.{name}"
            if self.modules(child) or self.exists(NSDIR + child):
                current = child
                continue
            if not self.modules(current):
                return None  # a namespace package may be completed elsewhere
            if self.provides(current, name, set()):
                return None  # a name, not a module: nothing further to check
            if name in TEST_PACKAGES or name.startswith("test_") or name.endswith("_test"):
                return None
            return (current, name)
        return None

    def provides(self, module: str, name: str, seen: set[str]) -> bool:
        """Whether ``module`` may bind ``name`` (directly, by star import, or dynamically)."""
        if name in MODULE_DUNDERS or self.exists(f"{SYM}{module}.{name}"):
            return True
        if module in seen:
            return False
        seen.add(module)
        for mod in self.modules(module):
            if mod["dyn"]:
                return True
            for star in mod["stars"]:
                if not self.modules(star) or self.provides(star, name, seen):
                    return True
        return False
