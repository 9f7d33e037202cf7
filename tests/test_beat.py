"""The beat schedule and its JSON state file."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from procs import wait_for

import beat_schedule
from kloros_tasks import names
from kloros_tasks.celery_app import app_for, create_app
from kloros_tasks.settings import from_env
from kloros_tasks.work.beatstore import JSONScheduler, read_state, run_beat, write_state


def test_the_exploration_scan_runs_every_interval_on_its_queue_and_expires_before_the_next():
    (entry,) = beat_schedule.schedule(300).values()
    assert entry["task"] == names.TASK_EXPLORATION_SCAN
    assert entry["schedule"] == timedelta(seconds=300)
    assert entry["options"]["queue"] == names.EXPLORATION
    assert 0 < entry["options"]["expires"] < 300


def test_the_app_takes_the_interval_from_the_environment(tmp_path):
    app = create_app(from_env({"KLOROS_EXPLORATION_INTERVAL": "42",
                               "KLOROS_STATE_DIR": str(tmp_path)}))
    (entry,) = app.conf.beat_schedule.values()
    assert entry["schedule"] == timedelta(seconds=42)
    assert app.conf.beat_schedule_filename.startswith(str(tmp_path))


def test_a_corrupt_state_file_is_set_aside_and_the_schedule_starts_afresh(tmp_path):
    path = tmp_path / "celerybeat-schedule.json"
    path.write_text("{not json")
    assert read_state(path) == {}
    assert (tmp_path / "celerybeat-schedule.json.corrupted").read_text() == "{not json"
    assert not path.exists()


def test_state_is_written_as_json_and_read_back(tmp_path):
    path = tmp_path / "s.json"
    write_state(path, {"x": {"last_run_at": "2026-01-01T00:00:00+00:00", "total_run_count": 3}})
    assert read_state(path)["x"]["total_run_count"] == 3
    assert json.loads(path.read_text())["version"] == 1


def test_a_never_run_entry_is_due_at_once_and_a_recorded_one_is_not(tmp_path):
    app = create_app(from_env({"KLOROS_STATE_DIR": str(tmp_path)}))
    filename = str(tmp_path / "celerybeat-schedule.json")
    first = JSONScheduler(app=app, schedule_filename=filename)
    entry = first.schedule["exploration-scan"]
    assert entry.is_due().is_due
    entry.last_run_at = app.now()
    first.sync()
    second = JSONScheduler(app=app, schedule_filename=filename)
    assert not second.schedule["exploration-scan"].is_due().is_due


def test_beat_in_a_thread_sends_the_first_scan_and_stops_at_once_keeping_its_state(
        tmp_path, r, redis_url):
    # What up's default layout runs: Celery Beat as a thread, stopped by an event.
    app = app_for(from_env({"KLOROS_STATE_DIR": str(tmp_path), "KLOROS_REDIS_URL": redis_url}))
    stop = threading.Event()
    ended: list[int] = []
    thread = threading.Thread(target=lambda: ended.append(run_beat(app, stop)))
    thread.start()
    try:
        wait_for(lambda: r.llen(names.EXPLORATION), 10, 0.05, "the first exploration scan")
    finally:
        stop.set()
        thread.join(5)  # the next entry is an interval away: the stop does not wait for it
    assert not thread.is_alive() and ended == [0]
    (message,) = r.lrange(names.EXPLORATION, 0, -1)
    assert json.loads(message)["headers"]["task"] == names.TASK_EXPLORATION_SCAN
    state = read_state(tmp_path / "celerybeat-schedule.json")
    assert state["exploration-scan"]["total_run_count"] == 1
