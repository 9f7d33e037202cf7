"""Per-class facts: bases, attributes defined and used, container traffic.

A class's *defs* are every way an attribute comes to exist on its instances:
assignment through ``self`` (plain, annotated, augmented, tuple/star unpacking,
for/with targets), ``setattr``/``__setattr__`` with a literal name, class-body
names (class attributes, methods, properties, nested classes, dataclass and
NamedTuple fields), ``__slots__``, and stores on the class or on fresh instances
elsewhere in the module.  *uses* are ``self.X`` reads in instance methods outside
``try/except AttributeError``.  Container traffic separates *fills* (``append``,
``put``, item assignment...) from every other read, which consumes or lets the
container escape.  Method bodies are walked by ``integration_methods.MethodWalker``.
"""

from __future__ import annotations

import ast

from kloros_tasks.detectors._treecache import walk
from kloros_tasks.detectors.integration.methods import (
    CONSTRUCTORS,
    ClassFacts,
    MethodWalker,
    is_container,
    is_queue_type,
    mangle,
)
from kloros_tasks.detectors.integration.scope import (
    SAFE_DECORATORS,
    ModuleScope,
    dotted_name,
    target_names,
    top_statements,
)
from kloros_tasks.detectors.integration.topictext import class_constants

SAFE_METACLASSES = frozenset({"abc.ABCMeta", "builtins.type"})
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def extract_classes(scope: ModuleScope, groups: dict[type, list[ast.AST]]
                    ) -> tuple[list[ClassFacts], set[int]]:
    """Facts of every module-level class and class nested in one, plus the ids of
    the ``self.X`` attribute nodes (so other walks can tell them from ``obj.X``).
    ``groups``: the file's nodes by class (``_treecache.nodes_by_type``)."""
    out: list[ClassFacts] = []
    self_nodes: set[int] = set()
    made: list[tuple[ClassFacts, ast.ClassDef]] = []
    for node in scope.classes:
        _class(scope, node, "", {}, out, self_nodes, made)
    # Only a file with a three-argument ``type(...)`` call can build a subclass so:
    # the methods are walked for it only then.
    if any(_builds_type(call) for call in groups.get(ast.Call, ())):
        for cf, node in made:
            cf.escapes |= _subclassed_at_run_time(node)
    _module_stores(groups, {c.local: c for c in out if "." not in c.local})
    return out, self_nodes


def _class(scope: ModuleScope, node: ast.ClassDef, prefix: str, enclosing: dict[str, str],
           out: list[ClassFacts], self_nodes: set[int],
           made: list[tuple[ClassFacts, ast.ClassDef]]) -> None:
    cf = ClassFacts(local=prefix + node.name, line=node.lineno, consts=class_constants(node))
    out.append(cf)
    made.append((cf, node))
    _bases(scope, node, enclosing, cf)
    nested = {n.name: f"{scope.module}.{cf.local}.{n.name}"
              for n in top_statements(node.body) if isinstance(n, ast.ClassDef)}
    for stmt in top_statements(node.body):
        _body_statement(scope, node, stmt, cf, nested, out, self_nodes, made)


def _builds_type(call: ast.Call) -> bool:
    """``type(name, (A, ...), namespace)``."""
    return (len(call.args) == 3 and isinstance(call.args[1], ast.Tuple)
            and dotted_name(call.func) == "type")


def _subclassed_at_run_time(node: ast.ClassDef) -> bool:
    """A method that builds a subclass of its own class with ``type(name, (cls,), ns)``
    (Django's ``BaseManager.from_queryset``): the subclasses are not in the tree."""
    own = {"cls", "self", node.name}
    for item in node.body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for call in walk(item):
            if (isinstance(call, ast.Call) and _builds_type(call)
                    and any((dotted_name(e) or "").partition(".")[0] in own
                            for e in call.args[1].elts)):
                return True
    return False


def _bases(scope: ModuleScope, node: ast.ClassDef, enclosing: dict[str, str],
           cf: ClassFacts) -> None:
    for base in node.bases:
        head = dotted_name(base)
        if head is not None and head.partition(".")[0] in enclosing:
            first, _, rest = head.partition(".")
            ref = enclosing[first] + ("." + rest if rest else "")
        else:
            ref = scope.ref_of(base)
        if ref is None:
            cf.opaque.add("computed base")
        if ref != "builtins.object":
            cf.bases.append(ref)
    for kw in node.keywords:
        if kw.arg == "metaclass" and scope.ref_of(kw.value) not in SAFE_METACLASSES:
            cf.opaque.add("metaclass")
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if scope.ref_of(target) not in SAFE_DECORATORS:
            cf.opaque.add("decorator")


