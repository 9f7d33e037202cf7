"""The commands a user reaches for next: help, env, questions in a pipe, status on any Redis."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from procs import service_env

from kloros_tasks import names
from kloros_tasks.cli import main as cli_main
from kloros_tasks.connections import (
    RECORDED_URL_FILE,
    forget_redis_url,
    record_redis_url,
    recorded_redis_url,
)
from kloros_tasks.questions import Question
from kloros_tasks.settings import DEFAULT_REDIS_URL, from_env
from kloros_tasks.state.publish import Publisher

CLI = [sys.executable, "-m", "kloros_tasks.cli"]
SETTINGS_PY = Path(cli_main.__file__).parent.parent / "settings.py"


def run(args, env, **kwargs):
    return subprocess.run(CLI + list(args), env=env, capture_output=True, text=True,
                          timeout=60, **kwargs)


def q(n: int) -> Question:
    return Question(detector=names.KNOWLEDGE, rule="unindexed_doc", subject=f"d{n}",
                    owner=f"docs/{n}.md", hypothesis=f"UNINDEXED_DOC: docs/{n}.md",
                    question=f"Should docs/{n}.md be linked from an index?")


def no_redis_env(state_dir: Path) -> dict[str, str]:
    env = service_env("", state_dir)
    del env["KLOROS_REDIS_URL"]
    return env


# --- help -----------------------------------------------------------------------------
def test_the_top_level_help_describes_the_tool_in_plain_text():
    text = cli_main.build_parser().format_help()
    assert "``" not in text and ":func:" not in text
    assert "curiosity questions" in text and "kloros-tasks up ." in text


def test_the_help_epilog_lists_every_environment_variable_settings_reads():
    read = set(re.findall(r'"(KLOROS_[A-Z_]+)"', SETTINGS_PY.read_text()))
    read = {v for v in read if not v.startswith("KLOROS_BUDGET_")} | {"KLOROS_BUDGET_<DETECTOR>"}
    epilog = cli_main.build_parser().epilog
    assert {v for v in read if v not in epilog} == set()


def test_every_argument_of_every_command_has_help():
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name} {action.dest}")
        assert command.description, name
    assert missing == []


# --- the recorded Redis and `env` -------------------------------------------------------
def test_a_recorded_redis_that_answers_is_used_when_kloros_redis_url_is_unset(
        tmp_path, redis_url):
    record_redis_url(tmp_path, redis_url)
    assert (tmp_path / RECORDED_URL_FILE).stat().st_mode & 0o777 == 0o600
    settings = from_env({"KLOROS_STATE_DIR": str(tmp_path)})
    assert (settings.redis_url, settings.redis_url_recorded) == (redis_url, True)
    # KLOROS_REDIS_URL always wins over the record.
    given = from_env({"KLOROS_STATE_DIR": str(tmp_path), "KLOROS_REDIS_URL": "redis://h:1/0"})
    assert (given.redis_url, given.redis_url_recorded) == ("redis://h:1/0", False)


def test_a_recorded_redis_that_is_gone_is_ignored(tmp_path):
    record_redis_url(tmp_path, f"redis+socket://{tmp_path}/gone.sock")
    assert recorded_redis_url(tmp_path) is None
    assert from_env({"KLOROS_STATE_DIR": str(tmp_path)}).redis_url == DEFAULT_REDIS_URL
    forget_redis_url(tmp_path, "redis://someone-else/0")  # a record of another run stays
    assert (tmp_path / RECORDED_URL_FILE).exists()
    forget_redis_url(tmp_path, f"redis+socket://{tmp_path}/gone.sock")
    assert not (tmp_path / RECORDED_URL_FILE).exists()


def test_env_prints_the_export_line_and_companion_commands_find_the_recorded_redis(
        tmp_path, redis_url, r):
    Publisher(r).sync(names.KNOWLEDGE, "repo", "docs/0.md", [q(0)])
    record_redis_url(tmp_path, redis_url)
    env = no_redis_env(tmp_path)
    done = run(["env"], env)
    assert done.returncode == 0 and done.stdout == f"export KLOROS_REDIS_URL={redis_url}\n"
    assert q(0).id in run(["questions", "--open"], env).stdout
    # Celery's own commands read the URL through the app's configuration.
    broker = subprocess.run(
        [sys.executable, "-c", "from kloros_tasks.celery_app import app; "
                               "print(app.conf.broker_url)"],
        env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    assert broker == redis_url


def test_env_without_a_running_up_says_so_and_prints_nothing_to_eval(tmp_path):
    done = run(["env"], no_redis_env(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no running" in done.stderr


# --- questions --------------------------------------------------------------------------
def test_questions_into_a_reader_that_closes_early_ends_without_a_traceback(
        tmp_path, redis_url, r):
    publisher = Publisher(r)
    for n in range(3000):  # far more than a pipe buffer holds
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [q(n)])
    env = service_env(redis_url, tmp_path)
    proc = subprocess.Popen(CLI + ["questions", "--count", "3000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # what `| head -1` does, then it exits
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == cli_main.EXIT_BROKEN_PIPE
    assert first.startswith(b"medium") and "Traceback" not in stderr and stderr == ""


def test_an_unknown_signal_is_a_one_line_usage_error(tmp_path, redis_url):
    done = run(["questions", "--signal", "bogus"], service_env(redis_url, tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "unknown signal 'bogus'" in done.stderr
    assert names.CHANNEL_RESOLVED in done.stderr


def test_pending_without_a_bridge_says_so_in_one_line(tmp_path, redis_url):
    done = run(["questions", "--pending", "--format", "jsonl"],
               service_env(redis_url, tmp_path))
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no ChemBus bridge is running" in done.stderr


# --- status -----------------------------------------------------------------------------
def test_status_on_a_redis_without_kloros_tasks_says_so_and_writes_nothing(
        tmp_path, redis_url, r):
    r.set("someone:else", "theirs")
    before = sorted(r.keys("*"))
    done = run(["status"], service_env(redis_url, tmp_path))
    assert done.returncode == 1
    assert done.stdout.startswith("status    absent\n")
    assert "nothing of kloros-tasks runs on" in done.stdout and "watcher heartbeat" not in \
        done.stdout
    assert sorted(r.keys("*")) == before and r.dbsize() == 1
    report = json.loads(run(["status", "--json"], service_env(redis_url, tmp_path)).stdout)
    assert report["status"] == "absent" and sorted(r.keys("*")) == before


def test_status_inspecting_workers_leaves_no_key_behind(tmp_path, redis_url, r):
    from kloros_tasks.cli.status import collect, inspecting_app

    # kloros-tasks state, but no worker: the broadcast gets no answer.
    Publisher(r).sync(names.KNOWLEDGE, "repo", "docs/0.md", [q(0)])
    before = sorted(r.keys("*"))
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_STATE_DIR": str(tmp_path)})
    report = collect(settings, r, inspecting_app(settings))
    assert report["workers"] == {}
    assert sorted(r.keys("*")) == before
    assert not r.exists("_kombu.binding_deadlines")


def test_run_status_output_goes_to_the_given_stream(tmp_path, redis_url):
    from kloros_tasks.cli.status import run_status

    out = io.StringIO()
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_STATE_DIR": str(tmp_path)})
    assert run_status(settings, out=out) == 1
    assert out.getvalue().startswith("status    absent")


@pytest.mark.parametrize("path", ["docs", "docs/nothing-here.md"])
def test_scan_of_a_missing_path_is_a_one_line_error(tmp_path, path):
    done = run(["scan", str(tmp_path / path)], service_env("", tmp_path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "does not exist" in done.stderr


@pytest.mark.integration
def test_status_answered_by_a_real_worker_leaves_the_key_names_as_they_were(
        tmp_path, redis_url, r, procs):
    from procs import start_worker

    procs.add(start_worker(redis_url, tmp_path, ",".join(names.QUEUES), tmp_path / "w.log"))

    def key_names() -> set[bytes]:
        # unacked_mutex: the worker's own lock, taken and dropped every few seconds.
        return {k for k in r.keys("*") if k != b"unacked_mutex"}

    before = key_names()
    deadlines = set(r.zrange("_kombu.binding_deadlines", 0, -1))
    done = run(["status", "--json"], service_env(redis_url, tmp_path))
    report = json.loads(done.stdout)
    assert all(report["queues"][q]["consumers"] for q in names.QUEUES), report
    assert key_names() == before
    assert set(r.zrange("_kombu.binding_deadlines", 0, -1)) == deadlines
    assert not [k for k in r.keys("*reply.celery.pidbox*")]
