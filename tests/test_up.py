"""``kloros-tasks up`` end to end: embedded Redis, real workers, beat and the watcher on a
temp tree; edits show up on the pub/sub channel; stop leaves nothing behind; a restart
republishes nothing that is still open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from procs import Proc, ended, service_env, stat_fields, wait_for

from kloros_tasks import names
from kloros_tasks.cli.upstart import CHILD_MALLOC
from kloros_tasks.connections import redis_client

pytestmark = pytest.mark.integration
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))
# The tree declares a docstring policy: missing_docstrings asks only in such a tree.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["D"]\n'
DOCUMENTED = '"""Doc."""\n' + "".join(
    f'def f{i}():\n    """Doc."""\n    return {i}\n\n' for i in range(5))


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def world():
    base = Path(tempfile.mkdtemp(prefix="kl-up-"))
    tree = base / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text(UNDOCUMENTED)
    (tree / "pyproject.toml").write_text(DOC_POLICY)
    (tree / "README.md").write_text("# Tree\n")
    yield base, tree, base / "state"
    for pid in processes_mentioning(str(base)):
        os.kill(pid, signal.SIGKILL)


def start_up(base: Path, tree: Path, state: Path, log_name: str, *options: str,
             **extra: str) -> Proc:
    env = service_env("", state, **extra)
    del env["KLOROS_REDIS_URL"]  # up embeds its own
    env["KLOROS_EXPLORATION_INTERVAL"] = "3600"
    return Proc([sys.executable, "-m", "kloros_tasks.cli", "up", *options, str(tree)], env,
                base / log_name)


def analysis_done(client) -> bool:
    """Nothing queued, in flight (kombu's "unacked") or deferred for judging, on two
    looks half a second apart (a message a worker has just popped is in neither list
    for an instant): whatever the workers would publish, a wrong republication
    included, has been published."""
    def quiet() -> bool:
        return (all(client.llen(q) == 0 for q in names.QUEUES) and not client.hlen("unacked")
                and not any(client.exists(names.deferred(q, "tree")) for q in names.QUEUES))

    if not quiet():
        return False
    time.sleep(0.5)
    return quiet()


def child_commands(pid: int) -> list[str]:
    """Command lines of a process's direct children."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


def test_by_default_one_worker_serves_every_queue_and_beat_is_a_thread_of_up(world):
    base, tree, state = world
    up = start_up(base, tree, state, "up.log")
    try:
        up.wait_output("knowledge.missing_docstrings", 90)
        client = redis_client(f"redis+socket://{state}/redis/redis.sock")
        # Beat, a thread of up, sent the first exploration scan and the worker ran it.
        wait_for(lambda: client.hlen(names.EXPLORATION_LAST_SCAN), 60, 0.2,
                 "the first exploration scan")
        assert "Sending due task exploration-scan" in (state / "logs" / "beat.log").read_text()
        commands = child_commands(up.popen.pid)
        workers = [c for c in commands if " worker " in c]
        assert len(workers) == 1 and " -B " not in workers[0]
        assert ",".join(names.QUEUES) in workers[0] and " --autoscale 2,1 " in workers[0]
        assert not [c for c in commands if " beat " in c or " watch " in c]
        # Its allocator keeps little freed heap resident (cli/upstart.py CHILD_MALLOC).
        environ = Path(f"/proc/{child_pid(up, ' worker ')}/environ").read_bytes().split(b"\0")
        assert {f"{k}={v}".encode() for k, v in CHILD_MALLOC.items()} <= set(environ)
        client.close()
    finally:
        assert up.stop() == 0


def test_up_runs_the_pipeline_and_stops_cleanly_and_restarts_without_republishing(world):
    base, tree, state = world
    up = start_up(base, tree, state, "up1.log")
    up.wait_output("knowledge.missing_docstrings", 90)
    client = redis_client(f"redis+socket://{state}/redis/redis.sock")
    pubsub = client.pubsub()
    pubsub.psubscribe(names.CHANNEL_PATTERN)
    pubsub.get_message(timeout=1)

    # An edit shows its resolution on the channel, as a subscriber would see it.
    (tree / "pkg" / "mod.py").write_text(DOCUMENTED)
    seen = []

    def resolved():
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            seen.append(json.loads(message["data"]))
        return any(e["signal"] == names.CHANNEL_RESOLVED for e in seen)

    wait_for(resolved, 30, message="the resolution on curiosity.question_resolved")
    (tree / "pkg" / "mod.py").write_text(UNDOCUMENTED)
    wait_for(lambda: resolved() and any(e["signal"] == names.CHANNEL[names.KNOWLEDGE]
                                        for e in seen), 30, message="the question again")

    # A second `up` on the same state dir refuses instead of corrupting anything.
    second = start_up(base, tree, state, "up2.log")
    assert second.popen.wait(30) == 2
    assert "already running" in second.output()

    open_before = client.hlen(names.LEDGER)
    stream_before = client.xlen(names.STREAM)
    pubsub.close()
    client.close()
    started = time.monotonic()
    up.popen.send_signal(signal.SIGTERM)
    assert up.popen.wait(15) == 0
    assert time.monotonic() - started < 10
    snapshot = json.loads((state / "snapshot.json").read_text())  # written at shutdown
    assert snapshot
    time.sleep(0.5)
    assert processes_mentioning(str(state)) == []

    # Restart: nothing that is still open is published again.
    up = start_up(base, tree, state, "up3.log")
    up.wait_output("already open", 60)
    client = redis_client(f"redis+socket://{state}/redis/redis.sock")
    wait_for(lambda: watcher_beat_of(client, up), 30, 0.1, "this run's watcher")
    wait_for(lambda: analysis_done(client), 30, message="the queues drained and judged")
    assert client.hlen(names.LEDGER) == open_before
    new = [json.loads(f[b"envelope"]) for _i, f in client.xrange(names.STREAM)][stream_before:]
    assert new == []
    client.close()
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(15) == 0


def test_up_bridges_questions_to_a_chembus_subscriber_when_an_endpoint_is_set(world, procs):
    import socket as _socket

    import zmq

    def port() -> int:
        with _socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    base, tree, state = world
    xsub, xpub = f"tcp://127.0.0.1:{port()}", f"tcp://127.0.0.1:{port()}"
    env = service_env("", state, KLOROS_CHEM_XSUB=xsub, KLOROS_CHEM_XPUB=xpub,
                      KLOROS_BUDGET_KNOWLEDGE="0", KLOROS_EXPLORATION_INTERVAL="3600")
    del env["KLOROS_REDIS_URL"]
    procs.add(Proc([sys.executable, "-m", "kloros_tasks.cli", "chem-proxy"], env,
                   base / "proxy.log")).wait_output("ChemBus proxy:", 30)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"curiosity.knowledge")
    sub.connect(xpub)
    try:
        procs.add(Proc([sys.executable, "-m", "kloros_tasks.cli", "up", str(tree)], env,
                       base / "up.log"))
        assert sub.poll(90_000), "no envelope reached the ChemBus subscriber"
        topic, body = sub.recv_multipart()
        envelope = json.loads(body)
        assert topic == b"curiosity.knowledge_question" == envelope["signal"].encode()
        assert envelope["facts"]["metadata"]["paths"] == ["pkg/mod.py"]
    finally:
        sub.close(0)
        context.term()


