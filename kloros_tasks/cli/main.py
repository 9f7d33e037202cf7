"""The ``kloros-tasks`` command: parse arguments, load settings, call the right module.

Exit statuses: 0 ok, 1 findings at or above ``--fail-on`` / degraded, 2 usage or
configuration error (one line naming the problem).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kloros_tasks import __version__
from kloros_tasks.questions import SEVERITIES
from kloros_tasks.settings import Settings, SettingsError, from_env


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
    from kloros_tasks.cli.scan import run_scan  # noqa: PLC0415 - keep start-up of other commands light

    return run_scan(settings, _roots(args.paths, settings), detectors=args.detector,
                    fmt=args.format, fail_on=args.fail_on)


def cmd_up(args, settings: Settings) -> int:
    from kloros_tasks.cli.supervisor import AlreadyRunning  # noqa: PLC0415
    from kloros_tasks.cli.up import run_up  # noqa: PLC0415

    if args.redis:
        settings = settings.with_overrides(redis_url=args.redis, redis_url_given=True)
    roots = _roots(args.paths or ["."], settings)
    try:
        return run_up(settings, roots, fmt=args.format, concurrency=args.concurrency,
                      single_worker=args.single_worker, flower=args.flower)
    except AlreadyRunning as exc:
        print(f"kloros-tasks: {exc}", file=sys.stderr)
        return 2


def cmd_watch(args, settings: Settings) -> int:
    from kloros_tasks.watch.producer import run_watch  # noqa: PLC0415

    return run_watch(settings, _roots(args.paths, settings), keep_snapshot=not args.no_snapshot)


def cmd_questions(args, settings: Settings) -> int:
    from kloros_tasks.cli.reader import run_questions  # noqa: PLC0415

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kloros-tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="one-shot in-process analysis, no broker")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--detector", action="append", metavar="D",
                   help="only this file detector (repeatable)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--fail-on", choices=SEVERITIES, metavar="SEVERITY",
                   help="exit 1 when a question at or above this severity is found")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("up", help="the whole pipeline in the foreground")
    p.add_argument("paths", nargs="*", metavar="PATH", help="roots to watch (default: .)")
    p.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes per worker")
    p.add_argument("--single-worker", action="store_true",
                   help="one worker on all queues (lowest memory)")
    p.add_argument("--flower", action="store_true",
                   help="also run the Flower dashboard on 127.0.0.1 (basic auth)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("watch", help="the watchdog producer alone")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--no-snapshot", action="store_true",
                   help="neither restore nor write $KLOROS_STATE_DIR/snapshot.json "
                        "(kloros-tasks up keeps it itself)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("bridge", help="the Redis-to-ChemBus bridge alone")
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("chem-proxy", help="a ZeroMQ XSUB/XPUB proxy (KLOROS_CHEM_XSUB/XPUB)")
    p.set_defaults(func=cmd_chem_proxy)

    p = sub.add_parser("install-units", help="render the systemd units into a directory")
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

    p = sub.add_parser("status", help="health of every component (exit 0/1/2)")
    p.add_argument("--json", action="store_true", help="one stable JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("questions", help="read published questions back")
    p.add_argument("--follow", action="store_true", help="keep printing new ones")
    p.add_argument("--signal", metavar="S", help="only this signal (channel)")
    p.add_argument("--open", action="store_true", help="the currently open questions")
    p.add_argument("--pending", action="store_true",
                   help="questions waiting in the bridge's budget backlog, in sending order")
    p.add_argument("--count", type=int, default=100, help="how many recent entries")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
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


if __name__ == "__main__":
    sys.exit(main())
