"""Build the detector objects a worker or the one-shot scan uses, from settings.

Detectors are pure; what they need to know about the world (the target Python
environment for CapabilityDiscovery) is probed here, at the edge, and passed in.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

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


def scan_detector(name: str, settings: Settings):
    """A detector for the in-process scan (probes the environment directly)."""
    environment = None
    if name == names.CAPABILITY:
        from kloros_tasks.detectors.capability.environment import probe_environment  # noqa: PLC0415

        environment = probe_environment(settings.target_python)
    return build(name, settings, environment)


@lru_cache(maxsize=8)
def _cached(name: str, settings: Settings, environment_json: str | None):
    import json  # noqa: PLC0415

    environment = None
    if environment_json is not None:
        from kloros_tasks.detectors.capability.target import Environment  # noqa: PLC0415

        environment = Environment.from_json(json.loads(environment_json))
    return build(name, settings, environment)


def worker_detector(name: str, settings: Settings, client) -> tuple[object, bool]:
    """(detector, environment_changed) for a worker: the capability environment comes
    from the per-host cache in Redis and is re-probed only when it changed."""
    if name != names.CAPABILITY:
        return _cached(name, settings, None), False
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from kloros_tasks.detectors.capability.environment import cached_environment  # noqa: PLC0415

    python = settings.target_python or sys.executable
    digest = hashlib.sha256(python.encode()).hexdigest()[:16]
    environment, changed = cached_environment(
        client, names.environment(settings.host, digest), python=python)
    return _cached(name, settings, json.dumps(environment.to_json(), sort_keys=True)), changed
