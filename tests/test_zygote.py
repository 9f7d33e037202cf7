"""The zygote (cli/zygote.py) forks the workers of ``up --per-detector`` from one
interpreter that imported their program once.  The forks are children of ``up`` as the
processes it starts itself: each waits for the gate, leads its own process group,
writes its own log and shows its own command; one that dies is restarted the plain
way, and a stop leaves nothing behind.

``up``'s part runs in a process of its own here (it becomes a child subreaper, which
the test runner should not), on stand-in children that run a small module: like a
Celery worker, each forks a "pool" process into its group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kloros_tasks.cli import zygote
from kloros_tasks.cli.supervisor import Child, prestarted

STAND_IN = """
import os, sys, time
if os.fork() == 0:  # its pool process
    time.sleep(600)
    os._exit(0)
print("ran", os.getpid(), " ".join(sys.argv[1:]), flush=True)
time.sleep(600)
"""

UP = """
import json, os, signal, sys, time
from pathlib import Path
from kloros_tasks.cli.supervisor import (Child, Gate, RestartPolicy, Supervisor,
                                         prestarted, stop_all)

base, scenario = Path(sys.argv[1]), sys.argv[2]
logs = base / "logs"
logs.mkdir()
env = {**os.environ, "PYTHONPATH": str(base)}
# Stopped at once, the zygote is most likely still importing Celery: either way,
# nothing may be left.
module = ["celery", "--version"] if scenario == "stop-at-once" else ["stand_in"]
children = [prestarted(Child(name, [sys.executable, "-m", *module, name, "--opt", "1"],
                             forkable=True)) for name in ("a", "b")]
now = [1000.0]
supervisor = Supervisor(children, env, logs, policy=RestartPolicy(first_delay=1.0),
                        clock=lambda: now[0], say=lambda line: None)
facts = {}


