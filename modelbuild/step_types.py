"""The light half of the step API: values the engine needs without pydantic.

A full-check build whose bound graph is cached (graph_cache.py) decides every
target without importing pydantic or any step module, yet it still resolves,
routes and keys targets. What it uses of the step API lives here, in plain
dataclasses and functions; :mod:`modelbuild.step` re-exports all of it, so
plugins keep importing from there.

Example::

    >>> unmet_requirement(Requirements(platforms=("nowhere",)))
    'nowhere'
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Requirements", "ResolveContext", "host_platform", "unmet_requirement", "installed_versions"]


@dataclass(frozen=True)
class Requirements:
    """What a step needs of its host.

    ``platforms``: any of ``"linux"``, ``"macos"`` (empty = any);
    ``tools``: executables that must be on ``PATH``;
    ``memory_gb``: a rough peak, used for scheduling and warnings.
    """

    platforms: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    memory_gb: float | None = None


def host_platform() -> str:
    """``"macos"``, ``"linux"`` or ``sys.platform``.

    ``MODELBUILD_HOST_PLATFORM`` overrides it, for tests of platform routing.
    """
    forced = os.environ.get("MODELBUILD_HOST_PLATFORM")
    if forced:
        return forced
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    return sys.platform


def unmet_requirement(req: Requirements) -> str | None:
    """What this host lacks of ``req`` ("macOS", "xcrun on PATH"), or None."""
    import shutil

    plat = host_platform()
    if req.platforms and plat not in req.platforms:
        names = {"macos": "macOS", "linux": "Linux"}
        return " or ".join(names.get(p, p) for p in req.platforms)
    for tool in req.tools:
        if shutil.which(tool) is None:
            return f"{tool} on PATH"
    return None


def installed_versions(dists: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Installed version of each distribution (``"not installed"`` if absent):
    what ``Step.toolchain_versions`` puts into the action key by default."""
    if not dists:
        return {}
    from importlib import metadata  # ~30 ms to import; steps without a toolchain never need it

    versions = {}
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass
class ResolveContext:
    """What ``Step.resolve`` gets.

    - ``project``: the project root
    - ``cache``: a directory kept across builds (in the cache) where a step may
      remember resolutions, e.g. which commit a branch named
    - ``refresh``: ``--refresh`` was given: resolve again, ignore what was remembered
    - ``ttl_s``: how long a remembered resolution may be reused without asking again
    - ``note(text)``: a line the user must see beside the target's decision
      (``plan``, ``build``), e.g. that an offline build used an old resolution
    - ``expires(ns)``: the resolution is good until that time (``time.time_ns()``);
      the no-op fast path does not claim "up to date" past it
    """

    project: Path
    cache: Path
    refresh: bool = False
    ttl_s: float = 600.0
    notes: list[str] = field(default_factory=list)
    valid_until_ns: int | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def expires(self, when_ns: int) -> None:
        self.valid_until_ns = when_ns if self.valid_until_ns is None else min(self.valid_until_ns, when_ns)
