"""The bound-graph cache: a full-check build that changed nothing binds no step.

Binding the graph (graph.py) parses the recipes, imports every step plugin the
recipes use and validates each target's params through the step's pydantic
model: about 0.25 s of a full-check no-op, paid again on every build although
its result only changes when its inputs do. So a successful binding is kept in
``<cache>/bound/<key>.json``: per target its step, input slots, raw and
validated params (JSON) and the facts the engine decides from (graph_facts.py);
per step its entry point, what its class declares about its code, and its code
fingerprint. The key is a digest of everything the binding was derived from:

- the format of this file and the binding code itself (the first-party import
  closure of this module: graph, recipe, plugins, step, ...; fingerprint.py);
- the recipe files (paths and bytes), the ``--set`` overrides, the project
  root and recipes directory;
- the interpreter (version, executable, ``sys.path`` but for its first
  entry, which depends on how Python was started: fastpath.import_path, the
  fast path's rule too) and every distribution installed on ``sys.path``
  (all of it) with its version (pydantic's validation, a base
  class from another package, a plugin added or removed), and the registry's
  step -> entry point table;

and, checked once the entry is read, the code fingerprint of every step the
graph uses, recomputed now from the files (the same fingerprint the action key
holds). A hit gives a graph whose steps and pydantic params load only when a
step must run, resolve or judge (``Node.step``); the per-target check (sources
hashed, action keys computed, records looked up) is the same as ever.

Anything unusual is a miss that binds afresh: no cache directory, an
unreadable or foreign entry, a value that JSON would not give back exactly
(a TOML date, a NaN), a distribution finder other than the path scan,
``MODELBUILD_BOUND_CACHE=0``. An entry is only written from a binding whose
inputs provably did not move while it ran: the recipes are parsed from the
very bytes that were hashed, and no code file was modified since the process
started (within the racy margin), so the modules imported are the ones hashed.

Example::

    graph = load_graph(root, recipes_dir, cache_dir, overrides=["vars.size=64"])
    graph.nodes["a"].loaded      # False on a hit: nothing imported yet
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import blake3

from .fastpath import import_path
from .fingerprint import StepCode, step_code
from .graph import BuildGraph, Node
from .graph_facts import NodeFacts, StepFacts, round_trips, same_json
from .plugins import Registry
from .recipe import Recipes, Target, load_recipes, recipe_files

__all__ = ["load_graph", "clear", "ENV", "FORMAT", "CodeIndex"]

#: Version of the entry layout and of the key's composition.
FORMAT = 1
#: ``MODELBUILD_BOUND_CACHE=0`` binds every graph afresh (for comparison; the result is the same).
ENV = "MODELBUILD_BOUND_CACHE"
#: Entries kept per cache (the newest); each recipe edit or ``--set`` makes a new one.
KEEP = 16
_RACY_NS = 2_000_000_000


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class CodeIndex:
    """Parse results of the code fingerprints (fingerprint.py's ``index``), in one JSON file.

    Entries are keyed by content digest, so they never go stale; the file is
    rewritten only when a parse added one.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._data: dict[str, str] = {}
        self._used: set[str] = set()
        self._dirty = False
        if path is not None:
            try:
                loaded = json.loads(path.read_bytes())
                if isinstance(loaded, dict):
                    self._data = {k: v for k, v in loaded.items() if isinstance(v, str)}
            except (OSError, ValueError):
                pass

    def get(self, key: str) -> str | None:
        self._used.add(key)
        return self._data.get(key)

    def set(self, key: str, value: str) -> None:
        self._used.add(key)
        self._data[key] = value
        self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        if len(self._data) > 4000:  # every edit of a module adds one: keep what this process used
            self._data = {k: v for k, v in self._data.items() if k in self._used}
        _write(self.path, json.dumps(self._data, sort_keys=True))
        self._dirty = False


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache: this is only a shortcut
        tmp.unlink(missing_ok=True)


def _digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def load_graph(root: Path, recipes_dir: Path, cache_dir: Path | None, overrides: list[str] | None = None,
               registry: Registry | None = None) -> BuildGraph:
    """The project's bound graph: from ``cache_dir``'s bound-graph cache when it
    proves the binding unchanged, else bound afresh (and kept for next time)."""
    registry = registry if registry is not None else Registry.discover()
    overrides = list(overrides or [])
    if not enabled() or not recipes_dir.is_dir():
        return BuildGraph.build(load_recipes(recipes_dir, overrides=overrides, root=root), registry)
    folder = cache_dir / "bound" if cache_dir is not None and cache_dir.is_dir() else None
    index = CodeIndex(folder / "imports.json" if folder is not None else None)
    try:
        texts = {p: p.read_bytes() for p in recipe_files(recipes_dir)}
    except OSError:  # load_recipes says which file and why
        return BuildGraph.build(load_recipes(recipes_dir, overrides=overrides, root=root), registry)
    key = binder = graph = None
    try:  # any trouble with the cache itself: bind afresh
        binder = step_code(__name__, index=index)  # the code that binds (and this file's format)
        key = _key(root, recipes_dir, texts, overrides, registry, binder)
        if key is not None and folder is not None:
            graph = _load(folder / f"{key}.json", key, root, texts, registry, index)
    except Exception:  # noqa: BLE001 - only a shortcut: never the reason a build fails
        key = graph = None
    if graph is None:
        graph = BuildGraph.build(load_recipes(recipes_dir, overrides=overrides, root=root, texts=texts), registry)
        if key is not None and folder is not None and binder is not None:
            try:
                _save(folder, key, graph, registry, index, binder)
            except Exception:  # noqa: BLE001 - as above
                pass
    index.save()
    return graph


def _key(root: Path, recipes_dir: Path, texts: dict[Path, bytes], overrides: list[str], registry: Registry,
         binder: StepCode) -> str | None:
    if registry.distributions is None:
        return None  # discovery fell back to importlib.metadata: the installed set is not listed
    from . import __version__

    material = {
        "format": FORMAT,
        "modelbuild": [__version__, binder.fingerprint],
        "python": [sys.version, sys.executable, sys.implementation.cache_tag, sys.flags.optimize, import_path()],
        "distributions": list(registry.distributions),
        "registry": [[info.name, info.entry] for info in registry],
        "root": str(root),
        "recipes_dir": str(recipes_dir),
        "recipes": [[str(p), _digest(data)] for p, data in sorted(texts.items())],
        "overrides": overrides,
    }
    return _digest(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())[:40]


# -- reading an entry ---------------------------------------------------------------


def _load(path: Path, key: str, root: Path, texts: dict[Path, bytes], registry: Registry,
          index: CodeIndex) -> BuildGraph | None:
    try:
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        if entry.get("format") != FORMAT or entry.get("key") != key:
            return None
        return _graph_of(entry, root, texts, registry, index)
    except (KeyError, TypeError, ValueError, AttributeError):  # a damaged entry: bind afresh
        return None


def _graph_of(entry: dict[str, Any], root: Path, texts: dict[Path, bytes], registry: Registry,
              index: CodeIndex) -> BuildGraph | None:
    step_facts: dict[str, StepFacts] = {}
    for name, rec in entry["steps"].items():
        if name not in registry:
            return None
        info = registry.get(name)
        if info.entry != rec["entry"]:
            return None
        facts = StepFacts.from_json(rec["facts"])
        if info.code_if(rec["fingerprint"], facts.code_modules, facts.code_files, index) is None:
            return None  # the step's code changed: its params model or checks may have too
        step_facts[name] = facts
    recipes = Recipes(root=root, files=sorted(texts), default=entry["default"])
    nodes: dict[str, Node] = {}
    edges: dict[str, set[str]] = {}
    for rec in entry["targets"]:
        t = rec["target"]
        target = Target(name=t["name"], step=t["step"], inputs=t["inputs"], params=t["params"],
                        description=t["description"], file=t["file"])
        recipes.targets[target.name] = target
        nodes[target.name] = Node(target, registry.get(target.step), rec["slots"],
                                  step_facts=step_facts[target.step], facts=NodeFacts.from_json(rec["facts"]))
        edges[target.name] = set()
    for node in nodes.values():
        for producers in node.inputs.values():
            for producer in producers if isinstance(producers, list) else [producers]:
                edges[producer].add(node.name)
    return BuildGraph(recipes, nodes, edges)


# -- writing one ----------------------------------------------------------------


def _save(folder: Path, key: str, graph: BuildGraph, registry: Registry, index: CodeIndex, binder: StepCode) -> None:
    entry = _entry_of(graph, registry, index, binder)
    if entry is None:
        return
    entry["key"] = key
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return
    _write(folder / f"{key}.json", json.dumps(entry, separators=(",", ":")))
    _prune(folder)


def _entry_of(graph: BuildGraph, registry: Registry, index: CodeIndex, binder: StepCode) -> dict[str, Any] | None:
    """The entry for a freshly bound graph, or None if it cannot be kept exactly."""
    steps: dict[str, Any] = {}
    codes: list[StepCode] = [binder]
    for node in graph.nodes.values():
        if node.step_name in steps:
            continue
        code = node.info.code(index)
        codes.append(code)
        steps[node.step_name] = {"entry": node.info.entry, "fingerprint": code.fingerprint,
                                 "facts": node.step_facts.to_json()}
    # The modules this process imported must be the content that was hashed:
    # no code file may have changed since it started (or within the racy margin before).
    since = _trusted_before_ns()
    for code in codes:
        for f in code.files:
            if f.signature is None or max(f.signature[3], f.signature[4]) >= since:
                return None
            try:
                st = os.stat(f.path)
            except OSError:
                return None
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != tuple(f.signature):
                return None
    targets = []
    for node in graph.nodes.values():
        if node.facts is None:
            return None
        t = node.target
        target = {"name": t.name, "step": t.step, "inputs": t.inputs, "params": t.params,
                  "description": t.description, "file": t.file}
        rec = {"target": target, "slots": node.inputs, "facts": node.facts.to_json()}
        if not round_trips(rec):
            return None  # e.g. a TOML date in the params, a NaN
        if node.facts.asked and not _reloads(node):
            return None
        targets.append(rec)
    entry = {"format": FORMAT, "default": graph.recipes.default, "steps": steps, "targets": targets}
    if not round_trips(entry["steps"]):
        return None
    for node in graph.nodes.values():  # read back, the facts are these very facts
        if StepFacts.from_json(steps[node.step_name]["facts"]) != node.step_facts:
            return None
    return entry


def _trusted_before_ns() -> int:
    """A code file last changed before this instant is the one this process imported:
    the process's start (when its first module was read) minus the racy margin."""
    from .fastpath import process_start_ns

    return process_start_ns() - _RACY_NS


def _reloads(node: Node) -> bool:
    """Loading the node from its entry (validate the raw params, apply what was asked) gives its params."""
    twin = Node(node.target, node.info, node.inputs, step_facts=node.step_facts, facts=node.facts)
    try:
        return same_json(twin.params.model_dump(mode="json"), node.params.model_dump(mode="json"))
    except Exception:  # noqa: BLE001 - any doubt: do not keep it
        return False


def _prune(folder: Path) -> None:
    try:
        entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    except OSError:
        return
    kept = 0
    for path in entries:
        if path.name == "imports.json":
            continue
        kept += 1
        if kept > KEEP:
            path.unlink(missing_ok=True)


def clear(cache_dir: Path) -> None:
    """Drop every bound-graph entry of a cache (they are only a shortcut)."""
    folder = Path(cache_dir) / "bound"
    if folder.is_dir():
        for path in folder.glob("*.json"):
            path.unlink(missing_ok=True)

