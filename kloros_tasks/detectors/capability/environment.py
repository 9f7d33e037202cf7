"""Probe the target environment that CapabilityDiscovery judges code against.

The edge between the pure detector and the machine: it runs the target interpreter
in a subprocess (so nothing probed is ever imported here, and the probe cannot
disturb the worker), scans PATH, and collects the names of the service's
environment variables.  Module lookups use only import-machinery listings and
package metadata; the probed modules are never imported, even in the subprocess.

A probe costs a subprocess, so callers cache the result (``cached_environment``)
and re-probe only when the cheap ``fingerprint`` says the environment changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace

from kloros_tasks.detectors.capability.target import Environment

PROBE_TIMEOUT = 20.0

# Runs inside the target interpreter.  Kept to Python 3.8 syntax and stdlib so an
# older target can be probed too; fallbacks cover what 3.8/3.9 lack.
PROBE_SCRIPT = r"""
import importlib.metadata as md, json, os, pkgutil, site, sys, sysconfig
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]  # the probe's working directory is not the target's
def stdlib():
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return sorted(names)
    paths = sysconfig.get_paths()
    where = [paths["stdlib"], os.path.join(paths["stdlib"], "lib-dynload")]
    return sorted({m.name for m in pkgutil.iter_modules(where)} | set(sys.builtin_module_names))
def distributions():
    if hasattr(md, "packages_distributions"):
        return {k: sorted(set(v)) for k, v in md.packages_distributions().items()}
    out = {}
    for dist in md.distributions():
        tops = (dist.read_text("top_level.txt") or "").split()
        tops += [f.parts[0].split(".")[0] for f in (dist.files or ()) if len(f.parts) > 1
                 and not f.parts[0].endswith((".dist-info", ".egg-info", "__pycache__", ".."))]
        for top in set(tops):
            out.setdefault(top, set()).add(dist.metadata["Name"])
    return {k: sorted(v) for k, v in out.items()}
def unimported():
    # Used without an import: entry points (plugins, console scripts), or data only
    # (every Python file an __init__.py, as in tzdata).
    out = set()
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        try:
            if len(dist.entry_points):
                out.add(name)
                continue
        except Exception:
            pass
        code = [str(f) for f in (dist.files or ()) if str(f).endswith((".py", ".so", ".pyd"))
                and not str(f).startswith("..")]
        if dist.files and all(c.endswith("__init__.py") for c in code):
            out.add(name)
    return sorted(out)
def site_dirs():
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    if not dirs:
        dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]
modules = {m.name for m in pkgutil.iter_modules()} | set(sys.builtin_module_names)
print(json.dumps({
    "python": sys.executable,
    "modules": sorted(modules),
    "stdlib": stdlib(),
    "distributions": distributions(),
    "installed": sorted({d.metadata["Name"] for d in md.distributions() if d.metadata["Name"]}),
    "site_dirs": site_dirs(),
    "unimported": unimported(),
}))
"""


class ProbeError(RuntimeError):
    """The target interpreter could not be probed; the message says which and why."""


def run_probe(python: str, env: Mapping[str, str], timeout: float = PROBE_TIMEOUT) -> dict:
    """Run PROBE_SCRIPT in ``python`` and return its JSON; raise ProbeError on failure."""
    try:
        done = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True,
                              env=dict(env), timeout=timeout, cwd="/", check=False)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"probing {python} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ProbeError(f"cannot run target interpreter {python}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"probing {python} failed with exit status {done.returncode}: {tail}")
    try:
        found = json.loads(done.stdout)
    except ValueError as exc:
        raise ProbeError(f"probing {python} printed no JSON: {exc}") from exc
    if not isinstance(found, dict):
        raise ProbeError(f"probing {python} printed {type(found).__name__}, not an object")
    return found


def executables(path: str) -> frozenset[str]:
    """Basenames of every executable regular file in the directories of ``path``."""
    found: set[str] = set()
    for folder in path.split(os.pathsep):
        if not folder:
            continue  # an empty entry means "the current directory", which is no fixed place
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_file() and os.access(entry.path, os.X_OK):
                            found.add(entry.name)
                    except OSError:
                        continue  # a dangling link or an unreadable entry
        except OSError:
            continue  # PATH names a directory that is missing or unreadable
    return frozenset(found)


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def fingerprint(python: str, site_dirs: tuple[str, ...] | list[str], path: str,
                env: Mapping[str, str]) -> str:
    """A digest that changes when the target environment changes: the interpreter,
    the mtimes of its site directories (installing or removing a package changes
    them), PATH and the mtimes of its directories, and the set of variable names."""
    real = os.path.realpath(python)
    material = [
        real, _mtime_ns(real),
        [(d, _mtime_ns(d)) for d in site_dirs],
        path, [(d, _mtime_ns(d)) for d in path.split(os.pathsep) if d],
        env.get("PYTHONPATH", ""), sorted(env),
    ]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def _resolve(python: str | None, path: str | None,
             env: Mapping[str, str] | None) -> tuple[str, str, Mapping[str, str]]:
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath) if path is None else path
    python = python or sys.executable
    # The probe runs in "/", so a relative interpreter path is made absolute here and
    # a bare name ("python3") is looked up on the service's PATH, as a shell would.
    if os.sep in python:
        python = os.path.abspath(python)
    else:
        python = shutil.which(python, path=env.get("PATH", os.defpath)) or python
    return python, path, env


def judged_path(python: str, path: str) -> str:
    """The PATH a target's programs are judged against: ``path`` and the interpreter's
    own folder, where a virtual environment keeps its distributions' commands."""
    return os.pathsep.join(dict.fromkeys([*path.split(os.pathsep), os.path.dirname(python)]))


