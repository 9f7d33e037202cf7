"""The exploration scan against real Redis: lock, state, rate limit, undecided rules,
and once through a real worker."""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pytest
from procs import start_worker, wait_for

from kloros_tasks import names
from kloros_tasks.celery_app import create_app
from kloros_tasks.detectors.exploration import probes
from kloros_tasks.settings import from_env
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work.exploration_scan import run_scan

DATA = Path(__file__).parent / "data" / "exploration"


def fake_smi(tmp_path: Path, output_file: str | None, *, hang: bool = False) -> str:
    script = tmp_path / "nvidia-smi"
    body = "sleep 30\n" if hang else (f"cat {DATA / output_file}\n" if output_file else "exit 9\n")
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def collector(tmp_path, *, cpuinfo="cpuinfo_avx_no_avx2.txt", meminfo="meminfo_critical.txt",
              smi="nvidia_smi_1.txt", hang=False):
    sources = probes.Sources(cpuinfo=str(DATA / cpuinfo), meminfo=str(DATA / meminfo),
                             mounts=str(tmp_path / "no-mounts"), loadavg=str(DATA / "loadavg.txt"),
                             nvidia_smi=fake_smi(tmp_path, smi, hang=hang), library_path=())
    return functools.partial(probes.collect, sources=sources)


def settings(redis_url, **env):
    return from_env({"KLOROS_REDIS_URL": redis_url, **env})


def ledger_rules(r) -> set[str]:
    return {k.decode().split(".")[1] for k in r.hkeys(names.LEDGER)}


def unlock(r, host):
    r.delete(names.exploration_lock(host))


def test_findings_are_published_once_and_a_rescan_publishes_nothing_new(r, redis_url, tmp_path):
    s = settings(redis_url, KLOROS_EXPLORATION_RATE="0")
    publisher = Publisher(r, host="h1")
    first = run_scan(r, publisher, s, host="h1", collect=collector(tmp_path))
    assert {"cpu_simd", "memory_pressure", "accelerator_unused"} <= ledger_rules(r)
    unlock(r, "h1")
    second = run_scan(r, publisher, s, host="h1", collect=collector(tmp_path))
    assert first.opened and second.opened == () and second.resolved == ()
    env = json.loads(r.xrange(names.STREAM)[0][1][b"envelope"])
    assert env["facts"]["metadata"]["host"] == "h1" and env["facts"]["metadata"]["paths"] == []


def test_an_overlapping_or_duplicate_run_does_nothing(r, redis_url, tmp_path):
    s = settings(redis_url)
    publisher = Publisher(r)
    assert run_scan(r, publisher, s, host="h1", collect=collector(tmp_path)) is not None
    assert run_scan(r, publisher, s, host="h1", collect=collector(tmp_path)) is None


def test_the_rate_limit_holds_the_excess_most_severe_first_and_never_drops_it(r, redis_url,
                                                                               tmp_path):
    s = settings(redis_url, KLOROS_EXPLORATION_RATE="1/300")
    publisher = Publisher(r, host="h1")
    collect = collector(tmp_path)
    first = run_scan(r, publisher, s, host="h1", collect=collect)
    assert len(first.opened) == 1
    (env,) = publisher.open_questions()
    assert env["facts"]["severity"] == "high"  # memory_pressure on meminfo_critical
    unlock(r, "h1")
    assert run_scan(r, publisher, s, host="h1", collect=collect).opened == ()
    r.delete(names.exploration_opened("h1"))  # the window passes
    unlock(r, "h1")
    assert len(run_scan(r, publisher, s, host="h1", collect=collect).opened) == 1


def test_a_hung_gpu_probe_neither_resolves_nor_reopens_gpu_questions(r, redis_url, tmp_path):
    s = settings(redis_url, KLOROS_EXPLORATION_RATE="0")
    publisher = Publisher(r, host="h1")
    run_scan(r, publisher, s, host="h1", collect=collector(tmp_path))
    assert "accelerator_unused" in ledger_rules(r)
    unlock(r, "h1")
    (tmp_path / "hung").mkdir()
    hung = collector(tmp_path / "hung", hang=True)
    result = run_scan(r, publisher, s, host="h1", collect=hung)
    assert "accelerator_unused" in ledger_rules(r) and result.resolved == ()