def watcher_beat_of(client, up: Proc) -> bool:
    """Whether the watcher's heartbeat is from ``up``'s watcher: a thread of ``up`` in
    the default layout, a child process with ``--per-detector``."""
    beat = client.get(names.WATCHER_HEARTBEAT)
    return beat is not None and json.loads(beat)["pid"] in {
        up.popen.pid, *descendants(up.popen.pid)}


def child_pid(up: Proc, text: str) -> int:
    """The pid of ``up``'s direct child whose command line holds ``text``."""
    def found():
        children = Path(f"/proc/{up.popen.pid}/task/{up.popen.pid}/children").read_text()
        for child in children.split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if text in cmdline:
                return int(child)
        return None

    return wait_for(found, 30, 0.2, f"a child running {text!r}")


@pytest.mark.fault
def test_up_restarts_a_child_that_died_and_status_shows_the_restart(world):
    base, tree, state = world
    # The per-detector layout: one worker per queue, each restarted on its own.
    up = start_up(base, tree, state, "up.log", "--per-detector")
    up.wait_output("knowledge.missing_docstrings", 90)
    commands = child_commands(up.popen.pid)
    assert len([c for c in commands if " worker " in c]) == len(names.QUEUES)
    # Beat runs inside the exploration worker, not as a process of its own.
    assert [c for c in commands if " -Q exploration " in c and " -B " in c]
    assert not [c for c in commands if " beat " in c]
    url = f"redis+socket://{state}/redis/redis.sock"
    client = redis_client(url)

    # A worker's parent SIGKILLed (what the OOM killer does): up carries on without it
    # for a second, then starts it again; its pool children went with it.
    os.kill(child_pid(up, " -Q knowledge "), signal.SIGKILL)
    up.wait_output("worker-knowledge was killed by SIGKILL", 30)
    up.wait_output("worker-knowledge restarted (restart 1)", 30)
    # The watcher too: restarted, it reconciles what changed while it was away.
    os.kill(child_pid(up, " watch "), signal.SIGKILL)
    (tree / "pkg" / "mod.py").write_text(DOCUMENTED)
    up.wait_output("watcher restarted (restart 1)", 30)
    # (Exploration questions about this host may be open too: only knowledge's count.)
    wait_for(lambda: not [q for q in client.hkeys(names.LEDGER) if q.startswith(b"knowledge.")],
             60, 0.2, message="the restarted pair resolving the question")
    assert up.popen.poll() is None

    done = subprocess.run([sys.executable, "-m", "kloros_tasks.cli", "status", "--json"],
                          env=service_env(url, state), capture_output=True, text=True,
                          timeout=60)
    children = json.loads(done.stdout)["up"]["children"]
    assert children["worker-knowledge"]["restarts"] == 1
    assert children["worker-knowledge"]["last_exit"] == -signal.SIGKILL
    assert children["watcher"]["restarts"] == 1
    assert {c["state"] for c in children.values()} == {"running"}
    assert children["worker-integration"]["restarts"] == 0
    client.close()
    assert up.stop() == 0


