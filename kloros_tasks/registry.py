"""Build the detector objects a worker or the one-shot scan uses, from settings."""

from __future__ import annotations

from functools import lru_cache

from . import names
from .settings import Settings


@lru_cache(maxsize=8)
def file_detector(name: str, settings: Settings):
    """The configured file detector called ``name`` (one instance per process)."""
    if name == names.KNOWLEDGE:
        from .detectors.knowledge import KnowledgeDetector  # noqa: PLC0415 - load on demand

        return KnowledgeDetector(docstring_threshold=settings.docstring_threshold)
    raise KeyError(f"no file detector called {name!r}")


def live_file_detectors() -> tuple[str, ...]:
    return tuple(names.FILE_DETECTOR_SUFFIXES)