def probe_environment(python: str | None = None, path: str | None = None,
                      env: Mapping[str, str] | None = None,
                      timeout: float = PROBE_TIMEOUT, path_label: str = "") -> Environment:
    """Probe the target: importable modules, stdlib, distributions, executables on
    ``path`` (default: the PATH of ``env``) and the interpreter's own folder, and the
    names set in ``env`` (default: this process's environment).  ``python`` defaults
    to this interpreter; ``path_label`` says, in questions, whose PATH that is.
    Raises ProbeError when the interpreter cannot be run or answers nonsense."""
    python, path, env = _resolve(python, path, env)
    found = run_probe(python, env, timeout)
    try:
        return Environment(
            modules=found["modules"], stdlib=found["stdlib"],
            distributions=found["distributions"], installed=found["installed"],
            executables=executables(judged_path(python, path)), env_vars=frozenset(env),
            unimported=found.get("unimported", ()), path_label=path_label, python=python,
            site_dirs=tuple(found["site_dirs"]),
            fingerprint=fingerprint(python, found["site_dirs"], judged_path(python, path), env),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProbeError(f"probing {python} gave an unexpected answer: {exc!r}") from exc


def is_fresh(environment: Environment, path: str | None = None,
             env: Mapping[str, str] | None = None) -> bool:
    """True when ``environment`` still describes its interpreter, PATH and variables."""
    python, path, env = _resolve(environment.python, path, env)
    return environment.fingerprint == fingerprint(python, environment.site_dirs,
                                                  judged_path(python, path), env)


def cached_environment(client, key: str, python: str | None = None, path: str | None = None,
                       env: Mapping[str, str] | None = None,
                       path_label: str = "") -> tuple[Environment, bool]:
    """The Environment cached in Redis under ``key``, probed again when the cache is
    missing, unreadable, of another interpreter, or stale.  Returns (environment,
    changed): ``changed`` is True when what the environment provides differs from
    what was cached (or nothing was), so the caller knows every file's questions may
    have changed; a new fingerprint over the same contents is not a change."""
    python, path, env = _resolve(python, path, env)
    raw = client.get(key)
    cached = None
    if raw is not None:
        try:
            cached = Environment.from_json(json.loads(raw))
        except ValueError:
            cached = None  # unreadable: probe again and overwrite
        if (cached is not None and cached.python == python and cached.path_label == path_label
                and is_fresh(cached, path, env)):
            return cached, False
    fresh = probe_environment(python, path, env, path_label=path_label)
    client.set(key, json.dumps(fresh.to_json(), separators=(",", ":")))
    changed = cached is None or replace(cached, fingerprint="") != replace(fresh, fingerprint="")
    return fresh, changed

