"""Inside a class: what its methods do with ``self``.

``MethodWalker`` walks one method body and records, into the class's
``ClassFacts``, the attributes it stores (defs), reads (uses, outside
``try/except AttributeError``), fills (``append``, ``put``, item assignment...) and
reads in any other way (which consumes a container or lets it escape).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from kloros_tasks.detectors._visitor import Visitor
from kloros_tasks.detectors.integration.scope import dotted_name

FILL_METHODS = frozenset({
    "append", "appendleft", "extend", "extendleft", "insert", "put", "put_nowait",
    "update", "__setitem__",
})
# Methods that hand the object to a parser which sets attributes on it by name.
NAMESPACE_FILLERS = frozenset({"parse_args", "parse_known_args", "parse_intermixed_args",
                               "parse_known_intermixed_args"})
CONTAINER_CALLS = frozenset({
    "list", "dict", "deque", "Queue", "SimpleQueue", "LifoQueue", "PriorityQueue",
    "JoinableQueue", "defaultdict", "OrderedDict",
})
# Container types that are queues whatever their name; any other container is a queue
# only when its name says so (see rules.QUEUE_NAME).
QUEUE_CALLS = frozenset({"deque", "Queue", "SimpleQueue", "LifoQueue", "PriorityQueue",
                         "JoinableQueue"})
ATTRIBUTE_ERRORS = frozenset({"AttributeError", "Exception", "BaseException"})
CONSTRUCTORS = frozenset({"__init__", "__new__", "__post_init__", "__setstate__"})


@dataclass
class ClassFacts:
    """What one class's own code says; attribute names are mangled as Python does."""

    local: str  # dotted path inside the module: "Outer.Inner"
    line: int
    bases: list[str | None] = field(default_factory=list)
    opaque: set[str] = field(default_factory=set)
    getattr_hook: bool = False
    setdyn: bool = False
    readall: bool = False
    defs: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    fills: dict[str, list[int]] = field(default_factory=dict)
    creates: dict[str, int] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)  # created as a queue type
    consts: dict[str, str] = field(default_factory=dict)  # topic-shaped class constants
    uses: dict[str, list[int]] = field(default_factory=dict)
    guarded: set[str] = field(default_factory=set)
    supers: set[str] = field(default_factory=set)  # m of every super().m(...) call
    stateful: bool = False  # has a constructor, fields, or stores instance attributes
    escapes: bool = False  # chosen as a base at run time: may have unseen subclasses


def mangle(class_name: str, attr: str) -> str:
    """Private name mangling, as the compiler does inside a class body."""
    if attr.startswith("__") and not attr.endswith("__") and class_name.lstrip("_"):
        return f"_{class_name.lstrip('_')}{attr}"
    return attr


def is_queue_type(expr: ast.expr | None) -> bool:
    """``deque()``, ``queue.Queue()``, ``asyncio.Queue()``, ``multiprocessing.Queue()``..."""
    return isinstance(expr, ast.Call) and \
        (dotted_name(expr.func) or "").rpartition(".")[2] in QUEUE_CALLS


def is_container(expr: ast.expr | None) -> bool:
    """A fresh list/dict/deque/queue: a display, a comprehension or a constructor call."""
    if isinstance(expr, (ast.List, ast.Dict, ast.ListComp, ast.DictComp)):
        return True
    if not isinstance(expr, ast.Call):
        return False
    name = (dotted_name(expr.func) or "").rpartition(".")[2]
    if name in CONTAINER_CALLS:
        return True
    if name == "field":  # dataclasses.field(default_factory=list)
        return any(k.arg == "default_factory" and (dotted_name(k.value) or "")
                   .rpartition(".")[2] in CONTAINER_CALLS for k in expr.keywords)
    return False