def docs_naming_code(tree: Path, count: int) -> None:
    """Documents that name pkg/mod.py and its functions, all linked from the README: on
    an index without the module, each would be a stale_doc."""
    (tree / "docs").mkdir(exist_ok=True)
    for i in range(count):
        (tree / "docs" / f"n{i:02d}.md").write_text(
            f"# Note {i}\n\nSee `pkg/mod.py` and `pkg.mod.f{i % 5}`.\n")
    (tree / "README.md").write_text("# Tree\n\n" + "".join(
        f"- [note {i}](docs/n{i:02d}.md)\n" for i in range(count)))


@pytest.mark.fault
def test_a_redis_flushed_under_up_is_restored_at_once_and_the_snapshot_survives(world):
    base, tree, state = world
    docs_naming_code(tree, 30)
    url = f"redis+socket://{state}/redis/redis.sock"
    up = start_up(base, tree, state, "up1.log")
    up.wait_output("knowledge.missing_docstrings", 90)
    client = redis_client(url)
    wait_for(lambda: client.hlen(names.facts(names.KNOWLEDGE, "tree")) == 33
             and all(client.llen(q) == 0 for q in names.QUEUES) and not client.hlen("unacked"),
             60, 0.2, "every file analysed")
    client.close()
    assert up.stop() == 0  # the watcher writes the snapshot
    written = json.loads((state / "snapshot.json").read_text())
    # The watcher notices the flush at its next heartbeat: a short one here.
    up = start_up(base, tree, state, "up2.log", KLOROS_WATCHER_HEARTBEAT_MS="500")
    up.wait_output("already open", 60)
    client = redis_client(url)
    # This run's watcher has registered and reconciled (the last run's heartbeat may
    # still be in Redis): a flush before that would only look like a first start.
    wait_for(lambda: watcher_beat_of(client, up), 30, 0.1, "this run's watcher")
    ledger = client.hgetall(names.LEDGER)
    assert {k.decode() for k in ledger} == written["ledger"].keys() != set()

    client.flushdb()
    wait_for(lambda: client.hgetall(names.LEDGER) == ledger, 30, 0.2,
             "the ledger restored (the periodic reconciliation is 600 s away)")
    wait_for(lambda: analysis_done(client), 30, message="the queues drained and judged")
    assert client.xrange(names.STREAM) == []  # the stream went with the flush
    (tree / "docs" / "new.md").write_text("# New\n\nNobody links here.\n")
    wait_for(lambda: client.xlen(names.STREAM), 30, message="the new document's question")
    (entry,) = [json.loads(f[b"envelope"]) for _i, f in client.xrange(names.STREAM)]
    assert entry["facts"]["metadata"]["paths"] == ["docs/new.md"]
    client.close()
    assert up.stop() == 0
    kept = json.loads((state / "snapshot.json").read_text())
    assert len(kept["facts"][names.facts(names.KNOWLEDGE, "tree")]) == 34
    assert kept["ledger"].keys() == {k.decode() for k in ledger} | {
        entry["facts"]["question_id"]}


def survivor(pid: int) -> str:
    """What a process still running is: its command, state and parent, and where each
    of its threads waits (for a failing test's message)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = stat_fields(pid)
        waits = sorted({(t / "wchan").read_text() for t in Path(f"/proc/{pid}/task").iterdir()})
    except OSError as exc:
        return f"gone while looked at ({exc})"
    return f"{command[:200]} (state {fields[0]}, parent {fields[1]}, waits in {waits})"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                kids = {int(p) for p in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


@pytest.mark.fault
@pytest.mark.parametrize("layout", [(), ("--per-detector",)], ids=["default", "per-detector"])
def test_every_process_of_up_ends_when_up_is_killed(world, layout):
    base, tree, state = world
    up = start_up(base, tree, state, "up.log", *layout)
    up.wait_output("knowledge.missing_docstrings", 90)
    below = descendants(up.popen.pid)
    commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in below if not ended(p)]
    assert [c for c in commands if b"redis-server" in c]
    assert len([c for c in commands if b" worker " in c.replace(b"\0", b" ")]) >= (
        len(names.QUEUES) if layout else 1)
    up.popen.kill()  # SIGKILL: up's own stop never runs (the OOM killer, kill -9)
    up.popen.wait()
    try:
        wait_for(lambda: all(ended(p) for p in below), 60, 0.2,
                 "the workers, the watcher and redis-server to end with up")
    except AssertionError:
        left = {p: survivor(p) for p in below if not ended(p)}
        raise AssertionError(f"still running 60 s after up was killed: {left}") from None
