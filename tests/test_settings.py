"""Settings come from the environment, validated at start with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kloros_tasks.settings import SettingsError, from_env


def test_defaults_follow_the_contract(tmp_path):
    # A state dir of its own: a running `kloros-tasks up` on ~/.kloros would be found.
    s = from_env({"KLOROS_STATE_DIR": str(tmp_path)})
    assert s.redis_url == "redis://127.0.0.1:6379/0" and not s.redis_url_given
    assert s.chem_xsub == "tcp://127.0.0.1:5556" and s.chem_xpub == "tcp://127.0.0.1:5557"
    assert s.worker_max_memory_kib == 150 * 1024
    assert s.exploration_interval == 300
    assert s.visibility_timeout > s.task_time_limit


@pytest.mark.parametrize("url", [
    "redis://user:p%40ss@host:6380/2", "rediss://h:6379/0?ssl_cert_reqs=required",
    "redis+socket:///run/redis.sock", "unix:///tmp/r.sock",
])
def test_every_documented_redis_url_form_is_accepted(url):
    assert from_env({"KLOROS_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(("env", "named"), [
    ({"KLOROS_REDIS_URL": "http://x"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_REDIS_URL": "redis://:6379"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_REDIS_URL": "redis://h:port/0"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_WORKER_MAX_MEMORY_MB": "lots"}, "KLOROS_WORKER_MAX_MEMORY_MB"),
    ({"KLOROS_WORKER_MAX_MEMORY_MB": "4"}, "KLOROS_WORKER_MAX_MEMORY_MB"),
    ({"KLOROS_EXPLORATION_INTERVAL": "-1"}, "KLOROS_EXPLORATION_INTERVAL"),
    ({"KLOROS_WORKER_CONCURRENCY": "two"}, "KLOROS_WORKER_CONCURRENCY"),
    ({"KLOROS_WORKER_CONCURRENCY": "0"}, "KLOROS_WORKER_CONCURRENCY"),
    ({"KLOROS_WORKER_CONCURRENCY": "1,2"}, "KLOROS_WORKER_CONCURRENCY"),
    ({"KLOROS_CHEM_XSUB": "localhost:5556"}, "KLOROS_CHEM_XSUB"),
    ({"KLR_UMN_XSUB": "tcp://nohostport"}, "KLR_UMN_XSUB"),
    ({"KLOROS_WATCH_ROOTS": "/no/such/dir"}, "KLOROS_WATCH_ROOTS"),
    ({"KLOROS_VISIBILITY_TIMEOUT": "30", "KLOROS_TASK_TIME_LIMIT": "60"},
     "KLOROS_VISIBILITY_TIMEOUT"),
])
def test_a_bad_value_names_its_variable_in_one_line(env, named):
    with pytest.raises(SettingsError) as info:
        from_env(env)
    assert named in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("raw", "pool"), [("", None), ("2", (2, 2)), ("2,1", (2, 1)),
                                           (" 3 , 1 ", (3, 1))])
def test_worker_concurrency_is_a_fixed_pool_or_an_autoscaled_range(raw, pool):
    assert from_env({"KLOROS_WORKER_CONCURRENCY": raw}).worker_concurrency == pool


def test_unset_worker_concurrency_leaves_each_layout_its_default():
    settings = from_env({})
    assert settings.worker_concurrency is None
    assert settings.pool_of(single_worker=True) == (2, 1)
    assert settings.pool_of() == (1, 1)
    given = from_env({"KLOROS_WORKER_CONCURRENCY": "3"})
    assert given.pool_of(single_worker=True) == given.pool_of() == (3, 3)


def test_chembus_fallback_variables_are_honoured_in_order():
    both = {"KLR_UMN_XSUB": "tcp://10.0.0.1:1", "KLR_CHEM_XSUB": "tcp://10.0.0.2:2"}
    assert from_env(both).chem_xsub == "tcp://10.0.0.1:1"
    assert from_env({"KLR_CHEM_XSUB": "tcp://10.0.0.2:2"}).chem_xsub == "tcp://10.0.0.2:2"
    assert from_env({**both, "KLOROS_CHEM_XSUB": "tcp://h:3"}).chem_xsub == "tcp://h:3"


def test_chembus_xpub_fallback_variables_are_honoured_in_order():
    both = {"KLR_UMN_XPUB": "tcp://10.0.0.1:1", "KLR_CHEM_XPUB": "tcp://10.0.0.2:2"}
    assert from_env({}).chem_xpub == "tcp://127.0.0.1:5557"
    assert from_env(both).chem_xpub == "tcp://10.0.0.1:1"
    assert from_env({"KLR_CHEM_XPUB": "tcp://10.0.0.2:2"}).chem_xpub == "tcp://10.0.0.2:2"
    assert from_env({**both, "KLOROS_CHEM_XPUB": "tcp://h:3"}).chem_xpub == "tcp://h:3"
    with pytest.raises(SettingsError, match="^KLR_UMN_XPUB="):
        from_env({"KLR_UMN_XPUB": "localhost:5557"})


def test_watch_roots_and_excludes_are_split_on_colons(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    s = from_env({"KLOROS_WATCH_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
                  "KLOROS_EXCLUDE": "*.gen.py:vendor"})
    assert [p.name for p in s.watch_roots] == ["a", "b"]
    assert s.exclude == ("*.gen.py", "vendor")


def test_an_invalid_variable_stops_the_cli_with_status_2(capsys, monkeypatch):
    from kloros_tasks.cli.main import main

    monkeypatch.setenv("KLOROS_REDIS_URL", "ftp://x")
    assert main(["questions"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KLOROS_REDIS_URL" in err[0]


def test_bridge_budgets_default_to_the_original_rates_and_can_be_changed():
    assert from_env({}).budget("exploration") == (2, 300)
    assert from_env({}).budget("knowledge") == (10, 3600)
    s = from_env({"KLOROS_BUDGET_KNOWLEDGE": "0", "KLOROS_BUDGET_INTEGRATION": "7/60"})
    assert s.budget("knowledge") == (0, 3600) and s.budget("integration") == (7, 60)
    with pytest.raises(SettingsError, match="KLOROS_BUDGET_CAPABILITY"):
        from_env({"KLOROS_BUDGET_CAPABILITY": "many"})


@pytest.mark.parametrize(("env", "named"), [
    ({"KLOROS_REDIS_URL": "redis://host:6379/notadb"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_REDIS_URL": "redis://host:6379/0?db=two"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_REDIS_URL": "redis://host:99999/0"}, "KLOROS_REDIS_URL"),
    ({"KLOROS_EXPLORATION_INTERVAL": "99999999999999999"}, "KLOROS_EXPLORATION_INTERVAL"),
    ({"KLOROS_FLOWER_PORT": "99999"}, "KLOROS_FLOWER_PORT"),
    ({"KLOROS_CHEM_XSUB": "tcp://127.0.0.1:99999"}, "KLOROS_CHEM_XSUB"),
    ({"KLOROS_CHEM_XPUB": "tcp://127.0.0.1:0"}, "KLOROS_CHEM_XPUB"),
    ({"KLOROS_TASK_TIME_LIMIT": "9" * 20}, "KLOROS_TASK_TIME_LIMIT"),
    ({"KLOROS_BLOB_TTL": "9" * 20}, "KLOROS_BLOB_TTL"),
    ({"KLOROS_BUDGET_KNOWLEDGE": "1/99999999999999"}, "KLOROS_BUDGET_KNOWLEDGE"),
])
def test_a_value_that_would_only_fail_later_is_refused_at_start(env, named):
    with pytest.raises(SettingsError) as info:
        from_env(env)
    assert named in str(info.value) and "\n" not in str(info.value)



def test_the_watcher_heartbeat_defaults_to_five_seconds_and_stays_well_under_its_ttl():
    assert from_env({}).watcher_heartbeat_ms == 5000
    assert from_env({"KLOROS_WATCHER_HEARTBEAT_MS": "250"}).watcher_heartbeat_ms == 250
    for raw in ("99", "10001", "soon"):
        with pytest.raises(SettingsError, match="KLOROS_WATCHER_HEARTBEAT_MS"):
            from_env({"KLOROS_WATCHER_HEARTBEAT_MS": raw})

def up_once(tmp_path, *options: str, **env: str) -> subprocess.CompletedProcess:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KLOROS_", "KLR_"))}
    clean.setdefault("KLOROS_STATE_DIR", str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "kloros_tasks.cli", "up", *options,
                           str(tree)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("env", "options", "named"), [
    ({"KLOROS_STATE_DIR": "/proc/nope"}, (), "KLOROS_STATE_DIR"),
    ({"KLOROS_EXPLORATION_INTERVAL": "99999999999999999"}, (), "KLOROS_EXPLORATION_INTERVAL"),
    ({"KLOROS_FLOWER_PORT": "99999"}, ("--flower",), "KLOROS_FLOWER_PORT"),
    ({"KLOROS_CHEM_XSUB": "tcp://127.0.0.1:99999"}, (), "KLOROS_CHEM_XSUB"),
    ({"KLOROS_REDIS_URL": "redis://127.0.0.1:6379/notadb"}, (), "KLOROS_REDIS_URL"),
    ({}, ("--redis", "redis://127.0.0.1:6379/notadb"), "--redis"),
])
def test_up_stops_with_one_line_before_anything_starts(tmp_path, env, options, named):
    done = up_once(tmp_path, *options, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
    assert not (tmp_path / "state" / "logs").exists()  # no child was started


def test_up_with_an_unreachable_redis_says_so_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    done = up_once(tmp_path, KLOROS_REDIS_URL=f"redis://kuser:S3cretPW@127.0.0.1:{port}/0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "KLOROS_REDIS_URL" in done.stderr
    assert "does not answer" in done.stderr and "S3cretPW" not in done.stderr
    assert not (tmp_path / "state" / "logs").exists()


def test_watch_with_a_state_dir_it_cannot_write_says_so_in_one_line(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KLOROS_", "KLR_"))}
    done = subprocess.run([sys.executable, "-m", "kloros_tasks.cli", "watch", str(tree)],
                          env={**clean, "KLOROS_STATE_DIR": "/proc/nope"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "KLOROS_STATE_DIR" in done.stderr
