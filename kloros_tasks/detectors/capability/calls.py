"""What a call means to CapabilityDiscovery: which calls run programs, and which
program a literal command names.  Pure tables and functions over ``ast`` nodes."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterable

from kloros_tasks.detectors._treecache import all_nodes, nodes_by_type

# The first argument is the program itself (a list, or a string naming it).
EXEC_PROGRAM = frozenset({
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
    "subprocess.Popen", "asyncio.create_subprocess_exec", "os.execlp", "os.execlpe",
    "os.execvp", "os.execvpe", "shutil.which",
})
# The first argument is a shell command line.
EXEC_SHELL = frozenset({
    "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
})
VERBATIM = frozenset({"asyncio.create_subprocess_exec", "shutil.which", "os.execlp",
                       "os.execlpe", "os.execvp", "os.execvpe"})
SHELL_BUILTINS = frozenset({
    ".", ":", "[", "alias", "bg", "break", "builtin", "cd", "command", "continue", "declare",
    "echo", "eval", "exec", "exit", "export", "false", "fg", "getopts", "hash", "jobs", "let",
    "local", "printf", "pwd", "read", "readonly", "return", "set", "shift", "source", "test",
    "time", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "wait",
})
PLATFORM_TESTS = ("sys.version_info", "sys.platform", "os.name", "platform.", "sys.implementation")
# Calls that raise on None: an environment read passed straight to one needs the variable.
NONE_BREAKS = frozenset({
    "int", "float", "complex", "open", "bytes.fromhex", "pathlib.Path", "pathlib.PurePath",
    "Path", "json.loads", "os.path.join", "os.path.expanduser", "os.path.abspath",
    "os.path.realpath", "os.path.isdir", "os.path.isfile", "os.listdir", "os.chdir",
})
# Calls that change where imports come from: the file's imports cannot be judged.
SYS_PATH_CHANGES = frozenset({"sys.path.insert", "sys.path.append", "sys.path.extend",
                               "site.addsitedir"})
MODULE_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# A test that skips itself when the module is missing: the import is optional.
IMPORT_OR_SKIP = frozenset({"pytest.importorskip"})
ENV_READS = frozenset({"os.getenv", "os.environ.get"})
ENV_SETS = frozenset({"os.environ.setdefault", "os.putenv"})


def literal(node: ast.AST | None) -> str | None:
    """The value of a string constant, else None."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def shell_program(command: str) -> str | None:
    """The program a shell command line starts, or None when it is a builtin or unclear."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words or words[0] in SHELL_BUILTINS or re.search(r"[$`(){};|&<>*?]", words[0]):
        return None
    return words[0]


def plain_program(name: str) -> str | None:
    """``name`` if PATH would be searched for it, else None."""
    # A path ("./run.sh", "/usr/bin/x") is not looked up on PATH, so it is not judged.
    if not name or "/" in name or re.search(r"[\s$`]", name):
        return None
    return name


def program_of(name: str, call: ast.Call) -> str | None:
    """The program that ``call`` (to the function qualified as ``name``) starts, when a
    literal names it: the first item of a list, the string itself for calls that take
    a program name, or the first word of a command line."""
    arg = call.args[0] if call.args else next(
        (k.value for k in call.keywords if k.arg in ("args", "cmd", "command")), None)
    if isinstance(arg, ast.List | ast.Tuple) and arg.elts:
        return plain_program(literal(arg.elts[0]) or "")
    text = literal(arg)
    if text is None:
        return None
    # Without shell=True a string is still the whole command on POSIX; its first word
    # is what the author meant to run, and what is worth asking about.
    return plain_program(text if name in VERBATIM else shell_program(text) or "")


def aliases_of(tree: ast.AST) -> dict[str, str]:
    """Local name -> qualified name for every import in the file (any scope), the last
    one in ``ast.walk``'s order where a name is imported more than once."""
    groups = nodes_by_type(tree)
    plain: dict[str, str] = {}
    _bind_imports(groups.get(ast.Import, ()), plain)
    named: dict[str, str] = {}
    _bind_imports(groups.get(ast.ImportFrom, ()), named)
    if plain.keys().isdisjoint(named):
        return {**plain, **named}
    # A name bound by both kinds of import: whichever comes later in the walk wins.
    out: dict[str, str] = {}
    _bind_imports(all_nodes(tree), out)
    return out


def _bind_imports(nodes: Iterable[ast.AST], out: dict[str, str]) -> None:
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"{node.module}.{a.name}"


def exception_names(exprs: Iterable[ast.expr]) -> set[str]:
    """Last name of each exception expression: ``builtins.OSError`` -> ``OSError``."""
    names: set[str] = set()
    for t in exprs:
        if isinstance(t, ast.Tuple):
            names |= exception_names(t.elts)
        elif isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, ast.Attribute):
            names.add(t.attr)
    return names


def caught(handlers: Iterable[ast.ExceptHandler]) -> frozenset[str]:
    """Exceptions a try statement's handlers catch; a bare ``except:`` catches everything."""
    names: set[str] = set()
    for h in handlers:
        names |= {"BaseException"} if h.type is None else exception_names([h.type])
    return frozenset(names)


def platform_flags(assigns: Iterable[ast.Assign]) -> frozenset[str]:
    """Names assigned a platform test (``darwin = sys.platform == "darwin"``), so that
    ``if darwin:`` is a platform branch too (``assigns``: the file's assignments)."""
    flags = set()
    for node in assigns:
        if isinstance(node.value, ast.Compare | ast.BoolOp) \
                and any(p in ast.unparse(node.value) for p in PLATFORM_TESTS):
            flags |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return frozenset(flags)