def test_a_cleared_condition_is_resolved(r, redis_url, tmp_path):
    s = settings(redis_url, KLOROS_EXPLORATION_RATE="0")
    publisher = Publisher(r, host="h1")
    run_scan(r, publisher, s, host="h1", collect=collector(tmp_path))
    unlock(r, "h1")
    healthy = collector(tmp_path, cpuinfo="cpuinfo_avx2.txt", meminfo="meminfo_ok.txt",
                        smi="nvidia_smi_0.txt")
    result = run_scan(r, publisher, s, host="h1", collect=healthy)
    assert {qid.split(".")[1] for qid in result.resolved} >= {"cpu_simd", "memory_pressure"}


@pytest.mark.integration
def test_the_scan_task_runs_in_a_real_worker_and_records_this_host(r, redis_url, tmp_path):
    worker = start_worker(redis_url, tmp_path, "exploration", tmp_path / "worker.log",
                          KLOROS_EXPLORATION_RATE="0")
    try:
        app = create_app(settings(redis_url, KLOROS_STATE_DIR=str(tmp_path)))
        app.send_task(names.TASK_EXPLORATION_SCAN, queue=names.EXPLORATION)
        host = socket.gethostname()
        state = wait_for(lambda: r.get(names.exploration_state(host)), 30,
                         message="the scan's state")
        assert json.loads(state)["inventory"]["logical_cores"] >= 1
        wait_for(lambda: "exploration scan of" in worker.output(), 30, message="the scan log")
        # What the worker published is what this machine's probes say right now, for the
        # rules on what the host has; those on live readings (free memory and disk, GPU
        # use) may cross their threshold between the worker's probe and this one.
        publisher = Publisher(r)
        live = {"memory_pressure", "disk_pressure", "gpu_underutilization"}
        expected_rules = {q.rule for q in _evaluate_here(host)} - live
        assert {e["facts"]["metadata"]["rule"] for e in publisher.open_questions()} - live == \
            expected_rules
        app.send_task(names.TASK_EXPLORATION_SCAN, queue=names.EXPLORATION)
        wait_for(lambda: worker.output().count("exploration scan of") >= 2, 30,
                 message="the duplicate run")
        assert "skipped: another run is recent" in worker.output()
    finally:
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]


def _evaluate_here(host):
    from kloros_tasks.detectors.exploration import rules as exploration

    questions, _state = exploration.evaluate(probes.collect(timeout=5.0), {}, host=host)
    return questions


@pytest.mark.integration
def test_a_beat_scan_fans_out_so_every_host_reports_its_own_hardware(r, redis_url, tmp_path,
                                                                      procs):
    # Two exploration workers that report as two hosts (KLOROS_HOSTNAME), as two machines
    # sharing one Redis would.
    for host in ("alpha", "beta"):  # started together, then waited for
        procs.add(start_worker(redis_url, tmp_path, "exploration", tmp_path / f"{host}.log",
                               node=f"exploration@{host}", ready=False, KLOROS_HOSTNAME=host))
    for worker in procs.procs:
        worker.wait_output(" ready.")
    nodes = wait_for(lambda: len(r.hgetall(names.EXPLORATION_NODES)) == 2, 20,
                     message="both workers registered")
    assert nodes
    app = create_app(settings(redis_url, KLOROS_STATE_DIR=str(tmp_path)))
    app.send_task(names.TASK_EXPLORATION_SCAN, queue=names.EXPLORATION)  # what beat sends
    scanned = wait_for(lambda: {h.decode() for h in r.hkeys(names.EXPLORATION_LAST_SCAN)}
                       >= {"alpha", "beta"} and r.hkeys(names.EXPLORATION_LAST_SCAN), 30,
                       message="a scan on each host")
    assert len(scanned) == 2
    assert r.exists(names.exploration_state("alpha"), names.exploration_state("beta")) == 2
