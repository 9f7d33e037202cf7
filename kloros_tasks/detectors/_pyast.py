"""Safe AST helpers shared by the detectors that read Python source.

``ast.parse`` raises more than SyntaxError on hostile input: NUL bytes give
ValueError (3.11) or SyntaxError (3.12+), deeply nested source gives RecursionError
or MemoryError.  A file that cannot be parsed is data ("line N: message"), never a
crash, so detectors parse through ``parse`` here (or through
``_treecache.parse_tree`` when they turn the exception into data themselves), and
one text is parsed once per process however many detectors read it.
"""

from __future__ import annotations

import ast
import bisect
import posixpath
from collections.abc import Iterator

from kloros_tasks.detectors import layout
from kloros_tasks.detectors._treecache import nodes_by_type, parse_tree, walk

TEST_DIRS = frozenset({"tests", "test"})
PLAIN_BASES = frozenset({"object", "Protocol", "typing.Protocol", "Generic", "typing.Generic"})
_NESTED_BLOCKS = ("body", "orelse", "finalbody")


def parse(text: str) -> tuple[ast.Module | None, str | None]:
    """(tree, None), or (None, "line N: message") when ``text`` is not parseable Python.
    The tree may be shared with other detectors: never change it."""
    try:
        return parse_tree(text), None
    except SyntaxError as exc:
        return None, f"line {exc.lineno or _nul_line(text)}: {exc.msg}"
    except ValueError as exc:  # NUL bytes on 3.11
        return None, f"line {_nul_line(text)}: {exc}"
    except (RecursionError, MemoryError):
        return None, "line 1: too deeply nested to parse"


def _nul_line(text: str) -> int:
    nul = text.find("\x00")
    return 1 if nul < 0 else text.count("\n", 0, nul) + 1


def module_name(path: str) -> str | None:
    """Dotted name of a module from its relative path and import root (see
    ``kloros_tasks.detectors.layout``): "a/b/c.py" -> "a.b.c", "a/b/__init__.py" ->
    "a.b", "src/a/b.py" -> "a.b".  None when a component cannot be imported (not an
    identifier, or a keyword)."""
    return layout.module_name(path)


def is_test_path(path: str) -> bool:
    """test_*.py, *_test.py, conftest.py, or anything under a tests/ (or test/) directory."""
    directory, base = posixpath.split(path)
    if base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py":
        return True
    return any(part in TEST_DIRS for part in directory.split("/"))