class MethodWalker(Visitor):
    """Walks one method body, tracking the instance name and AttributeError guards."""

    def __init__(self, class_name: str, self_name: str, instance: bool, cf: ClassFacts,
                 self_nodes: set[int]) -> None:
        self.class_name = class_name
        self.self_name: str | None = self_name
        self.instance = instance
        self.cf = cf
        self.self_nodes = self_nodes
        self.guard = 0
        self.fresh: set[str] = set()  # locals holding a new instance of the class
        self.fill_receivers: set[int] = set()

    INERT = frozenset({ast.Name, ast.Constant})  # no handler below either

    # --- helpers -------------------------------------------------------------------
    def _attr(self, node: ast.AST) -> str | None:
        """X when ``node`` is ``self.X``."""
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and self.self_name is not None and node.value.id == self.self_name):
            return mangle(self.class_name, node.attr)
        return None

    def _is_self(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == self.self_name

    def _is_fresh_instance(self, call: ast.AST) -> bool:
        """``cls(...)``, ``cls.make(...)``, ``Cls(...)``, ``X.__new__(cls)``,
        ``type(self)(...)``, ``copy.copy(self)``: probably a new instance of ours."""
        if not isinstance(call, ast.Call):
            return False
        func = call.func
        dotted = dotted_name(func) or ""
        head, _, rest = dotted.partition(".")
        if head in (self.self_name, self.class_name) and "." not in rest:
            return True
        if isinstance(func, ast.Attribute) and func.attr in ("__new__", "__class__"):
            return True
        if dotted.rpartition(".")[2] in ("copy", "deepcopy") and call.args:
            return self._is_self(call.args[0])
        return isinstance(func, ast.Call) and dotted_name(func.func) == "type"

    def _fill(self, receiver: ast.AST, line: int) -> None:
        name = self._attr(receiver)
        if name is not None:
            self.cf.fills.setdefault(name, []).append(line)
            self.fill_receivers.add(id(receiver))

    # --- scopes ------------------------------------------------------------------------
    def _visit_scope(self, node: ast.AST, args: ast.arguments) -> None:
        names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        saved = self.self_name
        if saved in names:
            self.self_name = None  # a nested function rebinding the name: not our instance
        self.generic_visit(node)
        self.self_name = saved

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_scope(node, node.args)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_scope(node, node.args)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        return  # a class defined in a method has its own ``self``

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches(h, ATTRIBUTE_ERRORS) for h in node.handlers)
        self.guard += guarded
        for stmt in node.body:
            self.visit(stmt)
        self.guard -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try  # type: ignore[assignment]

    # --- statements ------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._note_store(target, node.value, node.lineno)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._note_store(node.target, node.value, node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._fill(node.target, node.lineno)  # ``self.q += [...]`` extends the container
        self.generic_visit(node)

    def _note_store(self, target: ast.expr, value: ast.expr | None, line: int) -> None:
        name = self._attr(target)
        if name is not None and is_container(value):
            self.cf.creates.setdefault(name, line)
            if is_queue_type(value):
                self.cf.queues.add(name)
        if isinstance(target, ast.Name) and self._is_fresh_instance(value):
            self.fresh.add(target.id)

    # --- expressions -----------------------------------------------------------------
    def visit_Expr(self, node: ast.Expr) -> None:
        self._mark_setdefault_fill(node.value)
        self.generic_visit(node)

    def _mark_setdefault_fill(self, call: ast.AST) -> None:
        """``self.d.setdefault(k, v)`` whose result is dropped or only filled
        (``.setdefault(k, []).append(v)``) fills ``d``; any other use reads it."""
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "setdefault"):
            self._fill(call.func.value, call.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in FILL_METHODS:
            self._fill(func.value, node.lineno)
            self._mark_setdefault_fill(func.value)
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
                and dotted_name(func.value.func) == "super"):
            self.cf.supers.add(func.attr)
        if (dotted_name(func) or "").rpartition(".")[2] in NAMESPACE_FILLERS and any(
                self._is_self(a) for a in [*node.args, *(k.value for k in node.keywords)]):
            self.cf.setdyn = True  # argparse sets the parsed options on the instance
        if isinstance(func, ast.Name) and node.args and self._is_self(node.args[0]):
            self._reflective(func.id, node)
        if isinstance(func, ast.Attribute) and func.attr == "__setattr__":
            names = [a.value for a in node.args[:2]
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            self.cf.defs.update(names)
            self.cf.setdyn |= not names
        self.generic_visit(node)

    def _reflective(self, name: str, node: ast.Call) -> None:
        """setattr/getattr/hasattr/vars on the instance itself."""
        literal = node.args[1] if len(node.args) > 1 else None
        attr = literal.value if isinstance(literal, ast.Constant) else None
        attr = attr if isinstance(attr, str) else None
        self.cf.stateful |= name == "setattr"
        if name == "setattr":
            if attr is None:
                self.cf.setdyn = True
            else:
                self.cf.defs.add(attr)
        elif name == "getattr":
            if attr is None:
                self.cf.readall = True
            else:
                self.cf.reads.add(attr)
                self.cf.guarded.add(attr)
        elif name == "hasattr" and attr is not None:
            self.cf.guarded.add(attr)
        elif name == "vars":
            self.cf.readall = self.cf.setdyn = True

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Store):
            self._fill(node.value, node.lineno)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._attr(node)
        if name is not None:
            self._self_attribute(node, name)
        elif (isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
              and node.value.id in self.fresh):
            self.cf.defs.add(mangle(self.class_name, node.attr))
        self.generic_visit(node)

    def _self_attribute(self, node: ast.Attribute, name: str) -> None:
        self.self_nodes.add(id(node))
        if name == "__dict__":
            self.cf.readall = self.cf.setdyn = True
        if isinstance(node.ctx, ast.Store):
            self.cf.defs.add(name)
            self.cf.stateful = True
        elif isinstance(node.ctx, ast.Load):
            if id(node) not in self.fill_receivers:
                self.cf.reads.add(name)
            if self.instance and not self.guard:
                self.cf.uses.setdefault(name, []).append(node.lineno)


def _catches(handler: ast.excepthandler, names: frozenset[str]) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any((dotted_name(t) or "").rpartition(".")[2] in names for t in types)


