"""The target environment a capability question is judged against, as a frozen value.

A probe (``environment``) fills it from the target interpreter; the rules only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kloros_tasks.detectors.capability import deps


@dataclass(frozen=True)
class Environment:
    """What a probe found in the target environment, as plain JSON-able data.

    ``distributions`` maps an importable top-level name to the (PEP 503 normalised)
    distributions that provide it; ``installed`` holds every installed distribution;
    ``executables`` every executable basename on the target PATH; ``env_vars`` the
    names (never the values) set in the service environment.  ``unimported`` holds the
    installed distributions used without being imported (plugins declared through entry
    points, command-line tools, data such as tzdata).  ``path_label`` says whose PATH
    ``executables`` came from ("the PATH of host web1").  ``fingerprint`` changes when
    the interpreter, its site directories or PATH change.
    """

    modules: frozenset[str] = frozenset()
    stdlib: frozenset[str] = frozenset()
    distributions: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    installed: frozenset[str] = frozenset()
    executables: frozenset[str] = frozenset()
    env_vars: frozenset[str] = frozenset()
    unimported: frozenset[str] = frozenset()
    path_label: str = ""
    python: str = ""
    site_dirs: tuple[str, ...] = ()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        # Normalise once, so callers may pass raw metadata names and plain iterables.
        dists = {k: frozenset(deps.normalize(d) for d in v) for k, v in self.distributions.items()}
        object.__setattr__(self, "distributions", dists)
        for name in ("modules", "stdlib", "executables", "env_vars"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        for name in ("installed", "unimported"):
            normal = frozenset(deps.normalize(d) for d in getattr(self, name))
            object.__setattr__(self, name, normal)
        object.__setattr__(self, "site_dirs", tuple(self.site_dirs))

    def importable(self, top: str) -> bool:
        """True when the target interpreter can import top-level name ``top``."""
        return top in self.stdlib or top in self.modules or top in self.distributions

    def dists_of(self, top: str) -> frozenset[str]:
        """Installed distributions that provide top-level import name ``top``."""
        return self.distributions.get(top, frozenset())

    @cached_property
    def _tops(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for top, dists in self.distributions.items():
            for d in dists:
                out.setdefault(d, set()).add(top)
        return {d: frozenset(t) for d, t in out.items()}

    def tops_of(self, dist: str) -> frozenset[str]:
        """Import names distribution ``dist`` provides; for one that is not installed,
        the conventional guess (``foo-bar`` -> ``foo_bar``)."""
        dist = deps.normalize(dist)
        if dist in self._tops or dist in self.installed:
            return self._tops.get(dist, frozenset())
        return frozenset({dist.replace("-", "_")})

    def to_json(self) -> dict[str, Any]:
        """A JSON object that ``from_json`` turns back into an equal Environment."""
        return {
            "modules": sorted(self.modules),
            "stdlib": sorted(self.stdlib),
            "distributions": {k: sorted(v) for k, v in sorted(self.distributions.items())},
            "installed": sorted(self.installed),
            "executables": sorted(self.executables),
            "env_vars": sorted(self.env_vars),
            "unimported": sorted(self.unimported),
            "path_label": self.path_label,
            "python": self.python,
            "site_dirs": list(self.site_dirs),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Environment:
        """Rebuild an Environment from ``to_json`` output; raises ValueError if malformed."""
        try:
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not an Environment: {exc}") from exc