def _body_statement(scope: ModuleScope, node: ast.ClassDef, stmt: ast.stmt, cf: ClassFacts,
                    nested: dict[str, str], out: list[ClassFacts], self_nodes: set[int],
                    made: list[tuple[ClassFacts, ast.ClassDef]]) -> None:
    def define(name: str) -> None:
        cf.defs.add(mangle(node.name, name))

    if isinstance(stmt, _FUNCS):
        define(stmt.name)
        cf.stateful |= stmt.name in CONSTRUCTORS
        cf.getattr_hook |= stmt.name in ("__getattr__", "__getattribute__")
        _method(node.name, stmt, cf, self_nodes)
    elif isinstance(stmt, ast.ClassDef):
        define(stmt.name)
        _class(scope, stmt, cf.local + ".", nested, out, self_nodes, made)
    elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            for name in target_names(target):
                define(name)
                if is_container(stmt.value):
                    cf.creates.setdefault(mangle(node.name, name), stmt.lineno)
                    if is_queue_type(stmt.value):
                        cf.queues.add(mangle(node.name, name))
                if name == "__slots__":
                    cf.defs.update(_slot_names(stmt.value))
        cf.stateful |= isinstance(stmt, ast.AnnAssign) and stmt.value is None  # a field
    elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for alias in stmt.names:
            define((alias.asname or alias.name).partition(".")[0])
    elif isinstance(stmt, (ast.For, ast.AsyncFor)):
        for name in target_names(stmt.target):
            define(name)
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            for name in target_names(item.optional_vars) if item.optional_vars else ():
                define(name)
    if not isinstance(stmt, (*_FUNCS, ast.ClassDef)) and _calls_namespace(stmt):
        cf.setdyn = True  # locals()/vars()/exec in a class body define unseen names


def _slot_names(value: ast.expr | None) -> set[str]:
    elts = value.elts if isinstance(value, (ast.Tuple, ast.List, ast.Set)) else (
        value.keys if isinstance(value, ast.Dict) else [value])
    return {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _calls_namespace(stmt: ast.stmt) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id in ("locals", "vars", "exec") for n in walk(stmt)
               if not isinstance(n, (*_FUNCS, ast.Lambda)))


def _method(class_name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, cf: ClassFacts,
            self_nodes: set[int]) -> None:
    decorators = {(dotted_name(d) or "").rpartition(".")[2] for d in fn.decorator_list}
    args = [*fn.args.posonlyargs, *fn.args.args]
    if "staticmethod" in decorators or not args:
        return
    instance = "classmethod" not in decorators and fn.name != "__new__"
    walker = MethodWalker(class_name, args[0].arg, instance, cf, self_nodes)
    for stmt in fn.body:
        walker.visit(stmt)


def _chosen_classes(node: ast.AST) -> list[str]:
    """Class names picked at run time where a base may come from:
    ``Base = A if cond else B``, ``cond and A or B``, ``type(name, (A,), ns)``."""
    if isinstance(node, ast.Assign) and isinstance(node.value, (ast.BoolOp, ast.IfExp)):
        return [n.id for n in walk(node.value) if isinstance(n, ast.Name)]
    if (isinstance(node, ast.Call) and dotted_name(node.func) == "type" and len(node.args) == 3
            and isinstance(node.args[1], ast.Tuple)):
        return [n.id for n in node.args[1].elts if isinstance(n, ast.Name)]
    return []


def _mark_chosen(node: ast.AST, classes: dict[str, ClassFacts]) -> None:
    for name in _chosen_classes(node):
        if name in classes:
            classes[name].escapes = True


def _module_stores(groups: dict[type, list[ast.AST]], classes: dict[str, ClassFacts]) -> None:
    """``Cls.X = ...``, ``setattr(Cls, "X", ...)`` (or any call shaped like it)
    and ``obj = Cls(); obj.X = ...`` anywhere in the module define X on that class;
    ``Other.__bases__ += (Cls,)`` makes Cls a run-time mixin.  Every effect here is
    a set member or a flag, so reading the groups one after another is the same as
    reading the nodes in the walk's order."""
    if not classes:
        return
    instances: dict[str, str] = {}
    assigns = groups.get(ast.Assign, ())
    for node in assigns:
        if (isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id in classes):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    instances[target.id] = node.value.func.id
    for node in assigns:
        if any(isinstance(t, ast.Attribute) and t.attr == "__bases__" for t in node.targets):
            for name in walk(node.value):
                if isinstance(name, ast.Name) and name.id in classes:
                    classes[name.id].opaque.add("mixed into bases at run time")
        _mark_chosen(node, classes)
    for node in groups.get(ast.Attribute, ()):
        if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name):
            owner = node.value.id if node.value.id in classes else instances.get(node.value.id)
            if owner is not None:
                classes[owner].defs.add(node.attr)
    for node in groups.get(ast.Call, ()):
        _mark_chosen(node, classes)
        if (len(node.args) >= 2
                and isinstance(node.args[0], ast.Name) and node.args[0].id in classes):
            # setattr(Cls, "x", v), and helpers shaped like it (defproperty(Cls, "x")).
            literal = node.args[1]
            if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                classes[node.args[0].id].defs.add(literal.value)
            elif dotted_name(node.func) == "setattr":
                classes[node.args[0].id].setdyn = True