def flatten_block(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a module or class body, looking inside if/try/with blocks
    (``try: import x except ImportError: x = None`` still defines ``x``)."""
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, ast.If | ast.Try | ast.TryStar | ast.With | ast.AsyncWith):
            inner: list[ast.stmt] = []
            for name in _NESTED_BLOCKS:
                inner.extend(getattr(stmt, name, ()))
            for handler in getattr(stmt, "handlers", ()):
                inner.extend(handler.body)
            stack.extend(reversed(inner))
        else:
            yield stmt


def bound_names(target: ast.expr) -> Iterator[str]:
    """Plain names an assignment target binds (``a, (b, *c) = ...`` -> a, b, c)."""
    stack = [target]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Tuple | ast.List):
            stack.extend(node.elts)
        elif isinstance(node, ast.Starred):
            stack.append(node.value)


def assigned_names(stmt: ast.stmt) -> list[str]:
    """Names bound by an assignment statement (empty for anything else)."""
    if isinstance(stmt, ast.Assign):
        return [n for t in stmt.targets for n in bound_names(t)]
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        return list(bound_names(stmt.target))
    type_alias = getattr(ast, "TypeAlias", None)  # ``type X = ...``, 3.12+
    if type_alias is not None and isinstance(stmt, type_alias):
        return list(bound_names(stmt.name))
    return []


def imported_names(stmt: ast.Import | ast.ImportFrom) -> list[str]:
    """Names an import binds; "*" for a star import."""
    out = []
    for alias in stmt.names:
        if alias.asname:
            out.append(alias.asname)
        elif isinstance(stmt, ast.Import):
            out.append(alias.name.split(".")[0])  # ``import a.b`` binds ``a``
        else:
            out.append(alias.name)
    return out


def dotted(node: ast.expr) -> str | None:
    """"a.b.c" for a Name/Attribute chain (a call's function for a Call), else None."""
    if isinstance(node, ast.Call):
        node = node.func
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def literal_all(body: list[ast.stmt]) -> frozenset[str] | None:
    """The names in a literal module ``__all__`` list or tuple; None when there is none
    or it is computed (then publicity falls back to the leading underscore)."""
    names: set[str] | None = None
    for stmt in flatten_block(body):
        if "__all__" not in assigned_names(stmt) or stmt.value is None:
            continue
        if isinstance(stmt, ast.AugAssign) and names is None:
            return None
        value = stmt.value
        if not isinstance(value, ast.List | ast.Tuple):
            return None
        items = [e.value for e in value.elts if isinstance(e, ast.Constant)]
        if len(items) != len(value.elts) or not all(isinstance(i, str) for i in items):
            return None
        names = (names or set()) | set(items) if isinstance(stmt, ast.AugAssign) else set(items)
    return None if names is None else frozenset(names)


# --- what a module defines, and what it leaves undocumented ------------------------

class Definitions:
    """Dotted names a module defines, with what is known of their attributes.

    ``defines``: modules' members, classes and their members.  ``opaque``: the names
    whose own attributes are unknown (functions, variables, imports).  ``open``: the
    modules and classes that may have attributes not written here (a module
    ``__getattr__``, a star import, a class with a base class).
    """

    def __init__(self, tree: ast.Module | None = None) -> None:
        self.defines: set[str] = set()
        self.opaque: set[str] = set()
        self.open: set[str] = set()
        # With the module's tree: the lines of its ``name.attr = ...`` stores by name,
        # so that a method with none on its lines is not walked for them.
        self._stores = attribute_store_lines(tree) if tree is not None else None

    def body(self, statements: list[ast.stmt], prefix: str, in_class: bool = False) -> None:
        """Collect the names ``statements`` bind under the dotted ``prefix``."""
        for stmt in flatten_block(statements):
            visit = getattr(self, f"visit_{type(stmt).__name__}", None)
            if visit is not None:
                visit(stmt, prefix, in_class)
            else:
                for bound in assigned_names(stmt):
                    self._value(f"{prefix}.{bound}")

    def visit_ClassDef(self, node: ast.ClassDef, prefix: str, in_class: bool) -> None:
        qualname = f"{prefix}.{node.name}"
        self.defines.add(qualname)
        if _inherits(node):  # inherited attributes are not visible from here
            self.open.add(qualname)
        self.body(node.body, qualname, in_class=True)

    def visit_FunctionDef(self, node: ast.FunctionDef, prefix: str, in_class: bool) -> None:
        self._value(f"{prefix}.{node.name}")
        if node.name in ("__getattr__", "__getattribute__"):
            self.open.add(prefix)
        if in_class:
            for attribute in _self_attributes(node, self._stores):
                self._value(f"{prefix}.{attribute}")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import | ast.ImportFrom, prefix: str, in_class: bool) -> None:
        for bound in imported_names(node):
            if bound == "*":
                self.open.add(prefix)
            else:
                self._value(f"{prefix}.{bound}")

    visit_ImportFrom = visit_Import

    def _value(self, qualname: str) -> None:
        self.defines.add(qualname)
        self.opaque.add(qualname)


def assigned_module_attributes(tree: ast.Module) -> set[str]:
    """``pkg.mod.attr`` for every ``mod.attr = ...`` anywhere in the file, ``mod`` being
    imported at module level (``from pkg import mod``): a module attribute bound from
    outside (``mail.outbox = []`` in Django's test utilities)."""
    aliases: dict[str, str] = {}
    for stmt in flatten_block(tree.body):
        if isinstance(stmt, ast.Import):
            aliases.update({a.asname: a.name for a in stmt.names if a.asname})
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            aliases.update({a.asname or a.name: f"{stmt.module}.{a.name}"
                            for a in stmt.names if a.name != "*"})
    out: set[str] = set()
    for node in nodes_by_type(tree).get(ast.Attribute, ()) if aliases else ():
        if (isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            out.add(f"{aliases[node.value.id]}.{node.attr}")
    return out


def _inherits(node: ast.ClassDef) -> bool:
    bases = [dotted(b.value if isinstance(b, ast.Subscript) else b) for b in node.bases]
    return bool(node.keywords) or any(b not in PLAIN_BASES for b in bases)


def attribute_store_lines(tree: ast.Module) -> dict[str, list[int]]:
    """name -> sorted line numbers of every ``name.attr = ...`` (any store) in ``tree``."""
    out: dict[str, list[int]] = {}
    for node in nodes_by_type(tree).get(ast.Attribute, ()):
        if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name):
            out.setdefault(node.value.id, []).append(node.lineno)
    for lines in out.values():
        lines.sort()
    return out


def _self_attributes(func: ast.FunctionDef | ast.AsyncFunctionDef,
                     stores: dict[str, list[int]] | None = None) -> set[str]:
    """``self.x = ...`` targets in a method (``self`` being its first parameter).
    ``stores`` (``attribute_store_lines`` of the module) skips the walk of a method
    whose lines, decorators included, hold no store through that name: every node of
    a function lies on its lines."""
    params = func.args.posonlyargs + func.args.args
    if not params or any(dotted(d) == "staticmethod" for d in func.decorator_list):
        return set()
    receiver = params[0].arg
    if stores is not None:
        lines = stores.get(receiver, ())
        first = min([func.lineno, *(d.lineno for d in func.decorator_list)])
        at = bisect.bisect_left(lines, first)
        if at == len(lines) or lines[at] > (func.end_lineno or func.lineno):
            return set()
    return {node.attr for node in walk(func)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == receiver}


def undocumented(path: str, tree: ast.Module) -> list[list]:
    """[line, qualified name] of each public definition without a docstring.

    As pydocstyle has it, nothing in a private module (``_markupbase.py``, ``re/_parser.py``)
    is public; neither is anything in a module that warns on import that it is deprecated
    (nobody documents what is on its way out)."""
    out: list[list] = []
    if not _module_is_public(path) or _warns_deprecated(tree):
        return out
    if tree.body and ast.get_docstring(tree) is None:
        out.append([1, "<module>"])
    exported = literal_all(tree.body)
    for stmt in flatten_block(tree.body):
        if _is_public_definition(stmt) and (exported is None or stmt.name in exported):
            out.extend(_undocumented_in(stmt, stmt.name))
    return out


def _warns_deprecated(tree: ast.Module) -> bool:
    """A module-level ``warnings.warn(..., DeprecationWarning)`` or ``_deprecated(...)``."""
    for stmt in flatten_block(tree.body):
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not isinstance(call, ast.Call):
            continue
        name = dotted(call.func) or ""
        if name.endswith("_deprecated") or (name.endswith("warn") and any(
                dotted(a) in ("DeprecationWarning", "PendingDeprecationWarning")
                for a in [*call.args, *(k.value for k in call.keywords)])):
            return True
    return False


def _undocumented_in(node: ast.ClassDef | ast.FunctionDef, qualname: str) -> list[list]:
    out = [] if (_exempt(node) or _declarative(node)
                 or ast.get_docstring(node) is not None) else [[node.lineno, qualname]]
    # The members of a class that inherits are taken for overrides: inspect.getdoc, help()
    # and Sphinx autodoc give them the docstring of the method they override.
    if isinstance(node, ast.ClassDef) and not _inherits(node):
        for stmt in flatten_block(node.body):
            if _is_public_definition(stmt):
                out.extend(_undocumented_in(stmt, f"{qualname}.{stmt.name}"))
    return out


def _is_public_definition(stmt: ast.stmt) -> bool:
    """A class or (async) function whose name has no leading underscore (dunders neither)."""
    definition = isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    return definition and not stmt.name.startswith("_")


def _declarative(node: ast.ClassDef | ast.FunctionDef) -> bool:
    """A subclass that only sets class attributes (a lookup with its ``lookup_name``, a
    warning category, a widget variant): its bases and values say what it is."""
    if not isinstance(node, ast.ClassDef) or not _inherits(node):
        return False
    return not any(isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                   for s in flatten_block(node.body))


def _exempt(node: ast.ClassDef | ast.FunctionDef) -> bool:
    """Overload stubs and property setters/deleters: the real definition carries the doc."""
    for decorator in node.decorator_list:
        name = dotted(decorator) or ""
        if name in ("overload", "typing.overload") or name.endswith((".setter", ".deleter")):
            return True
    return False


def _module_is_public(path: str) -> bool:
    """pydocstyle's rule: not inside a _private package, and a public or dunder stem."""
    *directories, stem = path[: -len(".py")].split("/")
    if any(d.startswith("_") for d in directories):
        return False
    return not stem.startswith("_") or (stem.startswith("__") and stem.endswith("__"))
