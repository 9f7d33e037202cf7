"""systemd units for one installation: render the templates in ``systemd/`` and write them.

The committed files in ``systemd/`` are templates whose ``@NAME@`` fields (virtualenv,
user, state directory, memory ceiling, stop timeout, Flower port, target members) are
filled in here.  ``kloros-tasks install-units`` writes the rendered units into a
directory and prints the ``systemctl`` commands to run; it never runs systemctl itself,
so rendering into a scratch directory (as the tests do) touches nothing on the host.

Two layouts share the target ``kloros-curiosity.target``:

* per queue (the default): one worker unit per detector queue, plus beat, the watcher
  and the bridge, each in its own cgroup with its own memory limit;
* single unit (``--single-unit``, small hosts): ``kloros-curiosity-all.service`` runs one
  worker on all four queues with beat embedded (``-B``), plus the watcher and the bridge.

``kloros-flower.service`` is rendered in both layouts and enabled separately.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kloros_tasks import names
from kloros_tasks.cli.supervisor import pool_argv
from kloros_tasks.settings import Settings

DEFAULT_PREFIX = Path("/etc/systemd/system")
DEFAULT_USER = "kloros"
DEFAULT_STATE_DIR = Path("/var/lib/kloros")
DEFAULT_FLOWER_PORT = 5555
ENV_FILE = Path("/etc/kloros/kloros.env")
ENV_EXAMPLE = "kloros.env.example"
# Where systemd creates StateDirectory= entries for system units.
STATE_DIRECTORY_ROOT = Path("/var/lib")
# Seconds a worker gets beyond the hard task time limit to finish its task and stop.
STOP_MARGIN = 30

TARGET = "kloros-curiosity.target"
DETECTOR_UNITS = {
    names.INTEGRATION: "kloros-integration-monitor.service",
    names.CAPABILITY: "kloros-capability-discovery.service",
    names.KNOWLEDGE: "kloros-knowledge-discovery.service",
    names.EXPLORATION: "kloros-exploration-scanner.service",
}
BEAT_UNIT = "kloros-beat.service"
WATCHER_UNIT = "kloros-watcher.service"
BRIDGE_UNIT = "kloros-chembus-bridge.service"
FLOWER_UNIT = "kloros-flower.service"
ALL_UNIT = "kloros-curiosity-all.service"

# What the target enables (its Also=) in each layout.  Flower is left out on purpose:
# it refuses to start until KLOROS_FLOWER_AUTH is set.
PER_QUEUE_MEMBERS = (*DETECTOR_UNITS.values(), BEAT_UNIT, WATCHER_UNIT, BRIDGE_UNIT)
SINGLE_UNIT_MEMBERS = (ALL_UNIT, WATCHER_UNIT, BRIDGE_UNIT)

# Directories systemd reads system units from, in the order it reads them.
UNIT_SEARCH_PATH = tuple(Path(p) for p in (
    "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system", "/lib/systemd/system"))

PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
# In a unit file '%' starts a specifier, '$' a variable, and whitespace, quotes or
# backslashes change how ExecStart= is split into words: a path holding one of them
# would not reach the program intact.
UNSAFE_IN_UNIT = re.compile(r"[\s%$\"'\\;]")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class UnitsError(ValueError):
    """The units cannot be rendered or written; the message is one line naming why."""


@dataclass(frozen=True)
class UnitOptions:
    """Everything a rendering depends on; build it with :func:`options_for`."""

    venv: Path
    user: str = DEFAULT_USER
    state_dir: Path = DEFAULT_STATE_DIR
    single_unit: bool = False
    max_memory_kib: int = 150 * 1024
    pool: str = "--concurrency 1"  # the workers' pool options (supervisor.pool_argv)
    stop_timeout: int = 60 + STOP_MARGIN
    flower_port: int = DEFAULT_FLOWER_PORT


def options_for(settings: Settings, *, venv: Path | None = None, user: str = DEFAULT_USER,
                state_dir: Path = DEFAULT_STATE_DIR, single_unit: bool = False) -> UnitOptions:
    """Options for rendering with ``settings`` (memory ceiling, time limit, Flower port).

    ``venv`` defaults to the virtualenv running this code (``sys.prefix``).
    """
    return UnitOptions(
        venv=Path(venv) if venv is not None else Path(sys.prefix),
        user=user,
        state_dir=Path(state_dir),
        single_unit=single_unit,
        max_memory_kib=settings.worker_max_memory_kib,
        pool=" ".join(pool_argv(settings.pool_of())),
        stop_timeout=settings.task_time_limit + STOP_MARGIN,
        flower_port=settings.flower_port,
    )


def layout_units(single_unit: bool) -> tuple[str, ...]:
    """Every unit file one layout installs, the target last."""
    members = SINGLE_UNIT_MEMBERS if single_unit else PER_QUEUE_MEMBERS
    return (*members, FLOWER_UNIT, TARGET)


def template_dir() -> Path:
    """The directory holding the templates: the source tree's ``systemd/``, else the
    copy installed under ``<prefix>/share/kloros-tasks/systemd``."""
    candidates = (Path(__file__).resolve().parents[2] / "systemd",
                  Path(sys.prefix) / "share" / "kloros-tasks" / "systemd")
    for candidate in candidates:
        if (candidate / TARGET).is_file():
            return candidate
    raise UnitsError("unit templates not found in " + " or ".join(map(str, candidates)))


def check_options(options: UnitOptions) -> None:
    """Raise UnitsError unless the options describe a usable installation."""
    if not USER_NAME.fullmatch(options.user):
        raise UnitsError(f"--user {options.user!r} is not a valid system user name")
    for label, path in (("--venv", options.venv), ("--state-dir", options.state_dir)):
        if not path.is_absolute():
            raise UnitsError(f"{label} {path} must be an absolute path")
        if UNSAFE_IN_UNIT.search(str(path)):
            raise UnitsError(f"{label} {path} holds a character systemd would rewrite"
                             " (whitespace, quote, backslash, ';', '%' or '$')")
    for program in ("celery", "kloros-tasks"):
        executable = options.venv / "bin" / program
        if not os.access(executable, os.X_OK):
            raise UnitsError(f"--venv {options.venv}: {executable} is missing or not"
                             " executable (is kloros-tasks installed in it?)")


def state_directory(state_dir: Path) -> str:
    """The ``StateDirectory=`` value: the path under /var/lib, which systemd then creates
    and hands to the unit's user; empty (no state directory) anywhere else."""
    try:
        relative = state_dir.relative_to(STATE_DIRECTORY_ROOT)
    except ValueError:
        return ""
    return "" if str(relative) == "." else str(relative)