def until(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        supervisor.check()
        time.sleep(0.05)


def stat(pid):
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return {"state": fields[0], "ppid": int(fields[1]), "pgid": int(fields[2])}


def my_children():
    return [int(p) for t in os.listdir("/proc/self/task")
            for p in Path(f"/proc/self/task/{t}/children").read_text().split()]


def log(name):
    return (logs / f"{name}.log").read_text()


# The processes still there once stopped: none is expected.  An orphaned pool process
# of a stopped child (reparented here) may end a moment after its parent: it is reaped
# as it ends, and waited for (60 s at most) before it counts as left.
def left_after_stop(known):
    def left():
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        return sorted({*my_children(), *(p for p in known if Path(f"/proc/{p}").exists())})

    deadline = time.monotonic() + 60
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    return left()


supervisor.start_all(Gate())
launch = children[0].proc.launch
if scenario == "stop-at-once":
    stop_all(children, grace=5)
    supervisor.close_gate()
    known = [launch.proc.pid, *launch.pids.values()]
    print(json.dumps({"forked": len(launch.pids), "zygote": launch.proc.returncode,
                      "left": left_after_stop(known)}))
    sys.exit(0)
until(lambda: all(c.proc.pid for c in children), "the zygote's forks")
pids = {c.name: c.proc.pid for c in children}
facts["me"] = os.getpid()
facts["forks"] = {name: {**stat(pid), "pid": pid, "cmdline": Path(
    f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\\0").decode().split("\\0")}
    for name, pid in pids.items()}
facts["zygote"] = launch.proc.returncode
if scenario == "stop-at-the-gate":
    stop_all(children, grace=5)
    supervisor.close_gate()
else:
    time.sleep(1)  # time enough to run, were they not held at the gate
    facts["before_gate"] = {name: log(name) for name in pids}
    supervisor.open_gate()
    until(lambda: all(log(name) for name in pids), "the forks to run")
    facts["after_gate"] = {name: log(name) for name in pids}
    # Its main process killed: its pool process is left to up, which reaps it.
    pool = [int(p) for p in Path(f"/proc/{pids['a']}/task/{pids['a']}/children").read_text()
            .split()]
    facts["pool"] = pool
    os.kill(pids["a"], signal.SIGKILL)
    until(lambda: children[0].restart_at is not None, "the death of a")
    facts["last_exit"] = children[0].last_exit
    now[0] += 1.0
    until(lambda: children[0].restarts == 1 and log("a").count("ran") == 2, "a's restart")
    facts["restarted"] = {**stat(children[0].proc.pid), "pid": children[0].proc.pid,
                          "cmdline": Path(f"/proc/{children[0].proc.pid}/cmdline")
                          .read_bytes().decode().split("\\0")[:3]}
    until(lambda: not [p for p in my_children() if stat(p)["state"] == "Z"],
          "the orphaned pool process to be reaped")
    facts["orphan_reaped"] = [p for p in pool if Path(f"/proc/{p}").exists()]
    stop_all(children, grace=5)
    supervisor.close_gate()
known = [*pids.values(), *(c.proc.pid for c in children)]
facts["left"] = left_after_stop(known)
print(json.dumps(facts))
"""


def run_up(tmp_path: Path, scenario: str) -> dict:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    done = subprocess.run([sys.executable, "-c", UP, str(tmp_path), scenario],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    """One run: start, open the gate, kill a fork, let it be restarted, stop."""
    return run_up(tmp_path_factory.mktemp("zygote"), "run")


def test_the_forks_are_children_of_up_in_groups_of_their_own_held_at_the_gate(ran):
    facts = ran
    assert facts["zygote"] == 0
    for name, fork in facts["forks"].items():
        assert fork["ppid"] == facts["me"] and fork["pgid"] == fork["pid"]
        assert fork["cmdline"] == [*zygote.ZYGOTE, "stand_in", name, "--opt", "1"]
        assert facts["before_gate"][name] == ""
        assert facts["after_gate"][name] == f"ran {fork['pid']} {name} --opt 1\n"


def test_a_fork_that_dies_is_restarted_the_plain_way_and_its_orphans_reaped(ran):
    facts = ran
    assert facts["last_exit"] == -9
    restarted = facts["restarted"]
    assert restarted["ppid"] == facts["me"] and restarted["pgid"] == restarted["pid"]
    assert restarted["cmdline"] == [sys.executable, "-m", "kloros_tasks.cli.prestart"]
    assert len(facts["pool"]) == 1 and facts["orphan_reaped"] == []
    assert facts["left"] == []


def test_a_stop_before_the_gate_opens_leaves_no_process(tmp_path):
    facts = run_up(tmp_path, "stop-at-the-gate")
    assert len(facts["forks"]) == 2
    assert facts["left"] == []


def test_a_stop_while_the_zygote_imports_leaves_no_process(tmp_path):
    facts = run_up(tmp_path, "stop-at-once")
    assert facts["zygote"] is not None and facts["left"] == []


def test_only_several_gated_forkable_children_share_a_zygote(tmp_path):
    from kloros_tasks.cli.supervisor import Gate, Supervisor, stop_all

    alone = prestarted(Child("a", [sys.executable, "-m", "json.tool", "--help"],
                             forkable=True))
    supervisor = Supervisor([alone], {}, tmp_path)
    supervisor.start_all(Gate())
    try:
        assert isinstance(alone.proc, subprocess.Popen)  # one worker: nothing to share
    finally:
        stop_all([alone], grace=5)
        supervisor.close_gate()


def test_commands_are_parsed_between_separators():
    specs = zygote.parse(["a", "/l/a.log", "celery", "-A", "x", "::", "b", "/l/b.log", "m"])
    assert specs == [zygote.Spec("a", "/l/a.log", "celery", ("-A", "x")),
                     zygote.Spec("b", "/l/b.log", "m", ())]
    with pytest.raises(ValueError):
        zygote.parse(["a", "/l/a.log"])


def test_only_the_per_detector_layout_forks_its_workers(tmp_path):
    from kloros_tasks.cli.supervisor import plan, zygote_of
    from kloros_tasks.settings import Settings

    settings = Settings(state_dir=tmp_path)
    per_detector = plan(settings, [tmp_path], single_worker=False)
    assert sorted(c.name for c in per_detector if c.forkable) == sorted(
        c.name for c in per_detector if c.name.startswith("worker-"))
    assert zygote_of(per_detector) is zygote
    # The default layout's one worker starts the plain way, and up never imports this.
    assert zygote_of(plan(settings, [tmp_path])) is None
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, kloros_tasks.cli.upstart, kloros_tasks.cli.up; "
         "print('kloros_tasks.cli.zygote' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
