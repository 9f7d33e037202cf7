"""What text a topic expression stands for, and which strings a file declares.

``topic_text`` reads one expression: a literal (``"chem.x"``, ``b"chem.x"``), a
module-level constant or a ``self.X`` constant of the same file, a call that only
converts it (``t.encode()``, ``to_bytes(t)``), or a topic built at run time, whose
literal head is kept (``f"chem.{x}"``, ``"chem." + x``, ``"chem.%s" % x``).
``declared_topics`` lists the topic-shaped strings a file keeps in module-level
constants and displays and in class-body constants (``class Topics: X = "chem.x"``,
Enum members included): they may be published or subscribed elsewhere through
their names.
"""

from __future__ import annotations

import ast
import re

from kloros_tasks.detectors.integration.scope import dotted_name, target_names, top_statements

GLOB_CHARS = "*?["
MQTT_WILDCARD = re.compile(r"/[#+](?=/|$)")
# Topics are names: ``emit("Traceback (most recent call last):")`` writes text.
TOPIC_SHAPE = re.compile(r"\S{1,200}")
# Calls that only convert a topic between str and bytes.
CONVERSIONS = frozenset({"to_bytes", "bytes", "str", "asbytes", "cast_bytes", "ensure_bytes",
                         "to_str", "encode", "decode", "b", "u"})


def is_topic(text: str) -> bool:
    return bool(TOPIC_SHAPE.fullmatch(text))


def glob_head(text: str) -> str:
    """The literal head of a subscription pattern: glob (``chem.*``) or MQTT
    wildcards (``sensors/+/temp``, ``sensors/#``)."""
    cut = [text.index(c) for c in GLOB_CHARS if c in text]
    cut += [m.start() + 1 for m in MQTT_WILDCARD.finditer(text)]
    if text[:1] in ("#", "+"):
        cut.append(0)
    return text[: min(cut)] if cut else text


def unwrap(expr: ast.expr) -> ast.expr:
    """The converted expression of ``x.encode()``, ``to_bytes(x)``, ``str(x)``..."""
    while isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr in ("encode", "decode"):
            expr = func.value
        elif (dotted_name(func) or "").rpartition(".")[2] in CONVERSIONS and expr.args:
            expr = expr.args[0]
        else:
            break
    return expr


def topic_text(expr: ast.expr, consts: dict[str, str | None],
               attrs: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(literal topic, "") for a literal; (None, literal head) for a built one."""
    expr = unwrap(expr)
    if isinstance(expr, ast.Constant) and isinstance(expr.value, (str, bytes)):
        value = expr.value
        return (value.decode("latin-1") if isinstance(value, bytes) else value), ""
    if isinstance(expr, ast.Name) and consts.get(expr.id):
        return consts[expr.id], ""
    if (attrs and isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
            and expr.value.id == "self" and expr.attr in attrs):
        return attrs[expr.attr], ""
    if isinstance(expr, ast.JoinedStr) and expr.values:
        if all(isinstance(v, ast.Constant) for v in expr.values):
            return "".join(str(v.value) for v in expr.values), ""
        first = expr.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return None, first.value
        return None, ""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Mod)):
        literal, head = topic_text(expr.left, consts, attrs)
        text = literal if literal is not None else head
        return None, text.split("%")[0] if isinstance(expr.op, ast.Mod) else text
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "format"):
        literal, _ = topic_text(expr.func.value, consts, attrs)
        return None, (literal or "").split("{")[0]
    return None, ""


def self_constants(groups: dict[type, list[ast.AST]]) -> dict[str, str]:
    """``self.X`` assigned one string (or bytes) literal, and nothing else, in the file
    (``self.topic = b"watcher."`` then ``setsockopt(zmq.SUBSCRIBE, self.topic)``).
    ``groups``: the file's nodes by class (``_treecache.nodes_by_type``)."""
    values: dict[str, set[str | None]] = {}
    assignments = [*groups.get(ast.Assign, ()), *groups.get(ast.AnnAssign, ()),
                   *groups.get(ast.AugAssign, ())]
    for node in assignments:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            targets, value = [node.target], node.value
        for target in targets:
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "self"):
                literal = value.value if isinstance(value, ast.Constant) else None
                if isinstance(literal, bytes):
                    literal = literal.decode("latin-1")
                ok = isinstance(literal, str) and len(targets) == 1 \
                    and not isinstance(node, ast.AugAssign)
                values.setdefault(target.attr, set()).add(literal if ok else None)
    return {k: next(iter(v)) for k, v in values.items()
            if len(v) == 1 and None not in v}


def class_constants(node: ast.ClassDef) -> dict[str, str]:
    """Topic-shaped string constants of a class body (``X = "chem.x"``, Enum members)."""
    out: dict[str, str | None] = {}
    for stmt in top_statements(node.body):
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [n for t in targets for n in target_names(t)]
            literal = stmt.value.value if isinstance(stmt.value, ast.Constant) else None
            for name in names:
                text = literal if isinstance(literal, str) and len(names) == 1 else None
                out[name] = None if name in out else text
    return {k: v for k, v in out.items() if v is not None and is_topic(v)
            and not k.startswith("__")}


def declared_topics(tree: ast.Module, used: set[str]) -> set[str]:
    """Topic-shaped strings in module-level constants and displays (dict keys and
    values, list/tuple/set items) and in module-level classes' constants, except
    constants this file itself gives as a topic and dunder names (``__all__`` lists
    names, not topics)."""
    out: set[str] = set()
    for stmt in top_statements(tree.body):
        if isinstance(stmt, ast.ClassDef):
            out.update(v for k, v in class_constants(stmt).items()
                       if f"{stmt.name}.{k}" not in used)
            continue
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any(n in used or n.startswith("__") for n in names):
            continue
        value = stmt.value
        items = [value]
        if isinstance(value, ast.Dict):
            items = [*(k for k in value.keys if k is not None), *value.values]
        elif isinstance(value, (ast.List, ast.Tuple, ast.Set)):
            items = value.elts
        out.update(i.value for i in items if isinstance(i, ast.Constant)
                   and isinstance(i.value, str) and is_topic(i.value))
    return out
