"""What a module binds at top level, what it imports, and how to resolve its names.

The names a module binds are what ``from mod import Name`` can find; a name bound
more than once, or by something other than a class or an import, is kept but marked
``other`` (it exists, but we do not pretend to know what it is).  Imports inside a
``try`` whose handler catches ImportError are optional by design and not judged.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from dataclasses import dataclass, field

from kloros_tasks.detectors._treecache import children, walk
from kloros_tasks.detectors.integration.keys import module_names, resolve_relative

IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)
_TRY = (ast.Try, ast.TryStar)
# The fields that hold statements (handlers and match cases included), in the order of
# every node class's ``_fields``: expressions hold none, so they are not walked.
_BLOCKS = ("body", "handlers", "orelse", "finalbody", "cases")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
BUILTIN_NAMES = frozenset(dir(builtins))
IMPORT_HOOKS = frozenset({"sys.meta_path", "sys.path_hooks"})
_HOOK_ATTRS = frozenset(h.rpartition(".")[2] for h in IMPORT_HOOKS)
# Class decorators known to return the class they were given, unchanged in kind.
SAFE_DECORATORS = frozenset({
    "dataclasses.dataclass", "functools.total_ordering", "typing.final",
    "typing_extensions.final", "typing.runtime_checkable", "typing_extensions.runtime_checkable",
    "enum.unique", "typing.type_check_only",
})


@dataclass(frozen=True)
class Import:
    """One judged import: ``parts`` is the module path, plus the name for a
    ``from`` import (``from a.b import C -> ["a", "b", "C"]``)."""

    parts: tuple[str, ...]
    line: int


@dataclass
class ModuleScope:
    path: str
    names: tuple[str, ...]
    bindings: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    stars: list[str] = field(default_factory=list)
    dynamic: bool = False
    consts: dict[str, str | None] = field(default_factory=dict)
    classes: list[ast.ClassDef] = field(default_factory=list)

    @property
    def module(self) -> str:
        return self.names[0]

    def bind(self, name: str, kind: str, target: str = "") -> None:
        self.bindings.setdefault(name, set()).add((kind, target))

    def binding(self, name: str) -> tuple[str, str]:
        """(kind, target) of a top-level name: class, alias (``from`` import or
        plain assignment of another name, to a qualified name), module (plain
        ``import``) or other.  Several different bindings make it ``other``."""
        found = self.bindings.get(name, set())
        if len(found) != 1:
            return ("other", "")
        kind, target = next(iter(found))
        if kind == "expr":
            resolved = self._resolve_dotted(target, via_expr=False)
            return ("alias", resolved) if resolved else ("other", "")
        return (kind, target)

    def ref(self, name: str, via_expr: bool = True) -> str | None:
        """Qualified name a bare name in this module's global scope refers to."""
        if name in self.bindings:
            kind, target = self.binding(name) if via_expr else self._plain(name)
            return target if kind in ("alias", "module") else f"{self.module}.{name}"
        if name in BUILTIN_NAMES:
            return f"builtins.{name}"
        # An unknown name may come from a star import: look it up as our own.
        return f"{self.module}.{name}" if self.stars else None

    def _plain(self, name: str) -> tuple[str, str]:
        found = self.bindings.get(name, set())
        if len(found) == 1 and next(iter(found))[0] in ("alias", "module", "class"):
            return next(iter(found))
        return ("other", "")

    def _resolve_dotted(self, dotted: str, via_expr: bool) -> str | None:
        head, _, rest = dotted.partition(".")
        base = self.ref(head, via_expr=via_expr)
        if base is None:
            return None
        return f"{base}.{rest}" if rest else base

    def ref_of(self, expr: ast.expr) -> str | None:
        """Qualified name of a base/decorator expression, or None if it is computed."""
        dotted = dotted_name(expr)
        return None if dotted is None else self._resolve_dotted(dotted, via_expr=True)


def dotted_name(expr: ast.expr) -> str | None:
    """``a.b.C`` (and ``a.b.C[T]``) as text; None for anything computed."""
    if isinstance(expr, ast.Subscript):
        return dotted_name(expr.value)
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    parts.append(expr.id)
    return ".".join(reversed(parts))


