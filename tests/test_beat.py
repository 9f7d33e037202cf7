"""The beat schedule and its JSON state file."""

from __future__ import annotations

import json
from datetime import timedelta

import beat_schedule
from kloros_tasks import names
from kloros_tasks.celery_app import create_app
from kloros_tasks.settings import from_env
from kloros_tasks.work.beatstore import JSONScheduler, read_state, write_state


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
