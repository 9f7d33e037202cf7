"""Settings come from the environment, validated at start with one clear line."""

from __future__ import annotations

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
