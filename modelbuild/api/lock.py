"""``lock``: write modelbuild.lock; ``frozen_graph``: the check ``build --frozen`` runs.

Example::

    from modelbuild.api import lock
    result = lock(["tiny-llama"])          # builds the fetch targets, records what they resolved to
    print(result.path, sorted(result.lock.fetch))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelbuildError, RecipeError
from ..lockfile import (
    LOCK_NAME,
    Lock,
    LockStale,
    current_toolchain,
    fetch_identity,
    locked_overrides,
    new_epoch,
    recipe_digest,
    resolution_differences,
    stale,
)
from .workspace import Workspace

__all__ = ["lock", "LockResult", "frozen_graph"]


@dataclass
class LockResult:
    path: Path
    lock: Lock
    changed: bool

    def to_json(self) -> dict:
        return {"path": str(self.path), "changed": self.changed, **self.lock.to_data()}


def _fetches(graph, names: list[str]) -> list[str]:
    return [n for n in graph.closure(names) if graph.nodes[n].step.name == "fetch"]


def resolve_fetches(ws: Workspace, graph, fetches: list[str], *, jobs: int | None = None) -> dict[str, dict]:
    """Build the fetch targets (cached ones are instant) and read what each resolved to."""
    from ..engine import Engine

    if not fetches:
        return {}
    with ws.store() as store:
        result = Engine(graph, store, project=ws.root, out_dir=ws.out_dir, jobs=jobs).build(fetches)
        failed = [f"{n}: {r.status} ({r.reason})" for n, r in result.targets.items() if not r.ok]
        if failed:
            raise ModelbuildError("cannot resolve the fetch targets: " + "; ".join(failed))
        entries = {}
        for name in fetches:
            record = store.get_action(result.targets[name].key or "")
            if record is None:
                raise ModelbuildError(f"{name}: the cache lost the fetch's record while locking")
            ckpt = next((e for e in record.manifest.entries if e.path == "checkpoint.json"), None)
            data = json.loads(store.blob_path(ckpt.digest, ckpt.executable).read_text()) if ckpt else {}
            entries[name] = fetch_identity(record, data)
        return entries


def lock(
    targets: list[str] | None = None,
    *,
    update: list[str] | None = None,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    jobs: int | None = None,
) -> LockResult:
    """Write ``modelbuild.lock`` for ``targets`` (default: the recipes' default target).

    Every fetch target of their closure is built (a cached fetch costs
    nothing) and its resolved identity recorded. With ``update``, only the
    named fetch targets are re-resolved; the other entries are kept from the
    existing lock.
    """
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    path = ws.root / LOCK_NAME
    old = Lock.read(path) if path.exists() else None
    if not targets and old is not None:
        targets = [t for t in old.targets if t in graph.nodes] or None
    names = graph.resolve_names(list(targets or []))
    fetches = _fetches(graph, names)
    if update:
        unknown = [u for u in update if u not in fetches]
        if unknown:
            raise RecipeError(f"--update {', '.join(unknown)}: not a fetch target of the locked chain "
                              f"(its fetch targets: {', '.join(fetches) or 'none'})")
        keep = {k: v for k, v in (old.fetch if old else {}).items() if k in fetches and k not in update}
        todo = [f for f in fetches if f not in keep]
    else:
        keep, todo = {}, fetches
    entries = {**keep, **resolve_fetches(ws, graph, todo, jobs=jobs)}
    new = Lock(targets=sorted(names), recipe_digest=recipe_digest(graph, sorted(names)),
               toolchain=current_toolchain(), fetch=entries)
    new.source_date_epoch = new_epoch(old, new)
    changed = old is None or old.dumps() != new.dumps()
    if changed:
        new.write(path)
    return LockResult(path, new, changed)


def frozen_graph(ws: Workspace, graph, names: list[str], overrides: list[str] | None, *, jobs: int | None = None):
    """Check the lock for a ``--frozen`` build and return the graph to build.

    Raises :class:`LockStale` listing everything stale: a missing lock, a
    changed recipe digest, a different toolchain, a fetch not in the lock, or
    a fetch that resolves differently now (checked by building the fetch
    targets first, at their locked revisions). The returned graph pins every
    floating hf revision to its locked commit (:func:`locked_overrides`).
    """
    path = ws.root / LOCK_NAME
    lk = Lock.read(path) if path.exists() else None
    problems = stale(lk, graph, names)
    if problems:
        raise LockStale(problems)
    pins = locked_overrides(lk, graph, names)
    if pins:
        graph = ws.graph([*(overrides or []), *pins])
    entries = resolve_fetches(ws, graph, _fetches(graph, names), jobs=jobs)
    for name, now in entries.items():
        problems.extend(resolution_differences(name, lk.fetch[name], now))
    if problems:
        raise LockStale(problems)
    return graph
