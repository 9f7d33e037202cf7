"""Build the detector objects a worker or the one-shot scan uses, from settings.

Detectors are pure; what they need to know about the world (the target Python
environment for CapabilityDiscovery) is probed here, at the edge, and passed in.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from functools import lru_cache
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.settings import Settings


def build(name: str, settings: Settings, environment=None):
    """The file detector called ``name``; ``environment`` only for capability."""
    # Imports on demand: a knowledge worker never loads the integration rules.
    if name == names.KNOWLEDGE:
        from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector  # noqa: PLC0415

        return KnowledgeDetector(docstring_threshold=settings.docstring_threshold)
    if name == names.INTEGRATION:
        from kloros_tasks.detectors.integration.detector import IntegrationDetector  # noqa: PLC0415

        return IntegrationDetector()
    if name == names.CAPABILITY:
        from kloros_tasks.detectors.capability.detector import CapabilityDetector  # noqa: PLC0415

        return CapabilityDetector(environment, settings.tool_packages)
    raise KeyError(f"no file detector called {name!r}")


# What the tasks of each queue import on first use: a worker parent imports them before
# it forks its pool (``preload``), so that a pool process, the first or a replacement,
# starts with them, shared with the parent, instead of importing them at its first task.
TASK_MODULES = {
    names.KNOWLEDGE: ("kloros_tasks.detectors.knowledge.detector",),
    names.INTEGRATION: ("kloros_tasks.detectors.integration.detector",),
    names.CAPABILITY: ("kloros_tasks.detectors.capability.detector",
                       "kloros_tasks.detectors.capability.environment"),
    names.EXPLORATION: ("kloros_tasks.work.exploration_scan",),
}


def preload(queues) -> None:
    """Import the modules the tasks of ``queues`` use (other queues' are left out: a
    knowledge worker never loads the integration rules)."""
    for queue in queues:
        for module in TASK_MODULES.get(queue, ()):
            importlib.import_module(module)


# Virtual environments a tree keeps in its root, in the order they are preferred.
ROOT_VENVS = (".venv", "venv")


def root_venv_python(root: str | Path | None) -> str | None:
    """The interpreter of a virtual environment in ``root`` (``.venv/``, ``venv/``), if any."""
    if root is None:
        return None
    for folder in ROOT_VENVS:
        candidate = Path(root) / folder / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def target_python(settings: Settings, root: str | Path | None = None) -> str:
    """The interpreter CapabilityDiscovery judges a tree against: KLOROS_TARGET_PYTHON,
    else the tree's own virtual environment, else this process's interpreter."""
    return settings.target_python or root_venv_python(root) or sys.executable


def path_label(settings: Settings) -> str:
    """Whose PATH programs are judged against, as questions name it."""
    if settings.target_path:
        return f"KLOROS_TARGET_PATH as seen on host {settings.host}"
    return f"the PATH of host {settings.host}"


def scan_detector(name: str, settings: Settings, root: str | Path | None = None):
    """A detector for the in-process scan of ``root`` (probes the environment directly)."""
    environment = None
    if name == names.CAPABILITY:
        from kloros_tasks.detectors.capability.environment import probe_environment  # noqa: PLC0415

        environment = probe_environment(target_python(settings, root), path=settings.target_path,
                                        path_label=path_label(settings))
    return build(name, settings, environment)


# (environment cache key, interpreter, PATH label) -> (the cache's bytes, the sorted JSON
# that keys _cached, the Environment): a capability task whose cache is unchanged skips
# parsing and writing out again the environment (some 30 KB of JSON) for every file.
_seen_environments: dict[tuple[str, str, str], tuple[bytes, str, object]] = {}


@lru_cache(maxsize=8)
def _cached(name: str, settings: Settings, environment_json: str | None):
    import json  # noqa: PLC0415

    environment = None
    if environment_json is not None:
        from kloros_tasks.detectors.capability.target import Environment  # noqa: PLC0415

        environment = Environment.from_json(json.loads(environment_json))
    return build(name, settings, environment)


def _local_root(client, root: str | None) -> str | None:
    """The folder of watched root ``root`` when it lives on this host (the watcher
    registers {path, host} per root), else None."""
    import json  # noqa: PLC0415
    import socket  # noqa: PLC0415

    raw = client.hget(names.ROOTS, root) if root else None
    try:
        info = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return None
    path = info.get("path")
    return path if isinstance(path, str) else None


def worker_detector(name: str, settings: Settings, client,
                    root: str | None = None) -> tuple[object, bool]:
    """(detector, environment_changed) for a worker: the capability environment comes
    from the per-host cache in Redis and is re-probed only when it changed.  Without
    KLOROS_TARGET_PYTHON, a virtual environment in ``root``'s folder (when the root is
    on this host) is the target, else the worker's own interpreter."""
    if name != names.CAPABILITY:
        return _cached(name, settings, None), False
    import json  # noqa: PLC0415

    from kloros_tasks.detectors.capability.environment import (  # noqa: PLC0415
        cached_environment,
        is_fresh,
    )

    python = target_python(settings, None if settings.target_python else _local_root(client, root))
    # The key names the interpreter (and the PATH judged, when one is set).
    which = f"{python}\0{settings.target_path}" if settings.target_path else python
    digest = hashlib.sha256(which.encode()).hexdigest()[:16]
    key, label = names.environment(settings.host, digest), path_label(settings)
    seen = _seen_environments.get((key, python, label))
    if seen is not None:
        raw, environment_json, environment = seen
        # The cache still holds the very bytes this process read last: only whether
        # the target changed since is left to ask (what cached_environment asks too).
        if client.get(key) == raw and is_fresh(environment, settings.target_path):
            return _cached(name, settings, environment_json), False
    environment, changed = cached_environment(client, key, python=python,
                                              path=settings.target_path, path_label=label)
    environment_json = json.dumps(environment.to_json(), sort_keys=True)
    # What cached_environment reads and writes: the same bytes when no one re-probed.
    raw = json.dumps(environment.to_json(), separators=(",", ":")).encode()
    _seen_environments[(key, python, label)] = (raw, environment_json, environment)
    return _cached(name, settings, environment_json), changed
