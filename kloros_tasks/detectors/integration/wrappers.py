"""Wrappers around publishing and subscribing, and Redis lists used as queues.

A *wrapper* is a function or method that passes one of its parameters through, as
the topic, to a publish or subscribe call (``def send_event(self, topic, data):
self.sock.send_multipart([topic.encode(), ...])``; a class whose ``__init__`` does
so is a wrapper under the class's name, ``SomeSub(topic="x")``).  Its file
contributes ``wr:<name>`` with the parameter's position and name; a call of that
name with a literal at that place is then a publication (or subscription), found
by following one level through the index.  Calls that may be such call sites are
recorded with their literal arguments when the callee's name says it talks to a
bus (``publish``, ``send``, ``notify``, ``subscribe``...), when a ``topic=``,
``channel=`` or ``signal=`` keyword is given, or when it is a wrapper of the same file.

A Redis list is a queue: ``r.lpush("jobs", x)`` / ``rpush`` fill the key
``"jobs"``; ``lpop``, ``rpop``, ``blpop``, ``brpop``, ``lrange``, ``lmove``... read it.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from kloros_tasks.detectors._treecache import walk
from kloros_tasks.detectors.integration.scope import dotted_name
from kloros_tasks.detectors.integration.topics import (
    EMITTER_METHODS,
    PUBLISH_METHODS,
    SUBSCRIBE_METHODS,
    SUBSCRIBER_CLASSES,
    TOPIC_KEYWORDS,
    ZMQ_SENDS,
)
from kloros_tasks.detectors.integration.topictext import is_topic, topic_text, unwrap

BUS_NAME = re.compile(r"(?i)publish|emit|send|notify|broadcast|fire|signal|announce|"
                      r"dispatch|subscri|listen|consum|pub$|sub$|event|topic|channel")
SUB_NAME = re.compile(r"(?i)subscri|listen|consum|sub$")
DIRECT = PUBLISH_METHODS | SUBSCRIBE_METHODS | ZMQ_SENDS | EMITTER_METHODS
REDIS_PUSH = frozenset({"lpush", "rpush", "lpushx", "rpushx"})
_THROUGH_METHODS = frozenset({"send_multipart", "setsockopt", "setsockopt_string"})
REDIS_READ = frozenset({"lpop", "rpop", "blpop", "brpop", "lrange", "lindex", "llen", "lmove",
                        "blmove", "rpoplpush", "brpoplpush", "lmpop", "blmpop", "lrem",
                        "ltrim", "lpos"})


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    static = any((dotted_name(d) or "") == "staticmethod" for d in fn.decorator_list)
    return args[1:] if method and not static else args


def _passed(expr: ast.expr | None, params: list[str]) -> str | None:
    expr = unwrap(expr) if expr is not None else None
    if isinstance(expr, ast.Name) and expr.id in params:
        return expr.id
    return None


def _through(call: ast.Call, params: list[str]) -> tuple[str, str] | None:
    """("pub"|"sub", parameter) when ``call`` publishes or subscribes to a parameter."""
    func = call.func
    method = func.attr if isinstance(func, ast.Attribute) else None
    callee = (dotted_name(func) or "").rpartition(".")[2]
    keyword = next((k.value for k in call.keywords if k.arg in TOPIC_KEYWORDS), None)
    first = keyword if keyword is not None else (call.args[0] if call.args else None)
    if method in PUBLISH_METHODS:
        found = _passed(first, params)
        return ("pub", found) if found else None
    if method in SUBSCRIBE_METHODS or callee in SUBSCRIBER_CLASSES:
        found = _passed(first, params)
        return ("sub", found) if found else None
    if method == "send_multipart" and call.args:
        # A topic frame and a payload: ``[msg]`` alone passes a message through.
        frames = unwrap(call.args[0])
        if isinstance(frames, (ast.List, ast.Tuple)) and len(frames.elts) >= 2:
            found = _passed(frames.elts[0], params)
            return ("pub", found) if found else None
    if method in ("setsockopt", "setsockopt_string") and len(call.args) >= 2 and \
            (dotted_name(call.args[0]) or "").endswith(".SUBSCRIBE"):
        found = _passed(call.args[1], params)
        return ("sub", found) if found else None
    return None


def _may_pass_through(call: ast.Call) -> bool:
    """Whether ``_through`` could find a parameter in ``call`` for some parameters."""
    func = call.func
    method = func.attr if isinstance(func, ast.Attribute) else None
    if method is not None and (method in PUBLISH_METHODS or method in SUBSCRIBE_METHODS
                               or method in _THROUGH_METHODS):
        return True
    return (dotted_name(func) or "").rpartition(".")[2] in SUBSCRIBER_CLASSES


def wrapper_definitions(tree: ast.Module, groups: dict[type, list[ast.AST]] | None = None
                        ) -> dict[str, list[dict[str, Any]]]:
    """name -> [{"d": "pub"|"sub", "i": position, "p": parameter, "n": parameters
    without a default}] for the module's functions and the methods of its classes
    (``__init__`` under the class name).  With ``groups`` (the file's nodes by class),
    a file without any call of a publishing or subscribing shape is not walked."""
    out: dict[str, list[dict[str, Any]]] = {}
    if groups is not None and not any(map(_may_pass_through, groups.get(ast.Call, ()))):
        return out
    for stmt in tree.body:
        functions: list[tuple[str, Any, bool]] = []
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((stmt.name, stmt, False))
        elif isinstance(stmt, ast.ClassDef):
            for item in stmt.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = stmt.name if item.name == "__init__" else item.name
                    functions.append((name, item, True))
        for name, fn, method in functions:
            params = _params(fn, method)
            required = len(params) - len(fn.args.defaults)
            for node in walk(fn):
                found = _through(node, params) if isinstance(node, ast.Call) else None
                if found is not None:
                    entry = {"d": found[0], "i": params.index(found[1]), "p": found[1],
                             "n": required}
                    if entry not in out.setdefault(name, []):
                        out[name].append(entry)
    return {k: sorted(v, key=lambda e: (e["d"], e["i"])) for k, v in out.items()}


def wrapper_calls(groups: dict[type, list[ast.AST]], consts: dict[str, str | None],
                  own: set[str]) -> dict[str, list[list[Any]]]:
    """name -> [[position or -1, keyword or "", literal topic, line, arguments given]]
    of the calls that
    may go through a wrapper: a literal topic-shaped argument, a callee named like a
    bus operation or a wrapper of this file, and not one of the direct forms."""
    out: dict[str, list[list[Any]]] = {}
    for node in groups.get(ast.Call, ()):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else \
            func.id if isinstance(func, ast.Name) else ""
        if not name or name in DIRECT:
            continue
        keyworded = any(k.arg in TOPIC_KEYWORDS for k in node.keywords)
        if name not in own and not keyworded and not BUS_NAME.search(name):
            continue
        args = [(i, "", a) for i, a in enumerate(node.args)]
        args += [(-1, k.arg, k.value) for k in node.keywords if k.arg]
        for position, keyword, arg in args:
            literal, _ = topic_text(arg, consts)
            if literal is not None and is_topic(literal):
                out.setdefault(name, []).append(
                    [position, keyword, literal, node.lineno, len(args)])
    return out


def is_sub_name(name: str) -> bool:
    """Whether a possible wrapper call covers as a subscription until the index says
    what the callee does: its name says so, or says nothing of a bus (a class given a
    ``topic=`` is more often a subscriber; covering a publication wrongly only hides
    a question, covering it as a publication could hide a real orphan)."""
    return bool(SUB_NAME.search(name)) or not BUS_NAME.search(name)


def redis_lists(groups: dict[type, list[ast.AST]], consts: dict[str, str | None]
                ) -> tuple[dict[str, list[int]], set[str], set[str]]:
    """(literal keys pushed -> lines, literal keys read, literal heads of keys read)."""
    pushed: dict[str, list[int]] = {}
    read: set[str] = set()
    heads: set[str] = set()
    for node in groups.get(ast.Call, ()):
        if not isinstance(node.func, ast.Attribute):
            continue
        method = node.func.attr
        if method in REDIS_PUSH and len(node.args) >= 2:
            literal, _ = topic_text(node.args[0], consts)
            if literal is not None and is_topic(literal):
                pushed.setdefault(literal, []).append(node.lineno)
        elif method in REDIS_READ and node.args:
            first = node.args[0]
            keys = first.elts if isinstance(first, (ast.List, ast.Tuple)) else [first]
            if method in ("blpop", "brpop"):
                keys = [*keys, *node.args[1:]]
            for key in keys:
                literal, head = topic_text(key, consts)
                if literal is not None:
                    read.add(literal)
                elif head:
                    heads.add(head)
    return pushed, read, heads
