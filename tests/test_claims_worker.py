"""One real prefork worker on the three file detectors' queues, as the default layout
runs it, with one pool process and with two: the first task of each of a
reconciliation's batches applies its Python files for the three detectors (the others
hand their batch back while it does, work/claims.py), and every detector indexes and
asks exactly what single-file tasks (which claim nothing) index and ask for the same
tree."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from procs import start_worker, wait_for
from test_worker import DOC_POLICY, DOCUMENTED, UNDOCUMENTED

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import Settings
from kloros_tasks.state.index import facts_json
from kloros_tasks.watch.send import CelerySender
from kloros_tasks.watch.sync import STORM_FILES, Root, Syncer
from kloros_tasks.watch.tree import read_file
from kloros_tasks.work import engine

pytestmark = pytest.mark.integration
DETECTORS = (names.CAPABILITY, names.INTEGRATION, names.KNOWLEDGE)


def write_tree(tree: Path) -> None:
    """Modules that import each other (some names that do not exist), half of them
    undocumented, an optional dependency that is not installed, and notes."""
    tree.mkdir()
    (tree / "pyproject.toml").write_text(DOC_POLICY)
    (tree / "pkg").mkdir()
    (tree / "pkg" / "__init__.py").write_text('"""The package."""\n')
    for i in range(40):
        body = UNDOCUMENTED if i % 2 else DOCUMENTED
        imports = f"from pkg.m{(i + 1) % 40:02d} import f1\n"
        if i % 5 == 0:
            imports += f"from pkg.m{i:02d}x import gone\n"
        if i % 7 == 0:
            imports += "import not_installed_anywhere_kl\n"
        (tree / "pkg" / f"m{i:02d}.py").write_text(body + imports)
    (tree / "docs").mkdir()
    for i in range(10):
        (tree / "docs" / f"n{i}.md").write_text(f"# Note {i}\n\nSee `pkg.m{i:02d}.f1`.\n")


@pytest.fixture(params=[1, 2], ids=["one-process", "two-processes"])
def pipe(request):
    directory = Path(tempfile.mkdtemp(prefix="kl-shared-"))
    server = EmbeddedRedis(directory / "redis", persist=False).start()
    worker = start_worker(server.url, directory, ",".join(DETECTORS), directory / "worker.log",
                          concurrency=request.param)
    client = redis_client(server.url)
    yield server, client, worker
    worker.kill()
    client.close()
    server.stop()
    assert "Traceback" not in worker.output(), worker.output()[-4000:]
    shutil.rmtree(directory, ignore_errors=True)


def settled(client, worker, *roots: str) -> bool:
    log = worker.output()
    return not any(client.llen(d) for d in DETECTORS) and \
        log.count("received") == log.count("succeeded in") and \
        not any(client.exists(names.deferred(d, r)) for d in DETECTORS for r in roots)


def stored(client, detector: str, root: str) -> dict[str, dict]:
    out = {}
    for path, raw in client.hgetall(names.facts(detector, root)).items():
        facts = json.loads(facts_json(raw))
        facts.get("data", {}).pop(engine.STAMP, None)
        out[path.decode()] = facts
    return out


def questions(client, detector: str, root: str) -> set[tuple[str, tuple[str, ...]]]:
    out = set()
    for raw in client.hvals(names.LEDGER):
        facts = json.loads(raw)["facts"]
        meta = facts["metadata"]
        if meta["root"] == root and json.loads(raw)["signal"] == names.CHANNEL[detector]:
            out.add((meta["rule"], tuple(meta["paths"])))
    return out


def test_batches_claimed_for_every_detector_ask_what_single_file_tasks_ask(pipe, tmp_path):
    server, client, worker = pipe
    write_tree(tmp_path / "bulk")
    write_tree(tmp_path / "single")
    settings = Settings(redis_url=server.url)
    roots = [Root(name, str(tmp_path / name)) for name in ("bulk", "single")]
    for root in roots:
        client.hset(names.ROOTS, root.name, json.dumps({"path": root.path, "host": "elsewhere"}))
    sync = Syncer(settings, client, CelerySender(settings), read_file, roots)
    sync.roots = roots[:1]
    assert sync.reconcile(threading.Event())
    wait_for(lambda: settled(client, worker, "bulk"), 120, message="the reconciled tree settled")
    single = roots[1]
    rels = sorted(str(p.relative_to(single.path)) for p in Path(single.path).rglob("*")
                  if p.is_file())
    for start in range(0, len(rels), STORM_FILES - 1):
        sync.process(((single.name, rel), "file") for rel in rels[start:start + STORM_FILES - 1])
    wait_for(lambda: settled(client, worker, "bulk", "single"), 120, message="both settled")
    # The batches did share: a claimant applied their Python files for the others.
    claimed = [line for line in worker.output().splitlines()
               if "Python files of a batch of bulk for" in line]
    assert len(claimed) >= 2, worker.output()[-3000:]
    # Each batch was claimed once: no claimant found the others' share done already.
    assert not [line for line in claimed if re.search(r"too: \d+ duplicate$", line)], claimed
    for detector in DETECTORS:
        assert stored(client, detector, "bulk") == stored(client, detector, "single"), detector
        assert questions(client, detector, "bulk") == questions(client, detector, "single")
    assert questions(client, names.INTEGRATION, "bulk")
    assert questions(client, names.KNOWLEDGE, "bulk")
