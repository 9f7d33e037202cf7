"""A batch task's pool child SIGKILLed half-way through applying its batch: the batch
comes back, the files it applied are duplicates by digest (what they affect is
published from the journal entries they left, or, in a burst that defers the whole
root, by the settle that evaluates every file), and every question is published
exactly once.

The world (tree, persistent Redis, processes) is test_faults.py's.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
from procs import wait_for
from test_faults import KNOWLEDGE, ROOT, children_of, settle
from test_faults_work import linked_notes, open_ids, scan_ids

from kloros_tasks import names
from kloros_tasks.work.payload import BATCH_FILES

pytestmark = [pytest.mark.fault, pytest.mark.integration]

NOTES = 250  # three batches of the knowledge detector


def kill_mid_batch(world, worker, applied, total: int, detectors: tuple[str, ...]) -> None:
    """SIGKILL the worker's child while a batch is half applied, then let it settle.
    Writes wait while Redis is paused, so what it holds then stays true.  A batch is
    being applied when a count of applied files (``applied()``, one per index) is no
    multiple of a batch (its updates went in several transactions), or when one of
    ``detectors`` holds the root's lock while files are still to come (its updates go
    in one transaction, before or after which the child is then stopped)."""
    locks = [names.lock(detector, ROOT) for detector in detectors]

    def paused_mid_batch() -> bool:
        world.r.client_pause(30_000, all=False)
        counts = applied()
        if any(0 < n < total and n % BATCH_FILES for n in counts) or (
                world.r.exists(*locks) and any(n < total for n in counts)):
            return True
        world.r.client_unpause()
        return False

    wait_for(paused_mid_batch, 120, 0.01, message="a batch half applied")
    try:
        (child,) = children_of(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: child not in children_of(worker.popen.pid), 30,
                 message="the child gone")
    finally:
        world.r.client_unpause()
    settle(world, [worker], 180, quiet=15)


def test_a_batch_killed_half_way_publishes_every_question_exactly_once(make_world):
    world = make_world(KLOROS_MAX_DELIVERIES="5")
    worker = world.worker()
    linked_notes(world.tree, NOTES)
    facts = names.facts(KNOWLEDGE, ROOT)
    world.watcher()
    kill_mid_batch(world, worker, lambda: [world.r.hlen(facts)], NOTES, (KNOWLEDGE,))
    wait_for(world.all_analysed, 60, message="every note analysed and judged")
    received = re.findall(rf"Task {re.escape(names.TASK_ANALYZE_BATCH[KNOWLEDGE])}"
                          r"\[([0-9a-f-]+)\] received", worker.output())
    # The killed batch, delivered again (on a loaded machine a batch may also outlast
    # the test's 12 s visibility timeout and come back once more: idempotent too).
    assert max(Counter(received).values()) >= 2
    assert world.r.llen(names.DEADLETTER) == 0
    assert open_ids(world) == scan_ids(world)
    assert set(world.opened().values()) == {1}


def python_tree(tree, modules: int) -> None:
    """A package of ``modules`` modules, half undocumented under a docstring policy,
    every fifth importing a name its neighbour lacks: each file detector asks."""
    tree.joinpath("pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["D"]\n')
    package = tree / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""The package."""\n')
    for i in range(modules):
        body = ('"""A module."""\n\n\ndef f():\n    """Return 1."""\n    return 1\n'
                if i % 2 else "def f():\n    return 1\n")
        if i % 5 == 0:
            body += f"from pkg.m{(i + 1) % modules:03d} import missing_{i}\n"
        (package / f"m{i:03d}.py").write_text(body)


def test_a_claimant_killed_half_way_loses_and_repeats_nothing_for_any_detector(make_world):
    # One worker on the three file queues, as `up` runs it: the first task of each
    # batch applies its Python files for the three detectors (work/claims.py).
    world = make_world(KLOROS_MAX_DELIVERIES="5")
    detectors = (names.CAPABILITY, names.INTEGRATION, KNOWLEDGE)
    worker = world.worker(",".join(detectors))
    python_tree(world.tree, 249)
    total = 250  # the modules and the package marker
    world.watcher()

    def python_indexed() -> list[int]:
        return [sum(k.endswith(b".py") for k in world.r.hkeys(names.facts(d, ROOT)))
                for d in detectors]

    kill_mid_batch(world, worker, python_indexed, total, detectors)
    wait_for(lambda: world.idle() and python_indexed() == [total] * 3, 60,
             message="every module analysed by every detector")
    for detector in detectors:
        assert world.analysed(detector) == {**world.on_disk(".py"), **(
            {"pyproject.toml": world.on_disk(".toml")["pyproject.toml"]}
            if detector != names.INTEGRATION else {})}, detector
    assert world.r.llen(names.DEADLETTER) == 0
    claimed = [line for line in worker.output().splitlines()
               if "Python files of a batch of" in line]
    assert claimed, worker.output()[-3000:]
    assert open_ids(world) == scan_ids(world, *detectors)
    assert set(world.opened().values()) == {1}
