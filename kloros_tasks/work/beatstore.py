"""A Celery Beat scheduler that keeps its state in a JSON file, not a shelve (pickle).

The file lives under the state dir; it is written atomically (temp file + rename);
a corrupt one is renamed ``*.corrupted``, logged, and the schedule starts afresh.
An entry never run before is due at once, so the first exploration scan does not
wait a whole interval.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

from celery.beat import Scheduler
from kombu.utils.imports import symbol_by_name

log = logging.getLogger(__name__)
DEFAULT_FILENAME = "celerybeat-schedule.json"


def read_state(path: Path) -> dict:
    """Saved entries {name: {last_run_at, total_run_count}}; a corrupt file is set aside."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("no 'entries' object")
        return data["entries"]
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:
        corrupt = path.with_name(path.name + ".corrupted")
        os.replace(path, corrupt)
        log.error("beat schedule %s is corrupt (%s); moved to %s, starting afresh",
                  path, exc, corrupt)
        return {}


def write_state(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "entries": entries}, indent=1))
    os.replace(tmp, path)


class JSONScheduler(Scheduler):
    """``celery beat -S kloros_tasks.work.beatstore:JSONScheduler`` (set in celery_app)."""

    def __init__(self, *args, **kwargs):
        filename = kwargs.get("schedule_filename") or DEFAULT_FILENAME
        self.path = Path(filename if str(filename).endswith(".json") else f"{filename}.json")
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.data)
        saved = read_state(self.path)
        now = self.app.now()
        for name, entry in self.data.items():
            record = saved.get(name)
            if record:
                try:
                    entry.last_run_at = datetime.fromisoformat(record["last_run_at"])
                    entry.total_run_count = int(record["total_run_count"])
                    continue
                except (KeyError, TypeError, ValueError):
                    log.warning("beat entry %s has an unreadable record; running it now", name)
            run_every = getattr(entry.schedule, "run_every", None)
            if isinstance(run_every, timedelta):
                entry.last_run_at = now - run_every
        self.sync()

    def sync(self) -> None:
        entries = {
            name: {"last_run_at": e.last_run_at.isoformat(), "total_run_count": e.total_run_count}
            for name, e in self.data.items() if e.last_run_at is not None
        }
        write_state(self.path, entries)

    @property
    def info(self) -> str:
        return f"    . state -> {self.path}"


def run_beat(app, stop: threading.Event) -> int:
    """Celery Beat in the calling thread until ``stop`` is set, as ``celery beat`` (or a
    worker's ``-B``) runs it: the app's scheduler (JSONScheduler, on the app's
    ``beat_schedule_filename``) ticks, sends what is due, and waits for the next entry,
    or for ``stop``; its state is written at the end.  ``up``'s default layout runs it
    as a thread of ``up`` (cli/threadchild.py)."""
    scheduler_cls = symbol_by_name(app.conf.beat_scheduler)
    scheduler = scheduler_cls(app=app, schedule_filename=app.conf.beat_schedule_filename,
                              max_interval=app.conf.beat_max_loop_interval)
    log.info("beat: ticking every entry of %s", ", ".join(sorted(scheduler.schedule)))
    try:
        while not stop.is_set():
            interval = scheduler.tick()
            if interval and interval > 0.0:
                stop.wait(interval)
                if scheduler.should_sync():
                    scheduler._do_sync()  # noqa: SLF001 - what celery.beat.Service does
    finally:
        scheduler.close()  # writes the state
    return 0
