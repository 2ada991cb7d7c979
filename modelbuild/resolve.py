"""Pinning moving references before a key is computed (``Step.resolve``), once per target and build.

A recipe may name something that moves while the recipe stays the same: a
branch of a Hub repo (``revision = "main"``), a module looked up in the
project. Keyed as written, such a target would stay "up to date" after the
thing moved, or its key would depend on where the command was started. So the
engine asks the step to pin it (``main`` -> ``main@<commit>``; the module ->
its project file) and keys, runs and watches the target with the pinned
params: a moved branch is a changed parameter, hence a miss that says so.

Network resolutions are remembered in ``<cache>/resolved/`` for
:data:`RESOLVE_TTL_S` seconds (``MODELBUILD_RESOLVE_TTL`` overrides it, ``0``
asks every time); ``--refresh`` (``refresh=True``) asks again now. What the
step wants the user to see (an offline build that used an old resolution) is
kept as notes, shown beside the target's decision.

Example::

    resolver = Resolver(project=root, cache_dir=store.root, refresh=False)
    params = resolver.params(node)       # resolved once, then remembered
    resolver.notes(node.name)            # ["offline: revision main taken as ..."]
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .step_types import ResolveContext  # light: a cached bound graph keys without pydantic

if TYPE_CHECKING:
    from .step import Params
    from .graph import Node

__all__ = ["Resolver", "RESOLVE_TTL_S", "TTL_ENV", "resolve_ttl"]

#: How long a remembered resolution (a branch's commit) is reused without asking again.
RESOLVE_TTL_S = 600.0
TTL_ENV = "MODELBUILD_RESOLVE_TTL"


def resolve_ttl() -> float:
    """:data:`RESOLVE_TTL_S`, or ``MODELBUILD_RESOLVE_TTL`` (seconds) when set to a number."""
    raw = os.environ.get(TTL_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else RESOLVE_TTL_S
    except ValueError:
        return RESOLVE_TTL_S


class Resolver:
    """Resolves each target's params once per build (thread-safe), remembering notes and expiry."""

    def __init__(self, project: Path, cache_dir: Path, *, refresh: bool = False, ttl_s: float | None = None):
        self.project = Path(project)
        self.cache = Path(cache_dir) / "resolved"
        self.refresh = refresh
        self.ttl_s = resolve_ttl() if ttl_s is None else ttl_s
        self._params: dict[str, Params] = {}
        self._notes: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        #: The earliest time a resolution of this build stops being good (None: none is time-bound).
        self.valid_until_ns: int | None = None

    def params(self, node: "Node") -> Params:
        """``node``'s params with moving references pinned (resolved on first use)."""
        with self._lock:
            if node.name in self._params:
                return self._params[node.name]
        ctx = ResolveContext(project=self.project, cache=self.cache, refresh=self.refresh, ttl_s=self.ttl_s)
        resolved = node.step.resolve(node.params, ctx)
        with self._lock:
            self._params[node.name] = resolved
            self._notes[node.name] = list(ctx.notes)
            if ctx.valid_until_ns is not None:
                self.valid_until_ns = min(self.valid_until_ns or ctx.valid_until_ns, ctx.valid_until_ns)
        return resolved

    def known(self, node: "Node") -> Params:
        """The resolved params if this build resolved them already, else the params as written (no I/O)."""
        with self._lock:
            return self._params.get(node.name, node.params)

    def notes(self, name: str) -> list[str]:
        with self._lock:
            return list(self._notes.get(name, ()))
