"""``ast.NodeVisitor``'s walk with the handler found in one dict lookup.

``ast.NodeVisitor.visit`` builds the name ``"visit_" + class name`` and looks it up on
the instance for every node, and ``generic_visit`` goes through ``ast.iter_fields``;
on a whole module that overhead is most of a visitor's time.  ``Visitor`` keeps the
same walk (depth first, a ``visit_<Class>`` handler where the subclass defines one,
else the children in field order) with a table of handlers per subclass, built once,
and does not descend into nodes that cannot hold a node with a handler: contexts and
operators, plus the classes a subclass lists in ``INERT`` (a subclass with no
handler for anything under ``Name`` or ``Constant`` may list those).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any, ClassVar

from kloros_tasks.detectors._treecache import children

# Node classes with no child nodes at all.
_LEAVES = frozenset(
    cls for base in (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
    for cls in base.__subclasses__())


class Visitor:
    """Subclass, define ``visit_<Class>`` methods, call ``visit(tree)``."""

    INERT: ClassVar[frozenset[type]] = frozenset()
    _handlers: ClassVar[dict[type, Callable[[Any, Any], Any]]] = {}
    _skip: ClassVar[frozenset[type]] = _LEAVES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type, Callable[[Any, Any], Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                node_class = getattr(ast, name[len("visit_"):], None) \
                    if name.startswith("visit_") else None
                if isinstance(node_class, type) and issubclass(node_class, ast.AST):
                    handlers[node_class] = fn
        cls._handlers = handlers
        cls._skip = (_LEAVES | cls.INERT) - set(handlers)

    def visit(self, node: ast.AST) -> Any:
        handler = self._handlers.get(node.__class__)
        if handler is not None:
            return handler(self, node)
        if node.__class__ not in self._skip:
            self.generic_visit(node)
        return None

    def generic_visit(self, node: ast.AST) -> None:
        visit = self.visit
        for child in children(node):
            visit(child)


class PathVisitor(Visitor):
    """A ``Visitor`` that knows the nodes being visited, outermost first.  When every
    handler visits only children of the node it handles, they are a path down the
    tree, and ``parent(node)`` of the node being visited is the one before it."""

    def __init__(self) -> None:
        self._path: list[ast.AST] = []

    def visit(self, node: ast.AST) -> Any:
        path = self._path
        path.append(node)
        handler = self._handlers.get(node.__class__)  # Visitor.visit, inlined
        if handler is not None:
            result = handler(self, node)
        else:
            result = None
            if node.__class__ not in self._skip:
                self.generic_visit(node)
        path.pop()
        return result

    def parent(self, node: ast.AST) -> ast.AST | None:
        """The parent of ``node``, the node being visited (None for the root)."""
        path = self._path
        return path[-2] if len(path) > 1 and path[-1] is node else None
