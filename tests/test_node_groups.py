"""The shared node groups and the dict-dispatch visitor read a tree as ``ast.walk`` and
``ast.NodeVisitor`` do, and the shortcuts built on them give the same answers."""

from __future__ import annotations

import ast
from pathlib import Path

from kloros_tasks.detectors._pyast import _self_attributes, attribute_store_lines
from kloros_tasks.detectors._treecache import TreeCache, group_by_type, nodes_by_type
from kloros_tasks.detectors._visitor import Visitor
from kloros_tasks.detectors.capability.calls import aliases_of

PACKAGE = Path(__file__).resolve().parent.parent / "kloros_tasks"


def _modules() -> list[ast.Module]:
    return [ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]


def test_each_group_holds_the_nodes_of_its_class_in_the_walks_order():
    for tree in _modules():
        groups = group_by_type(ast.walk(tree))
        for cls in (ast.Call, ast.Attribute, ast.Assign, ast.Name, ast.Load):
            assert groups.get(cls, []) == [n for n in ast.walk(tree) if type(n) is cls]
        assert sum(map(len, groups.values())) == len(list(ast.walk(tree)))


def test_the_groups_of_a_kept_tree_are_computed_once():
    cache = TreeCache()
    tree = cache.parse("x = f(1)\n")
    assert cache.groups(tree) is cache.groups(tree)
    assert [type(n) for n in cache.groups(tree)[ast.Call]] == [ast.Call]


class _Order(ast.NodeVisitor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def visit_Call(self, node: ast.Call) -> None:
        self.seen.append(f"call {node.lineno}:{node.col_offset}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.seen.append(f"attr {node.attr}")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.seen.append(f"class {node.name}")  # and not below it

    def visit_Name(self, node: ast.Name) -> None:
        self.seen.append(f"name {node.id}")


class _FastOrder(Visitor, _Order):
    pass


def test_the_visitor_calls_the_same_handlers_in_the_same_order_as_ast_nodevisitor():
    for tree in _modules():
        slow, fast = _Order(), _FastOrder()
        slow.visit(tree)
        fast.visit(tree)
        assert fast.seen == slow.seen


def test_import_aliases_where_two_kinds_of_import_bind_one_name_follow_the_walk():
    inner_first = "def f():\n    from a import json\nimport json\n"
    assert aliases_of(ast.parse(inner_first)) == {"json": "a.json"}  # the def's body is deeper
    same_level = "import os\nfrom x import os\n"
    assert aliases_of(ast.parse(same_level)) == {"os": "x.os"}
    assert aliases_of(ast.parse("import a.b as c\nfrom d import e\n")) == {"c": "a.b", "e": "d.e"}


def test_a_method_is_skipped_only_when_no_store_through_its_receiver_is_on_its_lines():
    source = (
        "class A:\n"
        "    def __init__(self):\n"
        "        self.x = 1\n"
        "    def read(self):\n"
        "        return self.x\n"
        "    @deco([0 for self.y in ()])\n"
        "    def decorated(self):\n"
        "        pass\n"
        "    def other(me):\n"
        "        me.z = 2\n"
    )
    tree = ast.parse(source)
    stores = attribute_store_lines(tree)
    for method in tree.body[0].body:
        assert _self_attributes(method, stores) == _self_attributes(method), method.name
    assert [sorted(_self_attributes(m, stores)) for m in tree.body[0].body] == [
        ["x"], [], ["y"], ["z"]]


def test_nodes_by_type_of_a_tree_not_kept_is_still_complete():
    tree = ast.parse("a.b = c(d)\n")
    groups = nodes_by_type(tree)
    assert len(groups[ast.Attribute]) == 1 and len(groups[ast.Call]) == 1
