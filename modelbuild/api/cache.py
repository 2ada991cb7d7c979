"""``cache_stats``, ``cache_verify``, ``cache_gc``, ``cache_clear``: look after the store.

Example::

    cache_gc()      # keep what the last build of every target uses, drop the rest

Each call opens the store and closes it before returning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fastpath import forget_all
from ..history import History
from .workspace import Workspace

__all__ = ["cache_stats", "cache_verify", "cache_gc", "cache_clear"]


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
