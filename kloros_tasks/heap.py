"""Handing freed memory back to the system, for long-running processes.

CPython frees objects into glibc's allocator, which keeps freed pages between live
blocks resident: after a burst of work (a snapshot restored, a cold scan analysed) a
process that goes on running keeps most of its peak.  ``give_back_memory`` collects
garbage and calls ``malloc_trim(0)``, which returns every free page to the system.
"""

from __future__ import annotations

import ctypes
import gc


def give_back_memory() -> None:
    """Collect garbage, then hand the allocator's free pages back to the system (glibc's
    ``malloc_trim``); where there is no malloc_trim (not glibc), only the collection."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