def target_names(target: ast.expr) -> Iterator[str]:
    """Names bound by an assignment target (tuples and starred unpacking included)."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from target_names(target.value)


def top_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements executed at this scope's level, through if/for/while/with/try/match."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, _COMPOUND):
            yield from top_statements(stmt.body)
            yield from top_statements(stmt.orelse if hasattr(stmt, "orelse") else [])
        elif isinstance(stmt, _TRY):
            yield from top_statements(stmt.body)
            for handler in stmt.handlers:
                yield from top_statements(handler.body)
            yield from top_statements(stmt.orelse)
            yield from top_statements(stmt.finalbody)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                yield from top_statements(case.body)


def catches_import_error(handler: ast.excepthandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any((dotted_name(t) or "").rpartition(".")[2] in IMPORT_ERRORS for t in types)


def build_scope(path: str, tree: ast.Module,
                groups: dict[type, list[ast.AST]]) -> ModuleScope:
    """Collect the module-level facts of one parsed file (``groups``: all its nodes
    by class, see ``_treecache.nodes_by_type``)."""
    scope = ModuleScope(path=path, names=module_names(path))
    for stmt in top_statements(tree.body):
        _bind_statement(scope, stmt)
        _bind_walrus(scope, stmt)
    for node in groups.get(ast.Global, ()):
        for name in node.names:
            scope.bind(name, "other")
    for node in groups.get(ast.Call, ()):
        if isinstance(node.func, ast.Name):
            # globals() hands the module namespace to code we cannot follow.
            scope.dynamic |= node.func.id == "globals"
    for node in groups.get(ast.Attribute, ()):
        if node.attr in _HOOK_ATTRS and dotted_name(node) in IMPORT_HOOKS:
            scope.dynamic = True  # an import hook serves submodules we cannot see
    _collect_imports(scope, tree, guarded=False)
    _bind_decorated_members(scope)
    return scope


def _bind_decorated_members(scope: ModuleScope) -> None:
    """An unknown class decorator may copy the class's members into the module
    (``enum.global_enum`` does, for ``re.IGNORECASE``): they may be module names."""
    for node in scope.classes:
        decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
        if all(scope.ref_of(d) in SAFE_DECORATORS for d in decorators):
            continue
        for stmt in top_statements(node.body):
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for name in (n for t in targets for n in target_names(t)):
                    scope.bind(name, "other")


def _bind_statement(scope: ModuleScope, stmt: ast.stmt) -> None:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        scope.bind(stmt.name, "other")
        scope.dynamic |= stmt.name == "__getattr__"  # PEP 562 module attributes
    elif isinstance(stmt, ast.ClassDef):
        scope.bind(stmt.name, "class")
        scope.classes.append(stmt)
    elif isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if alias.asname:
                scope.bind(alias.asname, "module", alias.name)
            else:
                head = alias.name.partition(".")[0]
                scope.bind(head, "module", head)
    elif isinstance(stmt, ast.ImportFrom):
        _bind_import_from(scope, stmt)
    elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        _bind_assignment(scope, stmt)
    elif isinstance(stmt, (ast.For, ast.AsyncFor)):
        for name in target_names(stmt.target):
            scope.bind(name, "other")
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            if item.optional_vars is not None:
                for name in target_names(item.optional_vars):
                    scope.bind(name, "other")
    elif isinstance(stmt, ast.Match):
        for case in stmt.cases:
            for node in walk(case.pattern):
                for name in (getattr(node, "name", None), getattr(node, "rest", None)):
                    if isinstance(name, str):
                        scope.bind(name, "other")
    elif isinstance(stmt, ast.Expr):
        _mark_module_level_dynamic(scope, stmt.value)


def _bind_import_from(scope: ModuleScope, stmt: ast.ImportFrom) -> None:
    module = resolve_relative(scope.path, stmt.level, stmt.module)
    for alias in stmt.names:
        if alias.name == "*":
            if module:
                scope.stars.append(module)
            else:
                scope.dynamic = True  # a star we cannot resolve may bind anything
        elif module:
            scope.bind(alias.asname or alias.name, "alias", f"{module}.{alias.name}")
        else:
            scope.bind(alias.asname or alias.name, "other")


def _bind_assignment(scope: ModuleScope, stmt: ast.Assign | ast.AnnAssign | ast.AugAssign) -> None:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    value = stmt.value
    for target in targets:
        if isinstance(target, ast.Subscript) and dotted_name(target.value) == "sys.modules":
            scope.dynamic = True  # the module replaces itself or a sibling
        for name in target_names(target):
            scope.dynamic |= name == "__path__"  # extend_path: submodules from elsewhere
            # PEP 562 by assignment (pydantic: ``__getattr__ = getattr_migration(__name__)``)
            scope.dynamic |= name == "__getattr__"
            dotted = dotted_name(value) if value is not None else None
            single = len(targets) == 1 and isinstance(target, ast.Name)
            if single and dotted and not isinstance(value, ast.Subscript):
                scope.bind(name, "expr", dotted)
            else:
                scope.bind(name, "other")
            _note_constant(scope, name, value if single else None)
    if value is not None:
        _mark_module_level_dynamic(scope, value)


def _note_constant(scope: ModuleScope, name: str, value: ast.expr | None) -> None:
    literal = value.value if isinstance(value, ast.Constant) else None
    text = literal if isinstance(literal, str) else None
    # A name assigned twice is not a constant we can rely on.
    scope.consts[name] = None if name in scope.consts else text


def _bind_walrus(scope: ModuleScope, stmt: ast.stmt) -> None:
    if isinstance(stmt, _SCOPES):
        return
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            scope.bind(node.target.id, "other")
        stack.extend(n for n in children(node)
                     if not isinstance(n, _SCOPES) and not isinstance(n, ast.stmt))


def _mark_module_level_dynamic(scope: ModuleScope, value: ast.expr) -> None:
    """exec(), locals() or vars() at module level write names we cannot see."""
    for node in walk(value):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "exec" or (node.func.id in ("locals", "vars") and not node.args):
                scope.dynamic = True


def _collect_imports(scope: ModuleScope, node: ast.AST, guarded: bool) -> None:
    """Every import statement of the file (functions included), minus guarded ones."""
    if isinstance(node, _TRY):
        body_guarded = guarded or any(catches_import_error(h) for h in node.handlers)
        for child in node.body:
            _collect_imports(scope, child, body_guarded)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            _collect_imports(scope, child, guarded)
        return
    if isinstance(node, (ast.With, ast.AsyncWith)) and _suppresses_import_error(node):
        guarded = True
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        # Read by type checkers only, which may resolve them against stubs.
        for child in node.orelse:
            _collect_imports(scope, child, guarded)
        return
    if isinstance(node, ast.Import) and not guarded:
        for alias in node.names:
            scope.imports.append(Import(tuple(alias.name.split(".")), node.lineno))
    elif isinstance(node, ast.ImportFrom) and not guarded:
        _collect_import_from(scope, node)
    for name in _BLOCKS:  # a statement's statements are in these fields, in this order
        block = getattr(node, name, None)
        if block.__class__ is list:
            for child in block:
                _collect_imports(scope, child, guarded)


def _collect_import_from(scope: ModuleScope, node: ast.ImportFrom) -> None:
    module = resolve_relative(scope.path, node.level, node.module)
    if not module:
        return
    parts = tuple(module.split("."))
    for alias in node.names:
        full = parts if alias.name == "*" else (*parts, alias.name)
        scope.imports.append(Import(full, node.lineno))


def _is_type_checking(test: ast.expr) -> bool:
    return (dotted_name(test) or "").rpartition(".")[2] == "TYPE_CHECKING"


def _suppresses_import_error(node: ast.With | ast.AsyncWith) -> bool:
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call) and (dotted_name(call.func) or "").endswith("suppress"):
            if any((dotted_name(a) or "").rpartition(".")[2] in IMPORT_ERRORS for a in call.args):
                return True
    return False
