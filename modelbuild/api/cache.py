"""``cache_stats``, ``cache_verify``, ``cache_gc``, ``cache_clear``: look after the store;
``cache_push``, ``cache_pull``: share results through the remote cache (docs/remote.md).

Example::

    cache_gc()      # keep what the last build of every target uses, drop the rest
    cache_push(["tiny-llama"], remote_cache="s3://team-bucket/modelbuild")

Each call opens the store and closes it before returning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fastpath import forget_all
from ..history import History
from .workspace import Workspace

__all__ = ["cache_stats", "cache_verify", "cache_gc", "cache_clear", "cache_push", "cache_pull", "Transfer"]


def _workspace(project, cache_dir):
    return Workspace.locate(project, cache_dir=cache_dir)


def cache_stats(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> dict[str, Any]:
    ws = _workspace(project, cache_dir)
    with ws.store() as store:
        return {"cache_dir": str(ws.cache_dir), **store.stats()}


def cache_verify(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> list[str]:
    """Re-hash every blob; the problems found (empty when all is well)."""
    with _workspace(project, cache_dir).store() as store:
        return store.verify()


def cache_gc(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Drop action records no target's last build uses, and blobs no record uses."""
    ws = _workspace(project, cache_dir)
    with ws.store() as store:
        forget_all(ws.cache_dir)
        return store.gc(History(ws.cache_dir).keys())


def cache_clear(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> None:
    ws = _workspace(project, cache_dir)
    with ws.store() as store:
        forget_all(ws.cache_dir)
        store.clear()
        History(ws.cache_dir).clear()
        from ..graph_cache import clear as clear_bound  # the bound graphs too: a clean slate

        clear_bound(ws.cache_dir)


@dataclass
class Transfer:
    """What ``cache_push`` / ``cache_pull`` did: target -> (state, detail), in build order.

    States: ``pushed``, ``already there`` (push); ``pulled``, ``already here``
    (pull); ``not built here``, ``not in the remote cache``, ``unavailable``,
    ``failed`` (with the reason in the detail). ``ok`` is False only for
    ``failed`` (a blob that failed its check, an upload error).
    """

    remote: str
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    blobs: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(state != "failed" for state, _ in self.rows.values())

    def to_json(self) -> dict[str, Any]:
        return {"format": "modelbuild-transfer/1", "remote": self.remote, "ok": self.ok, "blobs": self.blobs,
                "bytes": self.bytes, "warnings": self.warnings,
                "targets": {n: {"state": s, "detail": d} for n, (s, d) in self.rows.items()}}


def _decisions(ws, graph, names, store):
    """(name, decision) for the closure of ``names`` in build order, fed with predicted inputs (as ``plan``)."""
    from ..engine import Engine
    from ..outcome import TargetResult

    engine = Engine(graph, store, project=ws.root, out_dir=ws.out_dir)
    predicted: dict[str, TargetResult] = {}
    for name in graph.closure(names):
        node = graph.nodes[name]
        decision = engine.decide(node, {p: predicted[p] for p in graph.producers(name)})
        predicted[name] = TargetResult(name, node.step_name, decision.status,
                                       decision.reasons[0] if decision.reasons else "",
                                       digest=decision.digest, blocked_by=decision.blocked_by)
        yield name, decision


def _open(ws, remote_cache, *, upload: bool):
    from ..remote import RemoteUnavailable, open_remote

    remote = open_remote(ws.root, remote_cache, upload=upload, required=True)
    if remote is None:
        raise RemoteUnavailable("no remote cache: pass --remote-cache URL or set remote-cache in modelbuild.toml "
                                "(docs/remote.md)")
    return remote


def _unbuilt(decision) -> tuple[str, str]:
    from ..outcome import Kind

    if decision.kind in (Kind.UNAVAILABLE, Kind.SKIPPED):
        return "unavailable", "; ".join(decision.reasons)
    if decision.kind == Kind.ERROR:
        return "failed", "; ".join(decision.reasons)
    return "not built here", "build it first (" + "; ".join(decision.reasons) + ")"


def cache_push(
    targets: list[str] | None = None,
    *,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    remote_cache: str | None = None,
) -> Transfer:
    """Upload the cached results of ``targets`` and of every step they depend on.

    The chain is pushed, not only the final artifact: another machine needs each
    step's record to compute the keys of the steps after it. Results this
    cache does not hold (never built, or built with other inputs) are listed
    as ``not built here``. The remote must answer (``RemoteUnavailable``).
    """
    from ..errors import ModelbuildError
    from ..outcome import Kind

    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    remote = _open(ws, remote_cache, upload=True)
    result = Transfer(remote.shown)
    with ws.store() as store:
        # The remote answers for what this cache lacks: a result a lazy build left there
        # (docs/remote.md) is "already there", and the keys after it can still be computed.
        store.remote = remote
        for name, decision in _decisions(ws, graph, names, store):
            record = decision.prepared.hit if decision.prepared is not None else None
            if decision.kind != Kind.HIT or record is None:
                result.rows[name] = _unbuilt(decision)
                continue
            if store.from_remote(decision.prepared.key) is not None:
                result.rows[name] = ("already there", "")
                continue
            before = remote.stats.bytes_pushed, remote.stats.blobs_pushed
            try:
                fresh = remote.push(record, store)
            except ModelbuildError as err:
                result.rows[name] = ("failed", str(err))
                continue
            sent = remote.stats.blobs_pushed - before[1]
            size = remote.stats.bytes_pushed - before[0]
            result.rows[name] = ("pushed" if fresh or sent else "already there",
                                 f"{sent} blob(s), {size} bytes" if sent else "")
    result.blobs, result.bytes = remote.stats.blobs_pushed, remote.stats.bytes_pushed
    result.warnings = list(remote.warnings)
    return result


def cache_pull(
    targets: list[str] | None = None,
    *,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    remote_cache: str | None = None,
) -> Transfer:
    """Download the results of ``targets`` and of the steps they depend on into this cache.

    Every blob is verified on arrival; ``out/`` is not touched (``modelbuild
    build`` then restores them at once). A result the remote does not hold is
    listed as ``not in the remote cache``.
    """
    from ..errors import CacheCorrupt
    from ..outcome import Kind

    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    remote = _open(ws, remote_cache, upload=False)
    result = Transfer(remote.shown)
    with ws.store() as store:
        store.remote = remote
        for name, decision in _decisions(ws, graph, names, store):
            record = decision.prepared.hit if decision.prepared is not None else None
            if decision.kind != Kind.HIT or record is None:
                state, detail = _unbuilt(decision)
                if state == "not built here":
                    state, detail = "not in the remote cache", "; ".join(decision.reasons)
                result.rows[name] = (state, detail)
                continue
            if store.from_remote(decision.prepared.key) is None:
                result.rows[name] = ("already here", "")
                continue
            before = remote.stats.bytes_pulled, remote.stats.blobs_pulled
            try:
                remote.settle(record.manifest, store)
            except CacheCorrupt as err:
                result.rows[name] = ("failed", str(err))
                continue
            got = remote.stats.blobs_pulled - before[1]
            result.rows[name] = ("pulled", f"{got} blob(s), {remote.stats.bytes_pulled - before[0]} bytes")
    result.blobs, result.bytes = remote.stats.blobs_pulled, remote.stats.bytes_pulled
    result.warnings = list(remote.warnings)
    return result
