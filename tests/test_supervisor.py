"""``up``'s supervisor keeps its children running the way systemd's ``Restart=`` does:
a dead child is restarted after a doubling delay, and a start limit ends a crash loop.
Real child processes; the supervisor's clock is the test's, so no test waits for it."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

import pytest
from procs import wait_for

from kloros_tasks import names
from kloros_tasks.cli.supervisor import (
    Child,
    Gate,
    GaveUp,
    RestartPolicy,
    Supervisor,
    describe_exit,
    plan,
    prestarted,
    stop_all,
)
from kloros_tasks.cli.threadchild import (
    ThreadChild,
    beat_thread,
    bridge_thread,
    watcher_thread,
)
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import Settings, SettingsError

POLICY = RestartPolicy(first_delay=1.0, max_delay=4.0, stable_after=60.0, burst=3,
                       interval=300.0)


def exits_with(status: int, name: str = "worker-knowledge", **options) -> Child:
    return Child(name, [sys.executable, "-c", f"import sys; sys.exit({status})"], **options)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def run(tmp_path):
    """A Supervisor over ``children`` with the test's clock; what it says is recorded."""
    made: list[Supervisor] = []

    def make(*children: Child) -> tuple[Supervisor, Clock, list[str]]:
        clock, said = Clock(), []
        supervisor = Supervisor(list(children), {}, tmp_path, policy=POLICY, clock=clock,
                                say=said.append)
        supervisor.start_all()
        made.append(supervisor)
        return supervisor, clock, said

    yield make
    for supervisor in made:
        for child in supervisor.children:
            if child.alive():
                child.proc.kill()
                child.proc.wait()


def died(child: Child) -> None:
    child.proc.wait(30)


def test_a_dead_child_is_restarted_after_a_delay_that_doubles_up_to_the_cap(run):
    child = exits_with(3)
    supervisor, clock, said = run(child)
    delays = []
    for _ in range(POLICY.burst):
        died(child)
        first_pid = child.proc.pid
        supervisor.check()
        assert supervisor.state()[child.name]["state"] == "restarting"
        delays.append(child.restart_at - clock.now)
        clock.now += delays[-1] - 0.01
        supervisor.check()
        assert child.proc.pid == first_pid  # not before its delay
        clock.now += 0.01
        supervisor.check()
        assert child.proc.pid != first_pid
        clock.now += 1  # dies again soon after its start
    assert delays == [1.0, 2.0, 4.0]
    assert supervisor.state()[child.name] == {
        "pid": child.proc.pid, "state": "running", "restarts": 3, "last_exit": 3}
    assert "worker-knowledge exited with status 3" in said[0] and "restarting in 1 s" in said[0]
    assert any("restarted (restart 1)" in line for line in said)


def test_the_start_limit_gives_up_on_a_crash_loop(run):
    child = exits_with(1)
    supervisor, clock, _said = run(child)
    for _ in range(POLICY.burst):
        died(child)
        supervisor.check()
        clock.now = child.restart_at
        supervisor.check()
    died(child)
    with pytest.raises(GaveUp, match=f"restarted {POLICY.burst} times within 300 s"):
        supervisor.check()


def test_restarts_older_than_the_interval_do_not_count_towards_the_limit(run):
    child = exits_with(1)
    supervisor, clock, _said = run(child)
    for _ in range(3 * POLICY.burst):
        died(child)
        supervisor.check()
        clock.now = child.restart_at + POLICY.interval / POLICY.burst + 1
        supervisor.check()
    assert child.restarts == 3 * POLICY.burst


def test_a_child_that_ran_long_enough_starts_again_from_the_first_delay(run):
    child = exits_with(1)
    supervisor, clock, _said = run(child)
    for _ in range(2):
        died(child)
        supervisor.check()
        clock.now = child.restart_at
        supervisor.check()
    assert child.delay == 2.0
    clock.now += POLICY.stable_after
    died(child)
    supervisor.check()
    assert child.delay == POLICY.first_delay


def test_an_exit_a_restart_cannot_mend_gives_up_at_once(run):
    child = exits_with(2, "watcher", final_statuses=frozenset({2}))
    supervisor, _clock, _said = run(child)
    died(child)
    with pytest.raises(GaveUp, match="watcher exited with status 2; .*a restart cannot help"):
        supervisor.check()


