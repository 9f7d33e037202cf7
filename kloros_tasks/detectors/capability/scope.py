"""What CapabilityDiscovery judges at all: deployed files, the folders an import may
come from, adapters named after what they use, and variables whoever starts a program
provides.  Pure functions of paths and names."""

from __future__ import annotations

from pathlib import PurePosixPath

from kloros_tasks.detectors.capability.paths import NOT_DEPLOYED, spelling

# Variables that whoever starts the program provides, though a service environment may
# not: the login shell, bash completion, sudo, Windows, virtual environments.
PROVIDED_VARS = frozenset({
    "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TERM", "PATH", "LANG", "TMPDIR", "DISPLAY",
    "COMP_WORDS", "COMP_CWORD", "COMP_LINE", "COMP_POINT", "SUDO_USER", "SUDO_UID",
    "SSH_AUTH_SOCK", "XDG_RUNTIME_DIR", "VIRTUAL_ENV", "PYTHONPATH", "CONDA_PREFIX",
    "USERPROFILE", "APPDATA", "LOCALAPPDATA", "PROGRAMFILES", "SYSTEMROOT", "WINDIR",
    "COMSPEC", "USERNAME", "HOMEDRIVE", "HOMEPATH",
})
# Set by the CI runner that executes the code (a GitHub Action's own script).
PROVIDED_PREFIXES = ("GITHUB_", "RUNNER_")


def is_deployed_path(path: str) -> bool:
    """False for files under a folder of tests, documentation, examples, benchmarks or
    maintainers' scripts (``t/`` is celery's tests, ``docs/conf.py`` a Sphinx build)."""
    return not any(part.lower() in NOT_DEPLOYED for part in PurePosixPath(path).parts[:-1])


def import_folders(path: str) -> list[str]:
    """The folders (other than the root) an import in ``path`` may resolve from: its
    own folder and every folder above it, nearest first."""
    parts = PurePosixPath(path).parts[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def adapts(path: str, thing: str) -> bool:
    """True when ``path`` is named after ``thing``, a module or program it uses: an
    adapter that exists only for it (``serializers/pyyaml.py`` and yaml,
    ``backends/mysql/base.py`` and MySQLdb, ``bdist_rpm.py`` and rpm), loaded only where
    it is wanted, so its absence elsewhere is no defect."""
    want = spelling(thing)
    if len(want) < 3 or not path:
        return False
    parts = [spelling(p) for p in PurePosixPath(path).with_suffix("").parts]
    return any(len(p) >= 3 and (want in p or p in want) for p in parts)


def is_provided(variable: str) -> bool:
    """True for a variable whoever starts the program sets (Windows spells ``Path``)."""
    name = variable.upper()
    return name in PROVIDED_VARS or name.startswith(PROVIDED_PREFIXES)
