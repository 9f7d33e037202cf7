"""The ``kloros-tasks`` command: parse arguments, load settings, call the right module.

Exit statuses: 0 ok, 1 findings at or above ``--fail-on`` / degraded, 2 usage or
configuration error (one line naming the problem).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path

from kloros_tasks import __version__, names
from kloros_tasks.questions import SEVERITIES
from kloros_tasks.settings import (
    Settings,
    SettingsError,
    check_concurrency,
    check_redis_url,
    from_env,
)

EPILOG_WIDTH = 88
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def _roots(args_paths: list[str], settings: Settings) -> list[Path]:
    paths = [Path(p) for p in args_paths] or list(settings.watch_roots)
    if not paths:
        raise SettingsError("no PATH given and KLOROS_WATCH_ROOTS is empty")
    roots = []
    for p in paths:
        if not p.is_dir():
            raise SettingsError(f"{p} is not a directory")
        roots.append(p.resolve())
    return roots


def cmd_scan(args, settings: Settings) -> int:
    from kloros_tasks.cli.scan import run_scan, scan_targets  # noqa: PLC0415 - light start-up

    return run_scan(settings, scan_targets(args.paths), detectors=args.detector,
                    fmt=args.format, fail_on=args.fail_on, statistics=args.statistics)


def cmd_up(args, settings: Settings) -> int:
    from kloros_tasks.cli.supervisor import AlreadyRunning  # noqa: PLC0415
    from kloros_tasks.cli.upstart import run_up  # noqa: PLC0415

    if args.redis:
        settings = settings.with_overrides(redis_url=check_redis_url("--redis", args.redis),
                                           redis_url_given=True)
    roots = _roots(args.paths or ["."], settings)
    try:
        concurrency = (check_concurrency("--concurrency", args.concurrency)
                       if args.concurrency else None)
        return run_up(settings, roots, fmt=args.format, concurrency=concurrency,
                      single_worker=not args.per_detector, flower=args.flower)
    except AlreadyRunning as exc:
        print(f"kloros-tasks: {exc}", file=sys.stderr)
        return 2


def cmd_watch(args, settings: Settings) -> int:
    from kloros_tasks.watch.producer import run_watch  # noqa: PLC0415

    return run_watch(settings, _roots(args.paths, settings), keep_snapshot=not args.no_snapshot)


SIGNALS = (*names.CHANNEL.values(), names.CHANNEL_RESOLVED)


def cmd_questions(args, settings: Settings) -> int:
    from kloros_tasks.cli.reader import run_questions  # noqa: PLC0415

    if args.signal is not None and args.signal not in SIGNALS:
        print(f"kloros-tasks: questions: unknown signal {args.signal!r}; choose from "
              f"{', '.join(SIGNALS)}", file=sys.stderr)
        return 2
    if args.count < 1:
        print("kloros-tasks: questions: --count must be at least 1", file=sys.stderr)
        return 2
    return run_questions(settings, follow=args.follow, signal=args.signal,
                         open_only=args.open, pending_only=args.pending, fmt=args.format,
                         count=args.count)


def cmd_install_units(args, settings: Settings) -> int:
    from kloros_tasks.cli.units import UnitsError, run_install_units  # noqa: PLC0415

    try:
        return run_install_units(
            settings, prefix=Path(args.prefix), user=args.user,
            venv=Path(args.venv).absolute() if args.venv else None,
            state_dir=Path(args.state_dir), single_unit=args.single_unit)
    except UnitsError as exc:
        print(f"kloros-tasks: {exc}", file=sys.stderr)
        return 2


def cmd_env(args, settings: Settings) -> int:
    """``export KLOROS_REDIS_URL=...`` for the shell; 1 with a reason when there is none."""
    import shlex  # noqa: PLC0415

    if not (settings.redis_url_given or settings.redis_url_recorded):
        print(f"kloros-tasks: no running kloros-tasks up found under {settings.state_dir} "
              "and KLOROS_REDIS_URL is unset", file=sys.stderr)
        return 1
    print(f"export KLOROS_REDIS_URL={shlex.quote(settings.redis_url)}")
    return 0


def cmd_status(args, settings: Settings) -> int:
    from kloros_tasks.cli.status import run_status  # noqa: PLC0415

    return run_status(settings, as_json=args.json)


def _stop_on_signals():
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_bridge(args, settings: Settings) -> int:
    from kloros_tasks.deliver.run import run_bridge  # noqa: PLC0415

    return run_bridge(settings, _stop_on_signals())


def cmd_chem_proxy(args, settings: Settings) -> int:
    from kloros_tasks.deliver.chemproxy import run_proxy  # noqa: PLC0415

    return run_proxy(settings.chem_xsub, settings.chem_xpub, _stop_on_signals())


DESCRIPTION = """\
kloros-tasks watches source trees and asks curiosity questions about them: broken
wiring between components, missing capabilities, hardware opportunities and
documentation gaps. Questions are published on Redis (pub/sub curiosity.* and the
stream kloros:questions) and bridged to ChemBus.

