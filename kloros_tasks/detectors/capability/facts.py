"""What one Python file expects of its environment, read from its syntax tree.

Pure: source text in, a ``PyScan`` out.  The scan records, with line numbers,
absolute imports (and how they are guarded), names imported from tool packages,
capabilities registered by decorators, names defined at module level, programs run
by literal name, and environment variables read where their absence raises.  Nothing
here decides whether any of that is a problem; ``rules.py`` does, against the index.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from kloros_tasks.detectors._treecache import nodes_by_type, parse_tree, walk
from kloros_tasks.detectors._visitor import PathVisitor
from kloros_tasks.detectors.capability.calls import (
    ENV_READS,
    ENV_SETS,
    EXEC_PROGRAM,
    EXEC_SHELL,
    IMPORT_OR_SKIP,
    MODULE_STRING,
    NONE_BREAKS,
    PLATFORM_TESTS,
    SYS_PATH_CHANGES,
    aliases_of,
    caught,
    exception_names,
    literal,
    platform_flags,
    program_of,
)
from kloros_tasks.detectors.capability.paths import module_of, spelling

# How an import is reached, from most to least optional (LAZY: in a function or `if`).
TYPING, GUARDED, CONDITIONAL, LAZY, PLAIN = "typing", "guarded", "conditional", "lazy", "plain"
OPTIONAL_KINDS = frozenset({TYPING, GUARDED, CONDITIONAL})

REGISTRY_DECORATORS = frozenset({"tool", "skill", "capability"})
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
_OS_ERRORS = frozenset({"OSError", "FileNotFoundError", "EnvironmentError", "IOError"})
_KEY_ERRORS = frozenset({"KeyError", "LookupError"})
_BROAD = frozenset({"Exception", "BaseException"})


@dataclass
class PyScan:
    """Everything ``capability.py`` needs about one Python file (JSON-friendly lists)."""

    # (top-level name, module, line, kind)
    imports: list[tuple[str, str, int, str]] = field(default_factory=list)
    # (module, name, line) imported from tool packages; name "" for `import tools.x`
    wants: list[tuple[str, str, int]] = field(default_factory=list)
    # modules this file imports (relative ones resolved), split by whether every such
    # import is optional: a module only ever imported under a guard is optional itself
    modules_plain: set[str] = field(default_factory=set)
    modules_guarded: dict[str, int] = field(default_factory=dict)  # module -> first line
    registered: set[str] = field(default_factory=set)
    defines: set[str] = field(default_factory=set)  # "module:Name", "module:*"
    # program, line, the enclosing "Class.method" ("" at module level)
    execs: list[tuple[str, int, str]] = field(default_factory=list)
    # variables read where their absence breaks: a subscript, or a None-less use of .get
    env_reads: list[tuple[str, int]] = field(default_factory=list)
    env_sets: set[str] = field(default_factory=set)
    sys_path: bool = False  # the file changes sys.path: its imports come from elsewhere
    # top-level names of modules named in strings ("app.middleware.X", INSTALLED_APPS)
    string_refs: set[str] = field(default_factory=set)


class _Scanner(PathVisitor):
    """One pass over a module; ``_caught`` frames and flags say how each use is guarded.
    Handlers visit only children of their node, as ``PathVisitor.parent`` needs."""

    def __init__(self, module: str, is_package: bool, tool_packages: frozenset[str],
                 aliases: dict[str, str], flags: frozenset[str]) -> None:
        super().__init__()
        self.module, self.is_package = module, is_package
        self.tool_packages, self.aliases = tool_packages, aliases
        self.platform_flags = flags
        self.scan = PyScan()
        self._frames: list[frozenset[str]] = []  # exceptions caught around the current node
        self._typing = 0  # depth of `if TYPE_CHECKING:` blocks
        self._conditional = 0  # depth of version/platform tests
        self._depth = 0  # depth of def/class: 0 means module level
        self._lazy = 0  # depth of function bodies and runtime `if` blocks
        self._env_checked: set[str] = set()
        self._probed: set[str] = set()  # programs the file looks up with shutil.which
        self._scope: list[str] = []  # enclosing class and function names
        self._testing = 0  # inside a condition, where a read is a check, not a need
        self._fallback = 0  # inside an `except ImportError:` handler: the plan B import

    # --- predicates -----------------------------------------------------------------
    def _catches(self, names: frozenset[str]) -> bool:
        wanted = names | _BROAD
        return any(frame & wanted for frame in self._frames)

    def _import_kind(self) -> str:
        if self._typing:
            return TYPING
        if self._catches(_IMPORT_ERRORS) or self._fallback:
            return GUARDED
        if self._conditional:
            return CONDITIONAL
        return LAZY if self._lazy else PLAIN

    def qualname(self, node: ast.AST) -> str | None:
        """Dotted name an expression refers to through this file's imports, if any."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _is_tool_module(self, module: str) -> bool:
        return any(part in self.tool_packages for part in module.split("."))

    # --- structure --------------------------------------------------------------------
    def visit_Try(self, node: ast.Try) -> None:
        self._frames.append(caught(node.handlers))
        for stmt in node.body:
            self.visit(stmt)
        self._frames.pop()
        for handler in node.handlers:
            # `except ImportError: import other_impl` names an alternative: optional too.
            fallback = bool(caught([handler]) & (_IMPORT_ERRORS | _BROAD))
            self._fallback += fallback
            self.visit(handler)
            self._fallback -= fallback
        for stmt in [*node.orelse, *node.finalbody]:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def _visit_test(self, node: ast.expr) -> None:
        self._testing += 1
        self.visit(node)
        self._testing -= 1

    def visit_While(self, node: ast.While) -> None:
        self._visit_test(node.test)
        self._visit_all([*node.body, *node.orelse])

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._visit_test(node.test)
        self.visit(node.body)
        self.visit(node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        # In `a or b`, every operand but the last has a fallback.
        if isinstance(node.op, ast.Or):
            for value in node.values[:-1]:
                self._visit_test(value)
            self.visit(node.values[-1])
        else:
            self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        self._visit_test(node.test)
        if re.fullmatch(r"(typing\.)?TYPE_CHECKING", test):
            self._typing += 1
            self._visit_all(node.body)
            self._typing -= 1
            self._visit_all(node.orelse)
            return
        platform = any(p in test for p in PLATFORM_TESTS) or bool(self.platform_flags) and any(
            isinstance(n, ast.Name) and n.id in self.platform_flags for n in walk(node.test))
        self._conditional += platform
        self._lazy += not platform
        self._visit_all(node.body)
        self._visit_all(node.orelse)
        self._conditional -= platform
        self._lazy -= not platform

    def visit_With(self, node: ast.With) -> None:
        suppressed: set[str] = set()
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("suppress"):
                suppressed |= exception_names(call.args)
        self._frames.append(frozenset(suppressed))
        self.generic_visit(node)
        self._frames.pop()

    visit_AsyncWith = visit_With

    def _visit_all(self, stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            self.visit(stmt)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._define(node.name if node.name != "__getattr__" else "*")
        self._registered(node)
        self._depth += 1
        self._lazy += 1
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()
        self._lazy -= 1
        self._depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._define(node.name)
        self._registered(node)
        self._depth += 1
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()
        self._depth -= 1

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self._define(node.id)

    def _define(self, name: str) -> None:
        if self._depth == 0:
            self.scan.defines.add(f"{self.module}:{name}")

    def _registered(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            last = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if last not in REGISTRY_DECORATORS:
                continue
            self.scan.registered.add(spelling(node.name))
            if isinstance(deco, ast.Call):
                given = [literal(a) for a in deco.args[:1]]
                given += [literal(k.value) for k in deco.keywords if k.arg == "name"]
                self.scan.registered |= {spelling(g) for g in given if g}

    # --- imports ----------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._import(a.name, node.lineno)
            self._module_use(node.lineno, a.name)
            if self._is_tool_module(a.name):
                self.scan.wants.append((a.name, "", node.lineno))
            self._define(a.asname or a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            module = self._absolute(node.level, module)
        elif module:
            self._import(module, node.lineno)
        for a in node.names:
            self._define("*" if a.name == "*" else a.asname or a.name)
            if module and a.name != "*":
                self._module_use(node.lineno, module, f"{module}.{a.name}")
                if self._is_tool_module(module):
                    self.scan.wants.append((module, a.name, node.lineno))

    def _absolute(self, level: int, module: str) -> str:
        """The absolute name of a relative import, or "" when it climbs out of the tree."""
        parts = self.module.split(".") if self.module else []
        if not self.is_package:
            parts = parts[:-1]
        if level - 1 > len(parts):
            return ""
        base = parts[: len(parts) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def _module_use(self, line: int, *modules: str) -> None:
        if self._import_kind() not in OPTIONAL_KINDS:
            self.scan.modules_plain.update(modules)
            return
        for module in modules:
            self.scan.modules_guarded.setdefault(module, line)

    def _import(self, module: str, line: int, kind: str | None = None) -> None:
        if module and not module.startswith("."):
            self.scan.imports.append((module.split(".")[0], module, line,
                                      kind or self._import_kind()))

    # --- calls: dynamic imports, programs, environment ------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        name = self.qualname(func)
        if name is None and isinstance(func, ast.Name) and func.id == "__import__":
            name = "__import__"
        first = node.args[0] if node.args else None
        if name in ("importlib.import_module", "__import__") and literal(first):
            self._import(literal(first), node.lineno)
        elif name in IMPORT_OR_SKIP and literal(first):
            self._import(literal(first), node.lineno, GUARDED)
        elif name == "shutil.which":
            # A lookup is a probe: the code handles absence, and runs the program only
            # after asking, so later runs of the same program in this file are handled.
            self._probed.add(literal(first) or "")
        elif name in EXEC_PROGRAM or name in EXEC_SHELL:
            self._exec(name, node)
        elif name in ENV_READS and len(node.args) == 1 and not node.keywords and literal(first):
            if self._testing or self._breaks_on_none(node):
                self._env_read(literal(first), node.lineno)
        elif literal(first) and (name in ENV_SETS or (
                isinstance(func, ast.Attribute) and func.attr == "setenv")):
            self.scan.env_sets.add(literal(first))
        elif name == "os.environ.update":
            self.scan.env_sets |= {k.arg for k in node.keywords if k.arg}
        elif name in SYS_PATH_CHANGES or (isinstance(func, ast.Attribute)
                                            and func.attr == "add_entry"):
            # pkg_resources' working_set.add_entry() puts a folder on sys.path too.
            self.scan.sys_path = True

    def _breaks_on_none(self, node: ast.expr) -> bool:
        """True when the value of ``node`` (a read that gives None when the variable is
        unset) is used where None raises: an attribute, an index, arithmetic, or an
        argument of a call that needs a string (``int(...)``, ``Path(...)``)."""
        parent = self.parent(node)
        if isinstance(parent, ast.Attribute | ast.Subscript):
            return parent.value is node
        if isinstance(parent, ast.BinOp):
            return True
        if isinstance(parent, ast.Call) and node in parent.args:
            callee = self.qualname(parent.func) or getattr(parent.func, "id", "")
            return callee in NONE_BREAKS
        return False

    def visit_Constant(self, node: ast.Constant) -> None:
        # A module named in a string is loaded by name (settings, plugin lists): the
        # distribution providing it is used although nothing imports it.
        value = node.value
        if not isinstance(value, str) or not MODULE_STRING.fullmatch(value):
            return
        if "." in value or isinstance(self.parent(node), ast.List | ast.Tuple | ast.Set):
            self.scan.string_refs.add(value.split(".")[0])

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        # `sys.path += [...]` changes the import path like sys.path.extend does.
        self.generic_visit(node)
        self._path_store(node.target)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self._path_store(target)

    def _path_store(self, target: ast.expr) -> None:
        """`sys.path = ...` and `sys.path[0:0] = ...` change where imports come from."""
        if isinstance(target, ast.Subscript):
            target = target.value
        if self.qualname(target) == "sys.path":
            self.scan.sys_path = True

    def _exec(self, name: str, node: ast.Call) -> None:
        program = program_of(name, node)
        # A handled failure (try/except OSError) or a platform branch is not a need of
        # this host; only a run that would raise here is recorded.
        if program is None or self._catches(_OS_ERRORS) or self._conditional:
            return
        self.scan.execs.append((program, node.lineno, ".".join(self._scope)))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.generic_visit(node)
        key = literal(node.slice)
        if key is None or self.qualname(node.value) != "os.environ":
            return
        if isinstance(node.ctx, ast.Load):
            self._env_read(key, node.lineno)
        else:
            self.scan.env_sets.add(key)

    def visit_Compare(self, node: ast.Compare) -> None:
        # `"X" in os.environ` (or in `env = os.environ`) anywhere in the file: the code
        # checks before it reads.
        self.generic_visit(node)
        key = literal(node.left)
        if key and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            self._env_checked.add(key)

    def _env_read(self, key: str, line: int) -> None:
        if self._testing:
            self._env_checked.add(key)  # `if os.environ.get("X"):` asks; it does not need
        elif not self._catches(_KEY_ERRORS) and not self._conditional:
            # A platform branch reads what that platform sets (macOS's __PYVENV_LAUNCHER__).
            self.scan.env_reads.append((key, line))


def scan_python(path: str, text: str, tool_packages: frozenset[str]) -> PyScan:
    """Scan one Python file.  Raises SyntaxError, ValueError, RecursionError or
    MemoryError when the text cannot be parsed; the caller turns those into data."""
    # Shared with the other detectors (read only); warnings while parsing are ignored
    # there, so `-W error` does not make valid code look unparseable.
    tree = parse_tree(text, filename=path)
    module, is_package = module_of(path)
    flags = platform_flags(nodes_by_type(tree).get(ast.Assign, ()))
    scanner = _Scanner(module, is_package, tool_packages, aliases_of(tree), flags)
    scanner.visit(tree)
    scan = scanner.scan
    scan.env_reads = [(k, line) for k, line in scan.env_reads if k not in scanner._env_checked]
    scan.execs = [e for e in scan.execs if e[0] not in scanner._probed]
    scan.modules_guarded = {m: line for m, line in scan.modules_guarded.items()
                            if m not in scan.modules_plain}
    return scan
