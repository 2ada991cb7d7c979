"""Step code fingerprints: the transitive first-party import closure of a step, found from the code.

A step's output depends on every line of its own package that can run when
the step runs: its module, the helpers it imports (at module level or inside
``run``), what those import, and the ``__init__`` of every package on the way.
Lists kept by hand drift (a new helper import is easy to forget), so the
closure is computed statically from each module's AST (:mod:`ast`), without
importing anything:

- ``import a.b.c`` adds ``a``, ``a.b`` and ``a.b.c``;
- ``from X import Y`` adds ``X``, and ``X.Y`` when Y is a submodule;
  relative imports are resolved against the importing module's package;
- imports anywhere in a module count (inside functions, ``try``, ``if``,
  ``TYPE_CHECKING``): a conservative closure only costs a rebuild;
- ``importlib.import_module("a.b")`` and ``__import__("a.b")`` with a literal
  name count; a name computed at run time cannot be seen (list such modules in
  the step's ``code_modules``).

*First-party* means the step module's own top-level package: ``modelbuild``
for the built-in steps, a plugin's own package for a third-party one. Other
packages enter the key through the step's declared ``toolchain`` versions.

The fingerprint hashes each file's module name and content digest (never an
absolute path). Contents are read and hashed on every call (a few ms for all
built-in steps; each file's stat signature is taken just before, for the
no-op fast path). Parsing is the expensive part, so its result is kept by
content digest: in memory for the process, and in the build cache (the
engine passes the store's database as ``index``), so a full-check no-op
parses nothing. An entry keyed by content cannot be stale: an edited file has
a new digest and is parsed again.

Example::

    >>> code = step_code("modelbuild.steps.command")
    >>> "modelbuild.step" in code.modules
    True
    >>> code.fingerprint == step_code("modelbuild.steps.command").fingerprint
    True
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

__all__ = ["StepCode", "CodeFile", "step_code", "imports_of", "FORMAT"]

#: Version of the closure rules and of the fingerprint's canonical form; part
#: of every fingerprint, so a change of rules changes every step's key.
FORMAT = 1
#: Version of the on-disk parse index (entries of another version are ignored).
_INDEX_FORMAT = 1
_PY_SUFFIXES = (".py",)
#: Files of a package that are never data its code reads.
_SKIP_SUFFIXES = (".py", ".pyc", ".pyo", ".pyi", ".typed", ".tmp")


@dataclass(frozen=True)
class CodeFile:
    """One file of a step's code: its module name (or ``pkg:resource``), path,
    content digest, and the stat signature taken just before it was read."""

    name: str
    path: Path
    digest: str
    signature: tuple[int, ...] | None


@dataclass(frozen=True)
class StepCode:
    """A step's code: the files of its closure and the fingerprint hashed from them."""

    files: tuple[CodeFile, ...]
    fingerprint: str
    #: ``time.time_ns()`` from before the files were read (for the racy rule).
    read_ns: int = 0

    @property
    def modules(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # The same fields (and order) as hashing's stat signature and the fast path's.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: Path) -> tuple[bytes, tuple[int, ...] | None]:
    """Content and the stat taken *before* reading: a later change shows as a
    different signature, so the fast path never trusts what was not read."""
    try:
        st = os.stat(path)
    except OSError:
        return path.read_bytes(), None  # raises a clear OSError if it is gone
    return path.read_bytes(), _signature(st)


# -- static import scan --------------------------------------------------------


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str | None:
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None  # beyond the top-level package: Python would fail too
    base = parts[: len(parts) - (level - 1)]
    if target:
        base.append(target)
    return ".".join(base) or None


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def _statements(body: list[ast.stmt]):
    """Every statement, at any depth of blocks (functions, classes, try, if, with, match)."""
    for node in body:
        yield node
        for field in _BLOCKS:
            inner = getattr(node, field, None)
            if inner:
                yield from _statements(inner)


def imports_of(source: bytes, module: str, is_package: bool = False) -> list[str]:
    """The absolute module names a module's source may import (statically).

    For ``from X import Y`` both ``X`` and ``X.Y`` are listed (the caller keeps
    ``X.Y`` only if it is a module). Unparsable source imports nothing more
    (the file itself is still hashed into the fingerprint).

    >>> imports_of(b"from .b import c\\ndef f():\\n    import x.y", "p.a")
    ['p.b', 'p.b.c', 'x.y']
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            if base is None:
                continue
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    # Imports by a literal name in an expression; a full walk is slow, so only
    # when the text can contain one.
    if b"import_module" in source or b"__import__" in source:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if called in ("import_module", "__import__"):
                    names.append(node.args[0].value)
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)


# -- locating first-party modules ----------------------------------------------


class _Package:
    """The files of one top-level package (or single-module distribution), as
    found during one :func:`step_code` call (a later call may see new files)."""

    def __init__(self, top: str):
        self.top = top
        spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
        if spec is None:
            raise ModuleNotFoundError(f"no module named {top!r}")
        self.roots = [Path(p) for p in (spec.submodule_search_locations or [])]
        self.single = Path(spec.origin) if not self.roots and spec.origin else None
        self._located: dict[str, tuple[Path | None, bool]] = {}
        self._data: dict[str, Path] | None = None

    def data_files(self) -> dict[str, Path]:
        """The package's non-Python files: ``"pkg:relative/path"`` -> path."""
        if self._data is None:
            self._data = {}
            for root in self.roots:
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
                    for fname in sorted(filenames):
                        if fname.endswith(_SKIP_SUFFIXES) or fname.startswith("."):
                            continue
                        path = Path(dirpath, fname)
                        self._data.setdefault(f"{self.top}:{path.relative_to(root).as_posix()}", path)
        return self._data

    def owns(self, name: str) -> bool:
        return name == self.top or name.startswith(self.top + ".")

    def locate(self, name: str) -> tuple[Path | None, bool]:
        """(file, is_package) of a first-party module; file None if there is no such module."""
        if name in self._located:
            return self._located[name]
        found: tuple[Path | None, bool] = (None, False)
        if name == self.top:
            if self.single is not None:
                found = (self.single, False)
            else:
                for root in self.roots:
                    init = root / "__init__.py"
                    if init.is_file():
                        found = (init, True)
                        break
                else:
                    found = (None, True) if self.roots else (None, False)
        elif self.roots:
            rel = name.split(".")[1:]
            for root in self.roots:
                base = root.joinpath(*rel)
                if base.is_dir():
                    init = base / "__init__.py"
                    found = (init if init.is_file() else None, True)
                    break
                for suffix in _PY_SUFFIXES:
                    candidate = base.with_name(base.name + suffix)
                    if candidate.is_file():
                        found = (candidate, False)
                        break
                if found[0] is not None:
                    break
        self._located[name] = found
        return found

    def imports(self, name: str, is_package: bool, digest: str, source: bytes, index) -> list[str]:
        """First-party imports of a module, parsed once per content digest."""
        memo_key = (name, is_package, digest)
        found = _PARSED.get(memo_key)
        if found is not None:
            return found
        key = f"code-imports:{_INDEX_FORMAT}:{name}:{int(is_package)}:{digest}"
        if index is not None:
            try:
                raw = index.get(key)
                if raw is not None:
                    found = [str(n) for n in json.loads(raw)]
            except (ValueError, TypeError, OSError):
                found = None
        if found is None:
            found = [n for n in imports_of(source, name, is_package) if self.owns(n)]
            if index is not None:
                try:
                    index.set(key, json.dumps(found))
                except OSError:
                    pass  # a read-only cache: parse again next time
        _PARSED[memo_key] = found
        return found


_LOCK = threading.Lock()
#: (module, is_package, content digest) -> first-party imports; content-addressed, so never stale.
_PARSED: dict[tuple[str, bool, str], list[str]] = {}


def _resource(spec: str, package) -> tuple[str, Path]:
    """``"pkg:relative/path"`` -> (spec, file path inside the package's directory)."""
    top, sep, rel = spec.partition(":")
    if not sep or not rel:
        raise ValueError(f"code_files entry {spec!r} must be 'package:relative/path'")
    pkg = package(top.partition(".")[0])
    base = pkg.locate(top)[0]
    folder = base.parent if base is not None else (pkg.roots[0] if pkg.roots else None)
    if folder is None:
        raise ValueError(f"code_files entry {spec!r}: no package directory for {top}")
    return spec, folder.joinpath(*rel.split("/"))


def step_code(module: str, extra_modules: tuple[str, ...] | list[str] = (),
              data_files: tuple[str, ...] | list[str] = (), index=None) -> StepCode:
    """The files and fingerprint of the code a step runs.

    ``module`` is the step's module; ``extra_modules`` are more closure roots
    (modules imported by a computed name; each brings its own package's
    closure); ``data_files`` are package resources (``"pkg:relative/path"``)
    the code reads, hashed as they are. ``index`` (a ``diskcache.Cache`` or
    anything with ``get``/``set`` of strings) keeps parse results across
    processes; without it they are kept for this process only.
    """
    packages: dict[str, _Package] = {}  # looked up afresh each call: a package may move (tests)

    def package(top: str) -> _Package:
        if top not in packages:
            packages[top] = _Package(top)
        return packages[top]

    with _LOCK:
        read_ns = time.time_ns()
        todo = [(name, package(name.partition(".")[0])) for name in (module, *extra_modules)]
        roots = {name for name, _ in todo}
        found: dict[str, CodeFile] = {}
        wanted: dict[str, Path] = {}  # data files: "pkg:relative/path" -> path
        visited: set[str] = set()
        while todo:
            name, pkg = todo.pop()
            if name in visited or not pkg.owns(name):
                continue
            visited.add(name)
            path, is_package = pkg.locate(name)
            parent = name.rpartition(".")[0]
            if parent:
                todo.append((parent, pkg))  # importing a.b runs a/__init__.py first
            if path is None:
                if name in roots and not is_package:
                    raise ModuleNotFoundError(f"cannot find the source of module {name!r}")
                continue
            source, sig = _read(path)
            digest = "b3:" + blake3.blake3(source).hexdigest()
            found[name] = CodeFile(name, path, digest, sig)
            if path.suffix in _PY_SUFFIXES:
                todo.extend((n, pkg) for n in pkg.imports(name, is_package, digest, source, index))
                # A package data file the code names (its file name appears in
                # the source) is read by it, as far as a static look can tell.
                for spec, data in pkg.data_files().items():
                    if spec not in wanted and data.name.encode() in source:
                        wanted[spec] = data
        for spec in data_files:
            wanted.setdefault(*_resource(spec, package))
        for spec, path in wanted.items():
            source, sig = _read(path)
            found[spec] = CodeFile(spec, path, "b3:" + blake3.blake3(source).hexdigest(), sig)
    files = tuple(sorted(found.values(), key=lambda f: f.name))
    canonical = json.dumps({"format": FORMAT, "files": [[f.name, f.digest] for f in files]},
                           separators=(",", ":"), sort_keys=True).encode()
    return StepCode(files, blake3.blake3(canonical).hexdigest()[:32], read_ns)