Start with one of:
  kloros-tasks up .      the whole pipeline on this machine, questions as they come
  kloros-tasks scan .    one pass over the tree, no broker (a CI gate with --fail-on)
and see kloros-tasks COMMAND --help for each command."""

# Every variable settings.py reads; a test keeps this list complete.
ENVIRONMENT = (
    ("KLOROS_REDIS_URL", "broker, pub/sub and state: redis://, rediss://, redis+socket:///path "
                         "(default: the Redis of a running up on this state dir, else "
                         "redis://127.0.0.1:6379/0)"),
    ("KLOROS_WATCH_ROOTS", ":-separated roots to watch (default: the PATH arguments)"),
    ("KLOROS_STATE_DIR", "snapshots, embedded Redis, beat state, logs (default: ~/.kloros)"),
    ("KLOROS_CHEM_XSUB", "ChemBus endpoint the bridge publishes to (KLR_UMN_XSUB, KLR_CHEM_XSUB)"),
    ("KLOROS_CHEM_XPUB", "where chem-proxy binds its subscriber side"),
    ("KLOROS_WORKER_MAX_MEMORY_MB", "per-child memory ceiling of the workers (150)"),
    ("KLOROS_WORKER_CONCURRENCY", "pool processes per worker: N, or MAX,MIN autoscaled (1)"),
    ("KLOROS_EXPLORATION_INTERVAL", "seconds between exploration scans (300)"),
    ("KLOROS_EXCLUDE", ":-separated extra glob patterns to ignore"),
    ("KLOROS_DEBOUNCE_MS", "quiet window before a changed file is enqueued (50)"),
    ("KLOROS_WATCHER_HEARTBEAT_MS", "watcher heartbeat and registration check, 100-10000 (5000)"),
    ("KLOROS_MAX_FILE_BYTES", "larger files are not analysed (1000000)"),
    ("KLOROS_DOCSTRING_THRESHOLD", "missing docstrings tolerated per module (3)"),
    ("KLOROS_TASK_TIME_LIMIT", "hard time limit of a task in seconds (60)"),
    ("KLOROS_VISIBILITY_TIMEOUT", "Redis redelivery timeout, above the time limit (300)"),
    ("KLOROS_MAX_DELIVERIES", "deliveries before a task is dead-lettered (3)"),
    ("KLOROS_PENDING_LIMIT", "changes the watcher holds while Redis is down (100000)"),
    ("KLOROS_STREAM_MAXLEN", "approximate length of the stream kloros:questions (100000)"),
    ("KLOROS_BLOB_TTL", "seconds a changed file's content waits in Redis (3600)"),
    ("KLOROS_BUDGET_<DETECTOR>", "what the bridge forwards per detector, COUNT/SECONDS"),
    ("KLOROS_EXPLORATION_RATE", "exploration questions reaching the channel, COUNT/SECONDS"),
    ("KLOROS_TARGET_PYTHON", "interpreter whose environment imports are judged against"),
    ("KLOROS_TARGET_PATH", "PATH that executables are judged against (the worker's own)"),
    ("KLOROS_TOOL_PACKAGES", ",-separated in-tree packages holding tools (tools,skills)"),
    ("KLOROS_HOSTNAME", "the host name this machine reports (the system host name)"),
    ("KLOROS_FLOWER_AUTH", "Flower's basic auth user:password (generated by up --flower)"),
    ("KLOROS_FLOWER_PORT", "Flower's port on 127.0.0.1 (5555)"),
)


def environment_epilog() -> str:
    """The environment variables, one per line, for the end of ``--help``."""
    width = max(len(name) for name, _ in ENVIRONMENT)
    lines = ["environment variables (all optional; a bad value stops with one line):"]
    for name, meaning in ENVIRONMENT:
        wrapped = textwrap.wrap(meaning, EPILOG_WIDTH - width - 4) or [""]
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines += [" " * (width + 4) + more for more in wrapped[1:]]
    lines += ["", "exit status: 0 ok, 1 findings at or above --fail-on or degraded,",
              "2 usage, configuration or connection error",
              "documentation: README.md, docs/operations.md, docs/detectors.md"]
    return "\n".join(lines)


def _sub(sub, name: str, help_text: str, description: str | None = None):
    return sub.add_parser(name, help=help_text, description=description or help_text,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="environment variables: see kloros-tasks --help")


FORMAT_HELP = "text: one question per line for people; jsonl: each line the exact envelope"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kloros-tasks", description=DESCRIPTION, epilog=environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "scan", "one-shot in-process analysis, no broker",
             "Analyse trees once, in this process, with every file detector, and print\n"
             "one question per line. A file is judged within its tree (the nearest\n"
             "ancestor holding .git, .hg, .svn, pyproject.toml or setup.cfg, else its\n"
             "directory) and only its own questions are printed.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a directory (a tree) or a file (judged within its tree)")
    p.add_argument("--detector", action="append", metavar="D",
                   help="only this file detector, repeatable: "
                        + ", ".join(names.FILE_DETECTOR_SUFFIXES))
    p.add_argument("--format", choices=("text", "jsonl", "sarif"), default="text",
                   help=FORMAT_HELP + "; sarif: one SARIF 2.1.0 log (default: text)")
    p.add_argument("--statistics", action="store_true",
                   help="print the number of questions per rule instead of the questions")
    p.add_argument("--fail-on", choices=SEVERITIES, metavar="SEVERITY",
                   help="exit 1 when a question at or above this severity is found: "
                        + ", ".join(SEVERITIES))
    p.set_defaults(func=cmd_scan)

    p = _sub(sub, "up", "the whole pipeline in the foreground",
             "Run Redis (embedded unless --redis/KLOROS_REDIS_URL), one worker consuming\n"
             "every detector queue (--per-detector: one worker per queue with beat in the\n"
             "exploration worker), beat, the watcher (and the bridge when KLOROS_CHEM_XSUB\n"
             "is set) and print questions as they are published.\n"
             "Ctrl-C stops everything.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="roots to watch (default: .)")
    p.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help=FORMAT_HELP + " (default: text)")
    p.add_argument("--concurrency", metavar="N|MAX,MIN",
                   help="pool processes per worker: N, or MAX,MIN to let Celery's autoscaler "
                        "grow the pool while tasks wait (default: KLOROS_WORKER_CONCURRENCY, "
                        "else 2,1 for the one worker of the default layout and 1 for each "
                        "worker of --per-detector)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--per-detector", action="store_true",
                        help="one worker per queue, beat in the exploration worker "
                             "(isolation; the layout of the per-queue systemd units)")
    layout.add_argument("--single-worker", action="store_true",
                        help="one worker on all queues; beat, the watcher and the bridge "
                             "threads of up (the default)")
    p.add_argument("--flower", action="store_true",
                   help="also run the Flower dashboard on 127.0.0.1 (basic auth)")
    p.set_defaults(func=cmd_up)

    p = _sub(sub, "env", "print the shell line that points other commands at up's Redis",
             "Print export KLOROS_REDIS_URL=... for the Redis a running kloros-tasks up\n"
             "uses (or KLOROS_REDIS_URL when set), for celery's own commands and redis-cli:\n"
             '  eval "$(kloros-tasks env)"; celery -A kloros_tasks.celery_app inspect ping')
    p.set_defaults(func=cmd_env)

    p = _sub(sub, "watch", "the watchdog producer alone")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="roots to watch (default: KLOROS_WATCH_ROOTS)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="neither restore nor write $KLOROS_STATE_DIR/snapshot.json")
    p.set_defaults(func=cmd_watch)

    p = _sub(sub, "bridge", "the Redis-to-ChemBus bridge alone")
    p.set_defaults(func=cmd_bridge)

    p = _sub(sub, "chem-proxy", "a ZeroMQ XSUB/XPUB proxy (KLOROS_CHEM_XSUB/XPUB)")
    p.set_defaults(func=cmd_chem_proxy)

    p = _sub(sub, "install-units", "render the systemd units into a directory")
    p.add_argument("--prefix", default="/etc/systemd/system", metavar="DIR",
                   help="where to write the units (default: %(default)s)")
    p.add_argument("--user", default="kloros", metavar="U",
                   help="the account the units run as (default: %(default)s)")
    p.add_argument("--venv", metavar="PATH",
                   help="virtualenv with kloros-tasks installed (default: the running one)")
    p.add_argument("--state-dir", default="/var/lib/kloros", metavar="DIR",
                   help="KLOROS_STATE_DIR of the units (default: %(default)s)")
    p.add_argument("--single-unit", action="store_true",
                   help="one worker on all four queues with beat embedded (small hosts)")
    p.set_defaults(func=cmd_install_units)

    p = _sub(sub, "status", "health of every component (exit 0 healthy, 1 degraded, "
                            "2 unreachable)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object (its shape: docs/operations.md)")
    p.set_defaults(func=cmd_status)

    p = _sub(sub, "questions", "read published questions back")
    p.add_argument("--follow", action="store_true", help="keep printing new ones")
    p.add_argument("--signal", metavar="S",
                   help="only this signal (channel): " + ", ".join(SIGNALS))
    p.add_argument("--open", action="store_true", help="the currently open questions")
    p.add_argument("--pending", action="store_true",
                   help="questions waiting in the bridge's budget backlog, in sending order")
    p.add_argument("--count", type=int, default=100, metavar="N",
                   help="how many of the most recent stream entries to read (default: 100)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help=FORMAT_HELP + " (default: text)")
    p.set_defaults(func=cmd_questions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        settings = from_env()
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"kloros-tasks: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
