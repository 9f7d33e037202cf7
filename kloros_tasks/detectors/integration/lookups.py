"""Memoised, read-only lookups over the integration detector's index: who holds a key,
whether any file does, a file's facts and its contribution to a key (resolve.py builds
names, lineages and imports on them).  Every lookup is an exact ``who("def", key)``
plus reading the contributing files' facts, memoised for the evaluations one
``Lookups`` serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kloros_tasks.detectors.base import FileFacts, IndexView
from kloros_tasks.detectors.integration.keys import REL_DEF, SYM, is_existence_key

CONTRIBUTIONS_READ = 64  # files' facts read in one round trip for their contributions
PREFETCH_HOLDERS = 8  # holders of a key above which its contributions are not prefetched


class Lookups:
    """Existence-only keys (a directory, an attribute name, a topic prefix) can be
    held by thousands of files while the rules only ask whether any does: they are
    looked up one by one when needed, or through the view's optional
    ``exists_many(relation, values) -> set of values held`` when it has one.
    """

    def __init__(self, view: IndexView) -> None:
        self.view = view
        self._facts: dict[str, FileFacts | None] = {}
        self._who: dict[str, list[str]] = {}
        self._exists: dict[str, bool] = {}
        # Each key's holders with their contribution: small, kept for every evaluation
        # this object serves, while the files' whole facts are dropped after each.
        self._contributions: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        # Whether the view can probe; its method is looked up at each call, so that
        # nothing here holds the view but ``view`` (a weak proxy when kept with it).
        self._probes = getattr(view, "exists_many", None) is not None

    def prefetch(self, keys: Iterable[str]) -> None:
        """Look several keys up in one round trip (two with existence keys)."""
        keys = list(keys)
        missing = [k for k in keys if not is_existence_key(k) and k not in self._who]
        if missing:
            for key, paths in self.view.who_many(REL_DEF, missing).items():
                self._who[key] = sorted(paths)
        flags = [k for k in keys if is_existence_key(k) and k not in self._exists]
        if flags and self._probes:
            held = self.view.exists_many(REL_DEF, flags)
            self._exists.update((k, k in held) for k in flags)

    def unknown(self, keys: Iterable[str]) -> list[str]:
        """The keys (not existence-only) whose holders were not looked up yet."""
        return [k for k in dict.fromkeys(keys) if not is_existence_key(k) and k not in self._who]

    def learn(self, holders: Mapping[str, Iterable[str]]) -> None:
        """Holders of keys looked up elsewhere (together with other lookups)."""
        for key, paths in holders.items():
            self._who[key] = sorted(paths)

    def prefetch_facts(self, paths: Iterable[str]) -> None:
        """Read several files' facts in one round trip, through the view's optional
        ``facts_many(paths) -> {path: facts or None}``."""
        missing = [p for p in dict.fromkeys(paths) if p not in self._facts]
        many = getattr(self.view, "facts_many", None)
        if missing and many is not None:
            self._facts.update(many(missing))

    def prefetch_contributions(self, keys: Iterable[str]) -> None:
        """The contributions of ``keys`` (not existence-only), their holders' facts read
        CONTRIBUTIONS_READ at a time in one round trip each (``prefetch_facts``) and
        dropped once their contributions are taken; a key of more than
        PREFETCH_HOLDERS holders is left to be read when it is asked for."""
        keys = [k for k in dict.fromkeys(keys) if not is_existence_key(k)
                and k not in self._contributions]
        self.prefetch(keys)
        wanted: dict[str, list[str]] = {}
        for key in keys:
            if len(self._who[key]) <= PREFETCH_HOLDERS:
                for path in self._who[key]:
                    wanted.setdefault(path, []).append(key)
        found: dict[tuple[str, str], dict[str, Any] | None] = {}
        paths = list(wanted)
        for start in range(0, len(paths), CONTRIBUTIONS_READ):
            part = paths[start:start + CONTRIBUTIONS_READ]
            held = {p: self._facts[p] for p in part if p in self._facts}
            self.prefetch_facts(part)
            for path in part:
                facts = self._facts.get(path)
                contents = facts.data.get("c", {}) if facts is not None else {}
                for key in wanted[path]:
                    found[(path, key)] = contents.get(key)
                if path not in held:
                    self._facts.pop(path, None)
        for key in keys:
            if len(self._who[key]) <= PREFETCH_HOLDERS:
                self._contributions[key] = [(p, found[(p, key)]) for p in self._who[key]
                                            if found[(p, key)] is not None]

    def forget_facts(self) -> None:
        """Drop the files' facts read so far (holders, existence and lineages stay):
        a resolver that serves many evaluations holds no more than one's facts."""
        self._facts.clear()

    def who(self, key: str) -> list[str]:
        if key not in self._who:
            self._who[key] = sorted(self.view.who(REL_DEF, key))
        return self._who[key]

    def exists(self, key: str) -> bool:
        if key in self._who:
            return bool(self._who[key])
        if key not in self._exists:
            if self._probes:
                self._exists[key] = key in self.view.exists_many(REL_DEF, [key])
            else:
                self._exists[key] = bool(self.view.who(REL_DEF, key))
        return self._exists[key]

    def facts(self, path: str) -> FileFacts | None:
        if path not in self._facts:
            self._facts[path] = self.view.facts(path)
        return self._facts[path]

    def content(self, path: str, key: str) -> dict[str, Any] | None:
        facts = self.facts(path)
        return None if facts is None else facts.data.get("c", {}).get(key)

    def contributions(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        """(holder, its content) of each holder of ``key`` that contributes to it."""
        if key not in self._contributions:
            out = []
            for path in self.who(key):
                content = self.content(path, key)
                if content is not None:
                    out.append((path, content))
            self._contributions[key] = out
        return self._contributions[key]

    def modules(self, name: str) -> list[dict[str, Any]]:
        """The module contributions of ``name`` (its file, or files)."""
        return [c for _, c in self.contributions(SYM + name) if c.get("k") == "mod"]