def test_a_killed_child_is_described_by_its_signal():
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("single_worker", [True, False])
def test_workers_get_the_configured_pool_fixed_or_autoscaled(tmp_path, single_worker):
    fixed = Settings(state_dir=tmp_path, worker_concurrency=(2, 2))
    workers = [c for c in plan(fixed, [tmp_path], single_worker=single_worker)
               if c.name.startswith("worker")]
    assert workers and all(option(w.argv, "--concurrency") == "2" for w in workers)
    assert not any("--autoscale" in w.argv for w in workers)
    # An explicit pool (up --concurrency) wins over the setting.
    workers = [c for c in plan(fixed, [tmp_path], single_worker=single_worker,
                               concurrency=(2, 1)) if c.name.startswith("worker")]
    assert all(option(w.argv, "--autoscale") == "2,1" for w in workers)
    assert not any("--concurrency" in w.argv for w in workers)


def test_unconfigured_the_default_layout_autoscales_and_per_detector_workers_keep_one(
        tmp_path):
    settings = Settings(state_dir=tmp_path)  # no KLOROS_WORKER_CONCURRENCY
    one = [c for c in plan(settings, [tmp_path]) if c.name.startswith("worker")]
    assert len(one) == 1 and option(one[0].argv, "--autoscale") == "2,1"
    each = [c for c in plan(settings, [tmp_path], single_worker=False)
            if c.name.startswith("worker")]
    assert len(each) == len(names.QUEUES)
    assert all(option(w.argv, "--concurrency") == "1" for w in each)


def test_the_per_detector_layout_runs_beat_inside_the_exploration_worker(tmp_path):
    children = plan(Settings(state_dir=tmp_path), [tmp_path], single_worker=False)
    assert sorted(c.name for c in children if c.name.startswith("worker")) == sorted(
        f"worker-{q}" for q in names.QUEUES)
    with_beat = [c.name for c in children if "-B" in c.argv]
    assert with_beat == [f"worker-{names.EXPLORATION}"]
    assert not [c for c in children if "beat" in c.argv]


def thread_child(run_for, name: str = "bridge") -> ThreadChild:
    return ThreadChild(name, [], final_statuses=frozenset({2}), run=run_for,
                       loggers=("kloros_tasks.tests.thread_child",))


def test_a_thread_child_that_ends_is_restarted_like_a_process(run):
    runs = []

    def ends(stop):
        runs.append(1)
        logging.getLogger("kloros_tasks.tests.thread_child").warning("run %d", len(runs))
        return 0

    child = thread_child(ends)
    supervisor, clock, said = run(child)
    child.proc.wait(30)
    supervisor.check()
    assert child.restart_at == clock.now + 1.0 and child.last_exit == 0
    clock.now += 1.0
    supervisor.check()
    child.proc.wait(30)
    assert len(runs) == 2 and child.restarts == 1
    assert supervisor.state()["bridge"]["pid"] == os.getpid()
    # Its loggers write to its own log file.
    assert "run 2" in child.log_path.read_text()


def test_a_thread_child_stopping_on_a_settings_error_gives_up_at_once(run):
    def misconfigured(stop):
        raise SettingsError("KLOROS_CHEM_XSUB: not an endpoint")

    child = thread_child(misconfigured)
    supervisor, _clock, _said = run(child)
    child.proc.wait(30)
    with pytest.raises(GaveUp, match="a restart cannot help"):
        supervisor.check()
    assert child.last_exit == 2


def test_stop_all_ends_a_thread_child_through_its_stop_event(tmp_path):
    seen = threading.Event()

    def waits(stop):
        seen.set()
        stop.wait()
        return 0

    child = thread_child(waits)
    Supervisor([child], {}, tmp_path).start_all()
    assert seen.wait(30)
    stop_all([child], grace=30)
    assert not child.alive() and child.proc.poll() == 0


def test_a_thread_child_that_ignores_its_stop_is_abandoned_as_killed(tmp_path):
    never = threading.Event()
    child = thread_child(lambda stop: never.wait(60) and 0)
    Supervisor([child], {}, tmp_path).start_all()
    stop_all([child], grace=0.1)
    assert child.proc.poll() == -signal.SIGKILL
    never.set()


