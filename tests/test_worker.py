"""File-change tasks through a real prefork ``celery worker`` on a private Redis.

One worker serves the module (starting one costs about two seconds); tests keep
apart by using their own root names instead of flushing the server, which would
also delete kombu's queue bindings under the running worker.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from procs import start_worker, wait_for

from kloros_tasks import names
from kloros_tasks.celery_app import create_app
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import from_env
from kloros_tasks.work import blobs
from kloros_tasks.work.payload import Change

pytestmark = pytest.mark.integration

UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))
# Each root declares a docstring policy: missing_docstrings asks only in such a tree.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["D"]\n'
DOCUMENTED = '"""A module."""\n' + "".join(
    f'def f{i}():\n    """Return {i}."""\n    return {i}\n\n' for i in range(5))


class Pipeline:
    """A worker, a client and helpers to send changes the way the producer does."""

    def __init__(self, directory: Path, detector: str = names.KNOWLEDGE) -> None:
        self.directory = directory
        self.detector = detector
        self.server = EmbeddedRedis(directory / "redis", persist=False).start()
        self.r = redis_client(self.server.url)
        self.worker = start_worker(self.server.url, directory, detector,
                                   directory / "worker.log", KLOROS_MAX_FILE_BYTES="4096")
        self.app = create_app(from_env({"KLOROS_REDIS_URL": self.server.url}))

    def new_root(self) -> str:
        root = f"r{uuid.uuid4().hex[:8]}"
        tree = self.directory / root
        tree.mkdir()
        self.r.hset(names.ROOTS, root, json.dumps({"path": str(tree), "host": "elsewhere"}))
        return root

    def send_raw(self, *args, **kwargs) -> None:
        self.app.send_task(names.TASK_ANALYZE[self.detector], args=list(args), kwargs=kwargs,
                           queue=self.detector)

    def change(self, root: str, path: str, content: bytes | None) -> Change:
        if content is None:
            change = Change(root, path, "deleted", None, ts=1.0)
        else:
            sha = hashlib.sha256(content).hexdigest()
            blobs.store(self.r, sha, content, refs=1, ttl=600)
            change = Change(root, path, "modified", sha, ts=1.0)
        self.send_raw(change.to_json())
        return change

    def envelopes(self, root: str) -> list[dict]:
        out = []
        for _id, fields in self.r.xrange(names.STREAM):
            env = json.loads(fields[b"envelope"])
            if env["facts"]["metadata"].get("root") == root:
                out.append(env)
        return out

    def wait_envelopes(self, root: str, count: int, timeout: float = 20) -> list[dict]:
        return wait_for(lambda: len(self.envelopes(root)) >= count and self.envelopes(root),
                        timeout, message=f"{count} envelopes for {root}")

    def drained(self) -> bool:
        """The queue is empty and the worker has logged a result for every task."""
        log = self.worker.output()
        return self.r.llen(self.detector) == 0 and log.count("received") == (
            log.count("succeeded in") + log.count("raised unexpected"))

    def close(self) -> None:
        self.worker.kill()  # nothing is checked after this but the log
        self.r.close()
        self.server.stop()


def module_pipeline(detector: str):
    """Body of a module-scoped fixture: one worker for ``detector``, checked for crashes."""
    directory = Path(tempfile.mkdtemp(prefix=f"kl-{detector[:4]}-"))
    pipeline = Pipeline(directory, detector)
    yield pipeline
    pipeline.close()
    assert "Traceback" not in pipeline.worker.output(), pipeline.worker.output()[-4000:]
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pipe():
    yield from module_pipeline(names.KNOWLEDGE)


def test_undocumented_code_raises_a_question_and_documenting_it_resolves_it(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    pipe.change(root, "pkg/mod.py", UNDOCUMENTED.encode())
    (opened,) = pipe.wait_envelopes(root, 1)
    assert opened["signal"] == names.CHANNEL[names.KNOWLEDGE]
    assert opened["facts"]["metadata"]["rule"] == "missing_docstrings"
    assert opened["facts"]["metadata"]["paths"] == ["pkg/mod.py"]
    assert any(e.startswith("pkg/mod.py:") for e in opened["facts"]["evidence"])
    pipe.change(root, "pkg/mod.py", DOCUMENTED.encode())
    _, resolved = pipe.wait_envelopes(root, 2)
    assert resolved["signal"] == names.CHANNEL_RESOLVED
    assert resolved["facts"]["question_id"] == opened["facts"]["question_id"]


def test_a_task_delivered_twice_publishes_once_and_the_blob_goes_when_done(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    content = UNDOCUMENTED.encode() + b"# twice\n"
    change = pipe.change(root, "a.py", content)
    blobs.store(pipe.r, change.sha256, content, refs=1, ttl=600)  # the second delivery's ref
    pipe.send_raw(change.to_json())
    pipe.wait_envelopes(root, 1)
    wait_for(pipe.drained, 20, message="both deliveries processed")
    assert len(pipe.envelopes(root)) == 1
    assert not pipe.r.exists(names.blob(change.sha256), names.blob_refs(change.sha256))


@pytest.mark.parametrize("args,kwargs", [
    ((), {}), (("not json",), {}), ((["a", "list"],), {}), (({"root": "x"},), {}),
    (({"v": 1, "root": "r", "path": "a.py", "event": "modified", "sha256": "00"},), {}),
    ((), {"payload": {"path": "a.py"}}), (("{}", "extra"), {}),
])
def test_malformed_payloads_are_refused_and_acknowledged(pipe, args, kwargs):
    before = pipe.worker.output().count("refused")
    pipe.send_raw(*args, **kwargs)
    wait_for(lambda: pipe.worker.output().count("refused") > before, 20,
             message="the refusal")
    wait_for(pipe.drained, 20, message="the queue drained")


@pytest.mark.parametrize("root_of,path", [
    (lambda pipe: "never-registered", "a.py"),
])
def test_a_root_no_watcher_registered_is_refused(pipe, root_of, path):
    before = pipe.worker.output().count("no watcher registered")
    pipe.send_raw(Change(root_of(pipe), path, "modified", "a" * 64).to_json())
    wait_for(lambda: pipe.worker.output().count("no watcher registered") > before, 20,
             message="the refusal")


def test_paths_outside_the_root_are_refused(pipe):
    root = pipe.new_root()
    bad = {**Change(root, "a.py", "modified", "a" * 64).to_json(), "path": "../../etc/passwd"}
    before = pipe.worker.output().count("outside its watched root")
    pipe.send_raw(bad)
    wait_for(lambda: pipe.worker.output().count("outside its watched root") > before, 20,
             message="the refusal")


@pytest.mark.parametrize("content,reason", [
    (b"def f():\n    return 1\x00\n", "binary"),
    (b"x = '\xff\xfe\xfa'\n", "undecodable"),
    (b"# big\n" + b"x = 1\n" * 1000, "too large"),
])
def test_unanalysable_content_retracts_the_files_questions_with_a_reason(pipe, content, reason):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    pipe.change(root, "m.py", UNDOCUMENTED.encode())
    pipe.wait_envelopes(root, 1)
    pipe.change(root, "m.py", content)
    _, resolved = pipe.wait_envelopes(root, 2)
    assert resolved["signal"] == names.CHANNEL_RESOLVED
    assert reason in pipe.r.hget(names.SKIPPED, f"knowledge:{root}:m.py").decode()


def test_a_syntax_error_is_recorded_and_keeps_the_previous_questions(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    pipe.change(root, "s.py", UNDOCUMENTED.encode())
    pipe.wait_envelopes(root, 1)
    pipe.change(root, "s.py", b"def broken(:\n")
    key = f"knowledge:{root}:s.py"
    wait_for(lambda: pipe.r.hexists(names.SYNTAX_ERRORS, key), 20, message="the syntax error")
    wait_for(pipe.drained, 20, message="the queue drained")
    assert len(pipe.envelopes(root)) == 1 and pipe.r.hlen(names.LEDGER) >= 1
    pipe.change(root, "s.py", DOCUMENTED.encode())
    pipe.wait_envelopes(root, 2)
    assert not pipe.r.hexists(names.SYNTAX_ERRORS, key)


@pytest.mark.parametrize("source", [
    b"x = " + b"(" * 3000 + b"1" + b")" * 3000 + b"\n",  # the parser's own nesting limit
    b"x = " + b"1 + " * 20000 + b"1\n",  # parses, then recursion in tree walkers
    b"x = " + b"[" * 150 + b"]" * 150 + b"\n",
])
def test_source_nested_deep_enough_to_break_the_parser_does_not_crash_the_worker(pipe, source):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    pipe.change(root, "deep.py", source)
    pipe.change(root, "after.py", UNDOCUMENTED.encode())
    (env,) = pipe.wait_envelopes(root, 1)
    assert env["facts"]["metadata"]["paths"] == ["after.py"]
    assert pipe.worker.popen.poll() is None


def test_a_deleted_file_resolves_its_questions(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    pipe.change(root, "gone.py", UNDOCUMENTED.encode())
    pipe.wait_envelopes(root, 1)
    pipe.change(root, "gone.py", None)
    _, resolved = pipe.wait_envelopes(root, 2)
    assert resolved["signal"] == names.CHANNEL_RESOLVED
    assert pipe.r.hget(names.facts(names.KNOWLEDGE, root), "gone.py") is None


def test_a_change_whose_content_is_gone_is_superseded_not_analysed(pipe):
    root = pipe.new_root()
    # The producer stored no blob (or it expired) and this host has no copy of the tree:
    # a newer task is on its way for that file, so this one is skipped without harm.
    missing = Change(root, "vanished.py", "modified", "b" * 64, ts=1.0)
    pipe.send_raw(missing.to_json())
    wait_for(lambda: "changed again before analysis" in pipe.worker.output(), 20,
             message="the superseded log line")
    assert pipe.r.hget(names.facts(names.KNOWLEDGE, root), "vanished.py") is None


def test_an_expired_blob_falls_back_to_the_same_bytes_on_this_hosts_disk(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", DOC_POLICY.encode())
    info = json.loads(pipe.r.hget(names.ROOTS, root))
    pipe.r.hset(names.ROOTS, root, json.dumps({**info, "host": socket.gethostname()}))
    (Path(info["path"]) / "local.py").write_bytes(UNDOCUMENTED.encode())
    sha = hashlib.sha256(UNDOCUMENTED.encode()).hexdigest()
    pipe.send_raw(Change(root, "local.py", "modified", sha, ts=1.0).to_json())  # no blob
    (env,) = pipe.wait_envelopes(root, 1)
    assert env["facts"]["metadata"]["paths"] == ["local.py"]
