"""``cache_stats``, ``cache_verify``, ``cache_gc``, ``cache_clear``: look after the store.

Example::

    cache_gc()      # keep what the last build of every target uses, drop the rest
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fastpath import forget_all
from ..history import History
from .workspace import Workspace

__all__ = ["cache_stats", "cache_verify", "cache_gc", "cache_clear"]


def _store(project, cache_dir):
    ws = Workspace.locate(project, cache_dir=cache_dir)
    return ws.store(), ws.cache_dir


def cache_stats(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> dict[str, Any]:
    store, root = _store(project, cache_dir)
    return {"cache_dir": str(root), **store.stats()}


def cache_verify(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> list[str]:
    """Re-hash every blob; the problems found (empty when all is well)."""
    store, _ = _store(project, cache_dir)
    return store.verify()


def cache_gc(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Drop action records no target's last build uses, and blobs no record uses."""
    store, root = _store(project, cache_dir)
    forget_all(root)
    return store.gc(History(root).keys())


def cache_clear(*, project: Path | str | None = None, cache_dir: Path | str | None = None) -> None:
    store, root = _store(project, cache_dir)
    forget_all(root)
    store.clear()
    History(root).clear()
