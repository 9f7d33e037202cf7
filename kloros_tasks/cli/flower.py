"""Flower for ``kloros-tasks up --flower``, started so that it shows the workers at once.

Flower asks the workers what they are (``inspect stats``, ``active_queues`` ...) once,
when it starts, and its dashboard lists the workers it has heard from over events.
Started beside the workers it asks too early ("Inspect method stats failed"), keeps
``/api/workers`` empty until someone presses refresh, and waits for the next worker
heartbeat (every 10 s) before the dashboard lists anyone.  So this wrapper first waits,
in a child process, until the expected workers answer a ping, then runs Flower in this
process, and once Flower's HTTP port answers it asks the workers for an immediate
heartbeat.

Run as ``python -m kloros_tasks.cli.flower NODE,... -- FLOWER-ARGS...``, where NODE is
the part of a worker's node name before ``@``.
"""

from __future__ import annotations

import logging
import runpy
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("kloros_tasks.flower")
WORKERS_WAIT = 90.0  # seconds to wait for the workers before starting Flower anyway
PING_TIMEOUT = 1.0
HEARTBEAT_ROUNDS = 3  # heartbeat requests, a second apart, once Flower listens
PORT_WAIT = 60.0
WAIT_ONLY = "--wait-only"


def missing_nodes(expected: set[str], replies: list[dict] | None) -> set[str]:
    """Which expected node names (before ``@``) did not answer a ping."""
    answered = {node.split("@", 1)[0] for reply in replies or [] for node in reply}
    return expected - answered


def wait_for_workers(app, expected: set[str], *, deadline: float = WORKERS_WAIT,
                     clock: Callable[[], float] = time.monotonic) -> set[str]:
    """Ping until every expected worker answered or ``deadline`` passed; the missing."""
    end = clock() + deadline
    missing = set(expected)
    while missing and clock() < end:
        try:
            missing = missing_nodes(expected, app.control.ping(timeout=PING_TIMEOUT))
        except Exception as exc:  # noqa: BLE001 - the broker may still be starting
            log.info("waiting for the workers: %s", exc)
            time.sleep(PING_TIMEOUT)
    return missing


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def heartbeat_when_listening(app, host: str, port: int) -> None:
    """Once Flower accepts connections, ask every worker for a heartbeat now, so the
    dashboard lists them without waiting for their next periodic one."""
    end = time.monotonic() + PORT_WAIT
    while not port_open(host, port):
        if time.monotonic() > end:
            return
        time.sleep(0.2)
    for _ in range(HEARTBEAT_ROUNDS):  # Flower's event receiver connects on its own thread
        try:
            app.control.heartbeat()
        except Exception as exc:  # noqa: BLE001 - best effort: periodic heartbeats follow
            log.warning("could not request worker heartbeats: %s", exc)
        time.sleep(1.0)


def _option(args: list[str], name: str, default: str) -> str:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str]) -> None:
    """Wait for the workers, then become ``celery -A kloros_tasks.celery_app flower``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kloros_tasks.celery_app import create_app  # noqa: PLC0415 - after argument parsing

    if argv[:1] == [WAIT_ONLY]:
        expected = {n for n in ",".join(argv[1:]).split(",") if n}
        missing = wait_for_workers(create_app(), expected)
        if missing:
            log.warning("starting Flower without an answer from %s", ", ".join(sorted(missing)))
        else:
            log.info("workers %s answered; starting Flower", ", ".join(sorted(expected)))
        return
    split = argv.index("--") if "--" in argv else len(argv)
    # The ping runs in a process of its own: after a broadcast with replies from this
    # process, the first inspection Flower makes here ("stats") gets none (kombu 5.7).
    subprocess.run([sys.executable, "-m", __spec__.name, WAIT_ONLY, *argv[:split]],
                   check=False)
    args = argv[split + 1:]
    host = _option(args, "address", "127.0.0.1")
    port = int(_option(args, "port", "5555"))
    threading.Thread(target=heartbeat_when_listening, args=(create_app(), host, port),
                     name="flower-heartbeat", daemon=True).start()
    sys.argv = ["celery", "-A", "kloros_tasks.celery_app", "flower", *args]
    runpy.run_module("celery", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
