"""Which files' questions may change when one file's facts changed.

An evaluation reads the keys its own file declares (``read``) and, from there,
whatever the contributions it finds point to (``ptr``), plus two implicit hops:
a name a module does not bind is looked up in the modules it star-imports, and a
subclass reference through a star-importing module counts for the original.
``affected`` runs that graph backwards: from the keys whose contributions changed
to every key whose contributions lead to them, then to the files that read any of
those.  Each step is an exact lookup, so the cost follows the dependencies of the
change, not the size of the tree.
"""

from __future__ import annotations

from kloros_tasks.detectors.base import IndexView, Touched, held_by_others, who_each
from kloros_tasks.detectors.integration.keys import (
    REL_DEF,
    REL_PTR,
    REL_READ,
    REL_SIG,
    STAR,
    SUB,
    SYM,
    is_existence_key,
    last,
    parent,
    sig_key,
)
from kloros_tasks.detectors.integration.resolve import Resolver

MAX_CHANGED_KEYS = 1_000_000  # a guard against pathological alias loops, not a budget


def changed_keys(path: str, touched: Touched, view: IndexView) -> set[str]:
    """Keys whose contributions changed.  An existence-only key changes only
    when its first contributor arrives or its last one leaves."""
    changed: set[str] = set()
    existence = set()
    for relation, value in touched:
        if relation == REL_SIG:
            changed.add(sig_key(value))
        elif relation == REL_DEF and is_existence_key(value):
            existence.add(value)
    # Counted, not listed: a directory or an attribute name can have thousands of
    # holders, and fetching them all for every change made a cold scan quadratic.
    return changed | (existence - held_by_others(view, REL_DEF, existence, path))


def affected(path: str, touched: Touched, view: IndexView) -> set[str]:
    """Files other than ``path`` whose questions may differ after ``touched``: the
    files that read any key reachable from the changed ones."""
    out = _readers_of_closure(changed_keys(path, touched, view), Resolver(view))
    out.discard(path)
    return out


def _readers_of_closure(start: set[str], resolver: Resolver) -> set[str]:
    """The readers of every key reachable from ``start``, found one breadth of the
    graph at a time: a breadth's lookups (its readers among them) are made together, a
    few round trips per breadth instead of a few per key."""
    done: set[str] = set()
    readers: set[str] = set()
    frontier = set(start)
    while frontier and len(done) < MAX_CHANGED_KEYS:
        done |= frontier
        pointers, read_by = _prefetch(sorted(frontier), resolver)
        readers |= read_by
        frontier = {k for key in sorted(frontier)
                    for k in _dependents(key, resolver, pointers[key]) if k not in done}
    return readers


def _prefetch(keys: list[str], resolver: Resolver) -> tuple[dict[str, frozenset[str]], set[str]]:
    """Look up, together, what ``_dependents`` reads for ``keys``; returns the files
    pointing at each key, and the files reading any of them."""
    wanted: list[str] = []
    for key in keys:
        name = key.partition(":")[2]
        if key.startswith(SYM):
            wanted += [STAR + parent(name)] if "." in name else []
            wanted.append(STAR + name)
        elif key.startswith(SUB) and "." in name:
            wanted.append(SYM + parent(name))
        elif key.startswith(STAR):
            wanted.append(SYM + name)
    unknown = resolver.unknown(wanted)
    found = who_each(resolver.view,  # one round trip
                     {REL_PTR: keys, REL_READ: keys, REL_DEF: unknown})
    pointers = {key: found[(REL_PTR, key)] for key in keys}
    resolver.learn({key: found[(REL_DEF, key)] for key in unknown})
    resolver.prefetch_facts([p for paths in pointers.values() for p in sorted(paths)]
                            + [p for key in wanted for p in resolver.who(key)])
    return pointers, set().union(*(found[(REL_READ, key)] for key in keys))


def _dependents(key: str, resolver: Resolver, pointers: frozenset[str]) -> list[str]:
    """Keys whose evaluation-visible contributions depend on ``key`` (``pointers``:
    the files whose contributions point at it)."""
    out: list[str] = []
    for path in sorted(pointers):
        facts = resolver.facts(path)
        if facts is not None:
            out += facts.data.get("pm", {}).get(key, [])
    name = key.partition(":")[2]
    if key.startswith(SYM):
        # ``from S import *`` in M: M.N stands for S.N, and M's surface includes S's.
        if "." in name:
            for _, content in resolver.contributions(STAR + parent(name)):
                out += [f"{SYM}{m}.{last(name)}" for m in content["m"]]
        for _, content in resolver.contributions(STAR + name):
            out += [SYM + m for m in content["m"]]
    elif key.startswith(SUB) and "." in name:
        # A subclass of M.N, M star-importing S, is found from S.N.
        for mod in resolver.modules(parent(name)):
            out += [f"{SUB}{s}.{last(name)}" for s in mod["stars"]]
    elif key.startswith(STAR):
        # Star importers of M are reached from modules M star-imports.
        for mod in resolver.modules(name):
            out += [STAR + s for s in mod["stars"]]
    return out

