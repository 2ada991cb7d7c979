"""Pytest plugin: a test that imports the ML toolchain must carry the ``ml`` marker.

Why: ``pytest -m "not ml"`` is the fast subset people run on every edit, and
it is only honest if no unmarked test needs torch. Marks kept by hand drift,
so this plugin fails an unmarked test that imports one of the packages named
by the ini option ``ml_modules`` (torch, executorch, coremltools, torchao,
transformers), whichever way it gets there:

1. **Statically, at collection.** The test module's import-time imports, and
   every import inside the test function (``import``, ``from``,
   ``pytest.importorskip("x")``, ``importlib.import_module("x")``), followed
   through helper modules under ``tests/`` and first-party modules (their
   module-level imports only: plugins import torch inside ``run``). This
   catches ``import torch`` at the top of a test module, which a run-time
   check cannot see once the module holds ``torch``.
2. **At run time, in process.** torch is usually imported already by an
   earlier test (or at collection), so "did sys.modules grow" sees nothing.
   Instead, during an unmarked test's setup and call, the heavy modules and
   every loaded module that refers to one (``modelbuild.ml.hqq`` holding
   ``torch``, ``safetensors.torch``, ...) are taken out of ``sys.modules``
   (and off their parent package) and a ``sys.meta_path`` finder refuses to
   load them again and records who asked. A test that swallows the
   ImportError (``try/except``, ``importorskip``) still fails.
3. **At run time, in child processes.** The engine runs steps in
   ``python -m modelbuild.worker`` and CLI tests run ``modelbuild`` in a
   subprocess; during an unmarked test ``PYTHONPATH`` carries a
   ``sitecustomize`` that records (without blocking) the first heavy import
   of every Python child into a report file, read when the test ends.

Example: with ``ml_modules = ["torch"]``, both of these fail with
"... imports torch but is not marked ml" while the marked one passes::

    def test_a():
        import torch                       # caught statically

    def test_b(tmp_path):
        run_step(QuantizeStep, ...)        # imports torch inside run(): caught at run time

    @pytest.mark.ml
    def test_c():
        import torch

It also keeps the fast subset fast: when ``-m`` excludes ``ml``, a test
module marked ``ml`` as a whole (``pytestmark``, read from its source) is not
imported at all, since importing torch, executorch and coremltools for tests
that would be deselected costs ~40 s on 2 cores. The summary says how many.

Blind spots, on purpose: a subprocess started with ``-I``/``-E`` or a fresh
environment, and references to heavy objects hidden in containers of
already-loaded modules (registries, caches).
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType

import pytest

__all__ = [
    "pytest_addoption",
    "pytest_configure",
    "pytest_unconfigure",
    "pytest_ignore_collect",
    "pytest_collection_modifyitems",
    "pytest_terminal_summary",
    "pytest_runtest_setup",
    "pytest_runtest_call",
    "pytest_runtest_teardown",
]

DEFAULT_ML_MODULES = ["torch", "executorch", "coremltools", "torchao", "transformers"]
MARKER = "ml"
_REPORT_ENV = "MODELBUILD_TEST_ML_REPORT"
_MODULES_ENV = "MODELBUILD_TEST_ML_MODULES"
#: Never hidden: the standard library and the test runner. A stdlib module
#: that refers to torch was patched by torch; it does not depend on it.
_NEVER_HIDE = set(sys.stdlib_module_names) | {"__main__", "__mp_main__", "_pytest", "pytest", "pluggy", "hypothesis"}


def pytest_addoption(parser):
    parser.addini("ml_modules", type="args", default=DEFAULT_ML_MODULES,
                  help="top-level packages whose import requires the 'ml' marker (tests/ml_guard.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}: imports the ML toolchain (the ini option ml_modules)")
    heavy = frozenset(config.getini("ml_modules"))
    guard = config.stash[_KEY] = _Guard(heavy, Path(str(config.rootpath)))
    guard.skip_ml_modules = _excludes_marker(config.option.markexpr or "", MARKER)


def _excludes_marker(markexpr: str, marker: str) -> bool:
    """True if ``-m markexpr`` deselects every test that has ``marker``, whatever its other marks."""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression  # private, but the very parser -m uses

        expr = Expression.compile(markexpr)
    except Exception:  # a newer pytest, or an expression pytest itself will reject: just don't skip
        return False
    others = sorted(set(re.findall(r"[\w.:+\-\[\]\\/]+", markexpr)) - {"and", "or", "not", "True", "False", "None", marker})
    if len(others) > 8:
        return False
    for values in itertools.product((False, True), repeat=len(others)):
        truth = dict(zip(others, values), **{marker: True})
        if expr.evaluate(lambda name, **kwargs: truth.get(name, False)):
            return False
    return True


def pytest_ignore_collect(collection_path, config):
    guard = config.stash.get(_KEY, None)
    if guard is None or not guard.skip_ml_modules or collection_path.suffix != ".py":
        return None
    if not any(fnmatch.fnmatch(collection_path.name, pattern) for pattern in config.getini("python_files")):
        return None
    if guard.static.module_marked(Path(collection_path), MARKER):
        guard.not_imported.append(collection_path)
        return True
    return None


def pytest_terminal_summary(terminalreporter, config):
    guard = config.stash.get(_KEY, None)
    if guard is not None and guard.not_imported:
        terminalreporter.write_line(
            f"ml_guard: {len(guard.not_imported)} test modules marked {MARKER} were not imported "
            f"(-m {config.option.markexpr!r} deselects all their tests)")


def pytest_unconfigure(config):
    guard = config.stash.get(_KEY, None)
    if guard is not None:
        guard.close()


def pytest_collection_modifyitems(config, items):
    guard = config.stash[_KEY]
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker(MARKER) is None:
            found = guard.static.for_item(item)
            if found:
                item.stash[_STATIC] = found


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    guard = item.config.stash[_KEY]
    if item.get_closest_marker(MARKER) is not None:
        return (yield)
    guard.start(item)
    try:
        result = yield
    except BaseException:
        guard.fail_if_used(item, "setup")
        raise
    guard.fail_if_used(item, "setup")
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    guard = item.config.stash[_KEY]
    if item.get_closest_marker(MARKER) is not None:
        return (yield)
    static = item.stash.get(_STATIC, None)
    if static:
        pytest.fail(f"{item.nodeid} imports {static} but is not marked {MARKER} "
                    f"(add @pytest.mark.{MARKER}; tests/ml_guard.py)", pytrace=False)
    try:
        result = yield
    except BaseException:
        guard.fail_if_used(item, "call")
        raise
    guard.fail_if_used(item, "call")
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item):
    # Restored after teardown: a fixture's monkeypatch of PYTHONPATH or
    # sys.modules is undone first, against the values it saw.
    guard = item.config.stash[_KEY]
    try:
        return (yield)
    finally:
        guard.stop()


_KEY = pytest.StashKey["_Guard"]()
_STATIC = pytest.StashKey[str]()


# -- run time -----------------------------------------------------------------------

SITECUSTOMIZE = '''\
"""Written by tests/ml_guard.py: records this process's first import of an ML package."""
import os as _os
import sys as _sys

