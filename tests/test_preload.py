"""A worker parent imports what its queues' tasks use before it forks its pool, and
only that: a knowledge worker never loads the integration rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kloros_tasks import names
from kloros_tasks.work.registry import TASK_MODULES

LOADED = """
import sys
from kloros_tasks.work.registry import TASK_MODULES, preload
preload(sys.argv[1:])
print(" ".join(m for ms in TASK_MODULES.values() for m in ms if m in sys.modules))
"""


def loaded_after_preload(*queues: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", LOADED, *queues], capture_output=True,
                         text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("queue", names.QUEUES)
def test_preload_imports_the_modules_of_the_queues_consumed_and_no_others(queue):
    assert loaded_after_preload(queue, f"{queue}@host.dq2") == set(TASK_MODULES[queue])


def test_a_worker_on_every_queue_preloads_every_detector():
    assert loaded_after_preload(*names.QUEUES) == {
        m for modules in TASK_MODULES.values() for m in modules}