def placeholder_values(options: UnitOptions) -> dict[str, str]:
    """The text each ``@NAME@`` field of the templates is replaced with."""
    members = SINGLE_UNIT_MEMBERS if options.single_unit else PER_QUEUE_MEMBERS
    return {
        "VENV": str(options.venv),
        "USER": options.user,
        "STATE_DIR": str(options.state_dir),
        "STATE_DIRECTORY": state_directory(options.state_dir),
        "MAX_MEMORY_KIB": str(options.max_memory_kib),
        "POOL": options.pool,
        "STOP_TIMEOUT": str(options.stop_timeout),
        "FLOWER_PORT": str(options.flower_port),
        "TARGET_UNITS": " ".join(members),
        "LAYOUT": ("single-unit layout: one worker on all queues with beat" if options.single_unit
                   else "per-queue layout: one worker per detector queue"),
    }


def render(text: str, values: dict[str, str], name: str = "template") -> str:
    """``text`` with every ``@NAME@`` replaced; UnitsError for a field with no value."""
    def substitute(match: re.Match) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise UnitsError(f"{name}: unknown field {match.group(0)}") from None

    return PLACEHOLDER.sub(substitute, text)


def render_units(options: UnitOptions, templates: Path | None = None) -> dict[str, str]:
    """{unit file name: rendered text} for the layout ``options`` selects."""
    check_options(options)
    templates = templates or template_dir()
    values = placeholder_values(options)
    rendered = {}
    for name in layout_units(options.single_unit):
        path = templates / name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UnitsError(f"cannot read template {path}: {exc.strerror}") from None
        rendered[name] = render(text, values, name)
    return rendered


def _write_atomically(path: Path, text: str) -> None:
    # A half-written unit read by a concurrent daemon-reload would be worse than none.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def install_units(options: UnitOptions, prefix: Path = DEFAULT_PREFIX,
                  templates: Path | None = None) -> list[Path]:
    """Render the layout's units and write them into ``prefix`` (created if missing);
    return the paths written.  Runs no systemctl command."""
    rendered = render_units(options, templates)
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in rendered.items():
            _write_atomically(prefix / name, text)
            written.append(prefix / name)
    except OSError as exc:
        raise UnitsError(f"cannot write units into {prefix}: {exc.strerror}") from None
    return written