@pytest.mark.parametrize("single_worker", [True, False])
def test_the_bridge_watcher_and_beat_are_threads_of_up_only_where_asked(tmp_path,
                                                                       single_worker):
    settings = Settings(state_dir=tmp_path, chem_xsub_given=True)
    in_process = {"bridge_in_process": bridge_thread, "watcher_in_process": watcher_thread,
                  "beat_in_process": beat_thread} if single_worker else {}
    children = {c.name: c for c in plan(settings, [tmp_path], single_worker=single_worker,
                                        **in_process)}
    with_b = [name for name, c in children.items() if "-B" in c.argv]
    if single_worker:  # beat is the thread, not a -B of the worker
        assert isinstance(children["beat"], ThreadChild) and children["beat"].gated
        assert with_b == []
    else:
        assert "beat" not in children and with_b == [f"worker-{names.EXPLORATION}"]
    for name in ("bridge", "watcher"):
        assert isinstance(children[name], ThreadChild) == single_worker
        assert children[name].gated
        if not single_worker:
            assert children[name].argv[-1 if name == "bridge" else -2] == (
                "bridge" if name == "bridge" else "watch")
    assert not [c for c in plan(Settings(state_dir=tmp_path), [tmp_path],
                                bridge_in_process=bridge_thread) if c.name == "bridge"]


def test_a_watcher_thread_watches_the_roots_and_ends_at_its_stop(tmp_path, redis_url):
    # What up runs in its default layout: the watcher's registration and heartbeat on
    # the given Redis, from up's own process, stopped as a child is.
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.md").write_text("# A\n")
    settings = Settings(state_dir=tmp_path / "state", redis_url=redis_url,
                        watcher_heartbeat_ms=200)
    (tmp_path / "state").mkdir()
    child = watcher_thread(settings, [root])
    child.gated = False
    Supervisor([child], {}, tmp_path).start_all()
    client = redis_client(redis_url)
    try:
        beat = wait_for(lambda: client.get(names.WATCHER_HEARTBEAT), 30, 0.1,
                        "the watcher thread's heartbeat")
        assert json.loads(beat)["pid"] == os.getpid() == child.proc.pid
        assert json.loads(client.hget(names.ROOTS, "tree"))["path"] == str(root)
    finally:
        stop_all([child], grace=10)
        client.close()
    assert child.proc.poll() == 0
    assert (tmp_path / "state" / "snapshot.json").exists()  # kept, as `watch` keeps it


def test_gated_children_start_at_once_but_run_only_when_the_gate_opens(tmp_path):
    (tmp_path / "marker.py").write_text(
        "import sys, pathlib\n"
        "pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\n")
    ran = tmp_path / "ran"
    gated = prestarted(Child("watcher", [sys.executable, "-m", "marker", str(ran), "a", "b"]))
    assert gated.argv[:4] == [sys.executable, "-m", "kloros_tasks.cli.prestart", "marker"]
    later = exits_with(0, name="flower")
    reached = threading.Event()
    thread = thread_child(lambda stop: reached.set() or 0)
    thread.gated = True
    supervisor = Supervisor([gated, later, thread], {"PYTHONPATH": str(tmp_path)}, tmp_path)
    supervisor.start_all(Gate())
    try:
        assert gated.alive() and later.proc is None
        time.sleep(1)  # time enough to import and run, were it not held
        assert gated.alive() and not ran.exists() and not reached.is_set()
        supervisor.open_gate()
        assert gated.proc.wait(30) == 0 and ran.read_text() == "a b"
        assert later.proc.wait(30) == 0
        assert thread.proc.wait(30) == 0 and reached.is_set()
    finally:
        stop_all(supervisor.children, grace=5)


def test_a_restarted_gated_child_runs_at_once(tmp_path):
    child = prestarted(Child("watcher", [sys.executable, "-m", "json.tool", "--help"]))
    supervisor = Supervisor([child], {}, tmp_path)
    supervisor.start_all()  # no gate: its input is /dev/null
    assert child.proc.wait(30) == 0