_heavy = frozenset(filter(None, _os.environ.get("{modules}", "").split(",")))
_report = _os.environ.get("{report}")


class _MLImportRecorder:
    seen = False

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if not cls.seen and name.partition(".")[0] in _heavy:
            cls.seen = True
            try:
                with open(_report, "a") as f:
                    f.write("%s (python %s)\\n" % (name, " ".join(_sys.argv)[:300]))
            except OSError:
                pass
        return None


if _heavy and _report:
    _sys.meta_path.insert(0, _MLImportRecorder)

# Chain to a sitecustomize this one shadows, if any.
for _entry in _sys.path:
    _other = _os.path.join(_entry or ".", "sitecustomize.py")
    if _os.path.abspath(_entry or ".") != _os.path.dirname(_os.path.abspath(__file__)) and _os.path.isfile(_other):
        with open(_other) as _f:
            exec(compile(_f.read(), _other, "exec"), {{"__name__": "sitecustomize", "__file__": _other}})
        break
'''


class _Refuse:
    """Loader that refuses to (re)load a hidden module, recording the attempt."""

    def __init__(self, guard: "_Guard"):
        self.guard = guard

    def create_module(self, spec):
        self.guard.record(spec.name, _importer())
        raise ImportError(f"{spec.name} is refused by tests/ml_guard.py: the running test is not marked {MARKER}",
                          name=spec.name)

    def exec_module(self, module):  # pragma: no cover - create_module always raises
        raise ImportError(module.__name__)


class _Blocker:
    """sys.meta_path finder, active only while an unmarked test runs."""

    def __init__(self, guard: "_Guard"):
        self.guard = guard

    def find_spec(self, name, path=None, target=None):
        if self.guard.active and self.guard.is_hidden(name):
            from importlib.machinery import ModuleSpec

            return ModuleSpec(name, _Refuse(self.guard))
        return None


def _importer() -> str:
    """The first frame outside importlib: who asked for the module."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or "importlib" in frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@dataclass
class _Guard:
    heavy: frozenset[str]
    root: Path
    static: "_StaticScan" = field(init=False)
    active: bool = False
    used: list[str] = field(default_factory=list)
    _hidden: dict[str, object] = field(default_factory=dict)
    _detached: list[tuple[object, str, object]] = field(default_factory=list)
    _hidden_names: set[str] = field(default_factory=set)
    _known: set[str] = field(default_factory=set)
    _heavy_loaded: set[str] = field(default_factory=set)
    _own: dict[str, ModuleType] = field(default_factory=dict)
    _edges: dict[str, frozenset[str]] = field(default_factory=dict)
    _referrers: dict[str, set[str]] = field(default_factory=dict)
    _heavy_refs: set[str] = field(default_factory=set)
    _env: dict[str, str | None] = field(default_factory=dict)
    _site_dir: Path | None = None
    _report: Path | None = None
    skip_ml_modules: bool = False
    not_imported: list = field(default_factory=list)

    def __post_init__(self):
        self.static = _StaticScan(self.heavy, self.root)
        self._own_dirs = tuple(str(self.root / d) + os.sep for d in ("modelbuild", "tests"))
        self._blocker = _Blocker(self)
        if self.heavy:
            self._site_dir = Path(tempfile.mkdtemp(prefix="mb-ml-guard-"))
            (self._site_dir / "sitecustomize.py").write_text(
                SITECUSTOMIZE.format(modules=_MODULES_ENV, report=_REPORT_ENV))
            self._report = self._site_dir / "report.txt"

    def close(self):
        self.stop()
        if self._site_dir is not None:
            shutil.rmtree(self._site_dir, ignore_errors=True)

    # which loaded modules depend on a heavy one

    def is_hidden(self, name: str) -> bool:
        return name.partition(".")[0] in self.heavy or name in self._hidden_names

    @staticmethod
    def _module_refs(name: str, module: ModuleType) -> frozenset[str]:
        """Names of the modules whose objects ``module``'s globals refer to."""
        try:
            namespace = vars(module)
        except TypeError:
            return frozenset()
        out = set()
        for value in list(namespace.values()):
            if isinstance(value, ModuleType):
                ref = value.__dict__.get("__name__")
                if isinstance(ref, str) and ref.startswith(name + "."):
                    continue  # a package's own submodule: the child does not taint the parent
            elif isinstance(value, (type, FunctionType, BuiltinFunctionType)):
                ref = getattr(value, "__module__", None)
            else:
                ref = type(value).__module__
            if isinstance(ref, str) and ref != name:
                out.add(ref)
        return frozenset(out)

    def _tainted(self) -> set[str]:
        """Loaded heavy modules and every loaded module that refers to one, transitively.

        The reference graph is kept between tests: a third-party module is
        scanned when it first appears, our own modules (few, small) before
        every test, since a lazy ``global _torch`` changes them in place.
        """
        keys = set(sys.modules)
        for name in keys - self._known:
            top = name.partition(".")[0]
            if top in self.heavy:
                self._heavy_loaded.add(name)
                continue
            module = sys.modules.get(name)
            if top in _NEVER_HIDE or not isinstance(module, ModuleType):
                continue
            if str(getattr(module, "__file__", None) or "").startswith(self._own_dirs):
                self._own[name] = module
            self._set_edges(name, self._module_refs(name, module))
        for name in self._known - keys:
            self._heavy_loaded.discard(name)
            self._own.pop(name, None)
            self._set_edges(name, frozenset())
        self._known = keys
        for name, module in list(self._own.items()):
            if sys.modules.get(name) is not module:  # re-imported under the same name
                module = self._own[name] = sys.modules[name]
            self._set_edges(name, self._module_refs(name, module))
        tainted = set(self._heavy_loaded)
        todo = list(self._heavy_refs)
        while todo:
            for user in self._referrers.get(todo.pop(), ()):
                if user not in tainted:
                    tainted.add(user)
                    todo.append(user)
        return tainted

    def _set_edges(self, name: str, new: frozenset[str]) -> None:
        old = self._edges.get(name, frozenset())
        if old == new:
            return
        for ref in old - new:
            users = self._referrers.get(ref)
            if users is not None:
                users.discard(name)
                if not users:
                    del self._referrers[ref]
                    self._heavy_refs.discard(ref)
        for ref in new - old:
            self._referrers.setdefault(ref, set()).add(name)
            if ref.partition(".")[0] in self.heavy:
                self._heavy_refs.add(ref)
        if new:
            self._edges[name] = new
        else:
            self._edges.pop(name, None)

    # one unmarked test

    def start(self, item) -> None:
        if not self.heavy:
            return
        self.stop()
        self.used = []
        self._hidden_names = self._tainted()
        for name in self._hidden_names:
            module = sys.modules.pop(name, None)
            if module is not None:
                self._hidden[name] = module
        for name, module in self._hidden.items():
            parent, _, child = name.rpartition(".")
            holder = sys.modules.get(parent) if parent and parent not in self._hidden else None
            if holder is not None and getattr(holder, "__dict__", {}).get(child) is module:
                delattr(holder, child)  # `from parent import child` must not find it either
                self._detached.append((holder, child, module))
        sys.meta_path.insert(0, self._blocker)
        for var, value in ((_MODULES_ENV, ",".join(sorted(self.heavy))), (_REPORT_ENV, str(self._report)),
                           ("PYTHONPATH", os.pathsep.join(filter(None, [str(self._site_dir), os.environ.get("PYTHONPATH")])))):
            self._env[var] = os.environ.get(var)
            os.environ[var] = value
        self._report.unlink(missing_ok=True)
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        self._collect_children()
        while self._blocker in sys.meta_path:
            sys.meta_path.remove(self._blocker)
        for name, module in self._hidden.items():
            sys.modules[name] = module
        for holder, child, module in self._detached:
            setattr(holder, child, module)
        self._hidden.clear()
        self._detached.clear()
        self._hidden_names = set()
        for var, value in self._env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._env.clear()

    def record(self, name: str, where: str) -> None:
        self.used.append(f"{name} (imported at {where})")

    def _collect_children(self) -> None:
        if self._report is not None and self._report.exists():
            self.used += [f"{line} in a child process" for line in self._report.read_text().splitlines()]
            self._report.unlink(missing_ok=True)

    def fail_if_used(self, item, phase: str) -> None:
        self._collect_children()
        if not self.used:
            return
        used, self.used = self.used, []
        message = (f"{item.nodeid} is not marked {MARKER} but its {phase} imports the ML toolchain: "
                   f"{'; '.join(dict.fromkeys(used))}. Add @pytest.mark.{MARKER} (tests/ml_guard.py)")
        # The test's own error (often the refused import) is a consequence; this is the cause.
        raise pytest.fail.Exception(message, pytrace=False) from None


# -- static -------------------------------------------------------------------------

_IMPORT_CALLS = {"importorskip", "import_module", "__import__"}


class _StaticScan:
    """Which heavy packages a test imports, read from source (ast), not run."""

    def __init__(self, heavy: frozenset[str], root: Path):
        self.heavy = heavy
        self.root = root
        self._trees: dict[Path, ast.Module | None] = {}
        self._closure: dict[Path, list[str]] = {}

    def for_item(self, item) -> str:
        """What the item imports, e.g. ``torch (test_a.py line 3: modelbuild.ml.hqq -> torch)``; "" if nothing heavy."""
        path = Path(str(item.path))
        chain = self.closure(path)
        if chain:
            return f"{chain[-1]} when {path.name} is imported ({' -> '.join(chain)})"
        node = self._function_node(path, getattr(item.function, "__qualname__", item.name))
        if node is not None:
            for name, line in _imports(node, module_level=False):
                chain = self._of_import(path, name)
                if chain:
                    return f"{chain[-1]} ({path.name} line {line}: {' -> '.join(chain)})"
        return ""

    def module_marked(self, path: Path, marker: str) -> bool:
        """Does the module set ``pytestmark`` to (a list holding) ``pytest.mark.<marker>``?"""
        tree = self._tree(path)
        for node in tree.body if tree is not None else ():
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and node.value is not None:
                    values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                    if any(ast.unparse(v) in (f"pytest.mark.{marker}", f"mark.{marker}") for v in values):
                        return True
        return False

    def _tree(self, path: Path) -> ast.Module | None:
        if path not in self._trees:
            try:
                self._trees[path] = ast.parse(path.read_text(encoding="utf-8"), str(path))
            except (OSError, SyntaxError, UnicodeDecodeError):
                self._trees[path] = None
        return self._trees[path]

    def _function_node(self, path: Path, qualname: str):
        scope = self._tree(path)
        for part in qualname.split("."):
            if scope is None or part == "<locals>":
                return None
            scope = next((n for n in getattr(scope, "body", []) if getattr(n, "name", None) == part
                          and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))), None)
        return scope

    def closure(self, path: Path) -> list[str]:
        """The import chain from ``path``'s module-level code to a heavy package; [] if none."""
        if path in self._closure:
            return self._closure[path]
        self._closure[path] = []  # an import cycle adds nothing
        tree = self._tree(path)
        found: list[str] = []
        if tree is not None:
            for name, _line in _imports(tree, module_level=True):
                found = self._of_import(path, name)
                if found:
                    break
        self._closure[path] = found
        return found

    def _of_import(self, importer: Path, name: str) -> list[str]:
        top = name.lstrip(".").partition(".")[0]
        if not name.startswith(".") and top in self.heavy:
            return [top]
        for file in self._resolve(importer, name):
            chain = self.closure(file)
            if chain:
                return [name, *chain]
        return []

    def _resolve(self, importer: Path, name: str) -> list[Path]:
        """First-party files run by ``import name``: each package's __init__, then the module.

        Trailing parts that are no module (``from a.b import func``) are ignored.
        """
        tests = self.root / "tests"
        if name.startswith("."):
            base = importer.parent
            for _ in range(len(name) - len(name.lstrip(".")) - 1):
                base = base.parent
            bases = [base]
        elif importer.is_relative_to(tests):
            bases = [importer.parent, tests, self.root]  # rootdir-style sys.path and tests' own inserts
        else:
            bases = [self.root]
        parts = [p for p in name.lstrip(".").split(".") if p]
        for base in bases:
            files, here = [], base
            for part in parts:
                here = here / part
                if (here / "__init__.py").is_file():
                    files.append(here / "__init__.py")
                elif here.with_suffix(".py").is_file():
                    files.append(here.with_suffix(".py"))
                    break
                else:
                    break
            if files:
                return files
        return []


def _imports(node: ast.AST, *, module_level: bool):
    """(module name, line) for each import under ``node``.

    ``module_level``: only what runs when the module is imported (not function
    bodies, not ``if TYPE_CHECKING:``, not ``if __name__ == "__main__":``).
    ``from a import b`` yields ``a.b`` (a submodule or a name in ``a``).
    """
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Import):
            for alias in n.names:
                yield alias.name, n.lineno
        elif isinstance(n, ast.ImportFrom):
            base = "." * n.level + (n.module or "")
            for alias in n.names:
                sep = "" if base.endswith(".") or not base else "."
                yield (base + sep + alias.name if alias.name != "*" else base), n.lineno
        elif isinstance(n, ast.Call):
            func = n.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if fname in _IMPORT_CALLS and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
                yield n.args[0].value, n.lineno
        if module_level and n is not node and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if module_level and isinstance(n, ast.If) and _skipped_block(n.test):
            stack.extend(n.orelse)
            continue
        stack.extend(ast.iter_child_nodes(n))


def _skipped_block(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return text in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or text.replace("'", '"') == '__name__ == "__main__"'
