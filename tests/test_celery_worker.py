"""``up``'s worker command (cli/celery_worker.py): ``celery -A APP worker`` without the
other subcommands and their plugins.  ``test_up`` runs it as ``up``'s worker."""

from __future__ import annotations

import subprocess
import sys

from kloros_tasks.cli.supervisor import CELERY

UNUSED = ("flower", "click_repl", "prompt_toolkit", "celery.bin.celery")


def test_the_worker_command_imports_no_other_subcommand_nor_plugin():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, kloros_tasks.cli.celery_worker, "
         f"kloros_tasks.celery_app; print([m for m in {UNUSED!r} if m in sys.modules])"],
        capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"
    # The celery command itself, for comparison, loads Flower as a plugin.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, celery.bin.celery; print('flower' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "True"


def test_the_worker_command_takes_the_celery_worker_options_and_refuses_the_rest():
    shown = subprocess.run([*CELERY, "worker", "--help"], capture_output=True, text=True,
                           timeout=60, check=True)
    assert "Usage: celery worker" in shown.stdout
    for option in ("--queues", "--autoscale", "--max-memory-per-child", "--without-gossip"):
        assert option in shown.stdout
    refused = subprocess.run([*CELERY, "flower"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "No such command" in refused.stderr
    missing = subprocess.run([*CELERY[:3], "-A", "no_such_module_here", "worker"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no_such_module_here" in missing.stderr