def stale_units(options: UnitOptions, prefix: Path) -> list[str]:
    """Units of the other layout already present in ``prefix``."""
    other = set(layout_units(not options.single_unit)) - set(layout_units(options.single_unit))
    return sorted(name for name in other if (prefix / name).exists())


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _ids(user: str) -> tuple[int, set[int]] | None:
    """(uid, gids) of ``user``, or None when the account does not exist yet."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return entry.pw_uid, gids


def _allows(info: os.stat_result, ids: tuple[int, set[int]] | None, bits: int) -> bool:
    """Whether the mode ``info`` grants ``bits`` (a combination of R_OK/X_OK) to ``ids``;
    an account not created yet is judged as "other" (it will be in no group but its own)."""
    if ids is not None and ids[0] == 0:
        return True
    if ids is not None and info.st_uid == ids[0]:
        shift = 6
    elif ids is not None and info.st_gid in ids[1]:
        shift = 3
    else:
        shift = 0
    return (info.st_mode >> shift) & bits == bits


def unreachable(user: str, programs: Iterable[Path]) -> list[str]:
    """Why ``user`` could not run each of ``programs`` (each followed to its real path):
    a directory on the way it cannot enter, or the file itself.  Empty when all is well;
    systemd reports such a unit only as "status=203/EXEC"."""
    ids, problems = _ids(user), []
    for program in programs:
        real = Path(os.path.realpath(program))
        try:
            problem = _blocked(user, ids, real)
        except OSError as exc:
            problem = f"{real}: {exc.strerror}"
        if problem:
            problems.append(problem)
    return problems


def _blocked(user: str, ids: tuple[int, set[int]] | None, real: Path) -> str | None:
    for directory in reversed(real.parents):
        info = os.stat(directory)
        if not _allows(info, ids, os.X_OK):
            return f"{real}: {user} cannot enter {directory} (mode {stat.filemode(info.st_mode)})"
    if not _allows(os.stat(real), ids, os.R_OK | os.X_OK):
        return f"{real}: {user} cannot read and run it"
    return None


def next_steps(options: UnitOptions, prefix: Path, templates: Path) -> list[str]:
    """The commands an operator runs after ``install_units``, one per line."""
    lines = []
    bin_dir = options.venv / "bin"
    blocked = unreachable(options.user, [bin_dir / "celery", bin_dir / "kloros-tasks",
                                         bin_dir / "python"])
    if blocked:
        lines.append(f"Warning: the units would fail to start (status=203/EXEC): "
                     f"{'; '.join(blocked)}. Build the virtualenv from a Python the account "
                     f"can run (e.g. /usr/bin/python3 -m venv /opt/kloros/venv) in a "
                     f"directory it can enter.")
    lines.append("Next, as root:")
    if prefix.resolve() not in UNIT_SEARCH_PATH:
        lines.append(f"  cp {prefix}/kloros-* {DEFAULT_PREFIX}/"
                     f"   # systemd does not read units from {prefix}")
    stale = stale_units(options, prefix)
    if stale:
        lines.append(f"  systemctl disable --now {' '.join(stale)}"
                     f" && rm {' '.join(str(prefix / n) for n in stale)}"
                     "   # left over from the other layout")
    if not _user_exists(options.user):
        lines.append(f"  useradd --system --no-create-home --home-dir {options.state_dir}"
                     f" --shell /usr/sbin/nologin {options.user}")
    if not state_directory(options.state_dir):
        lines.append(f"  install -d -o {options.user} -m 0750 {options.state_dir}")
    lines += [
        f"  test -e {ENV_FILE} || install -D -m 0640 -g {options.user}"
        f" {templates / ENV_EXAMPLE} {ENV_FILE}",
        f"  # set KLOROS_WATCH_ROOTS (and KLOROS_REDIS_URL, KLOROS_CHEM_XSUB) in {ENV_FILE}",
        f"  systemctl daemon-reload && systemctl enable --now {TARGET}",
        f"Optional dashboard, once KLOROS_FLOWER_AUTH is set: "
        f"systemctl enable --now {FLOWER_UNIT}",
    ]
    return lines


def run_install_units(settings: Settings, *, prefix: Path = DEFAULT_PREFIX,
                      user: str = DEFAULT_USER, venv: Path | None = None,
                      state_dir: Path = DEFAULT_STATE_DIR, single_unit: bool = False,
                      out: TextIO | None = None) -> int:
    """``kloros-tasks install-units``: write the units, print what was written and the
    commands to run next; 0 on success.  Raises UnitsError (one line) on failure."""
    out = out or sys.stdout
    options = options_for(settings, venv=venv, user=user, state_dir=state_dir,
                          single_unit=single_unit)
    templates = template_dir()
    written = install_units(options, prefix, templates)
    _print_lines((f"wrote {path}" for path in written), out)
    _print_lines(next_steps(options, prefix, templates), out)
    return 0


def _print_lines(lines: Iterable[str], out: TextIO) -> None:
    for line in lines:
        print(line, file=out)
