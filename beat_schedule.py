"""The periodic schedule, nothing else: the exploration scan every interval.

``expires`` is a little under the interval so that a send that could not run in its
own window (workers down, beat restarted) is dropped instead of piling up.
"""

from __future__ import annotations

from datetime import timedelta

from kloros_tasks import names

EXPIRY_MARGIN = 0.9  # fraction of the interval a scan request stays valid


def schedule(interval_seconds: int) -> dict:
    """The ``beat_schedule`` mapping for an exploration interval in seconds."""
    return {
        "exploration-scan": {
            "task": names.TASK_EXPLORATION_SCAN,
            "schedule": timedelta(seconds=interval_seconds),
            "options": {
                "queue": names.EXPLORATION,
                "expires": max(1.0, interval_seconds * EXPIRY_MARGIN),
            },
        },
    }
