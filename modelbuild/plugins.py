"""The step registry: step plugins found through the ``modelbuild.steps`` entry points.

Built-in steps are registered by modelbuild's own ``pyproject.toml`` under the
same group as third-party ones. Loading a step imports only its module, which
must stay light (no torch at module level), and only when a recipe uses it.

Every build discovers the plugins, so discovery is kept cheap: it reads the
``entry_points.txt`` of the distributions on ``sys.path`` directly, as
``importlib.metadata`` would (the first distribution of a name wins), instead
of building a ``Distribution`` object per installed package and parsing each
plugin's METADATA for its name (about 20 ms per build on the development VM,
with torch & co. installed). A distribution's name is read only when asked
for (``StepInfo.dist``). Anything unusual (a zip on ``sys.path``, a custom
distribution finder) falls back to ``importlib.metadata``.

Example::

    >>> registry = Registry.discover()
    >>> registry.get("command").name
    'command'
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InternalError

if TYPE_CHECKING:
    from .fingerprint import StepCode
    from .step import Step

__all__ = ["Registry", "StepInfo", "source_files"]

GROUP = "modelbuild.steps"


@dataclass
class StepInfo:
    """A registered step: its name, where it comes from, and (lazily) its class."""

    name: str
    entry: str  # "module:Class"
    #: The distribution's name, or an object whose ``name`` is read on first use
    #: (reading it parses METADATA: about a millisecond per plugin).
    _dist: Any = field(default=None, repr=False)
    _code: "StepCode | None" = field(default=None, init=False, repr=False, compare=False)
    _code_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @cached_property
    def cls(self) -> "type[Step]":
        from .step import Step

        module_name, _, attr = self.entry.partition(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise InternalError(f"entry point {self.entry} is not a Step subclass")
        if cls.name != self.name:
            raise InternalError(
                f"step plugin {self.entry} calls itself '{cls.name}' but is registered as '{self.name}'"
            )
        return cls

    def instance(self) -> Step:
        return self.cls()

    @property
    def dist(self) -> str | None:
        """The name of the distribution that registers the step (None if unknown)."""
        if self._dist is not None and not isinstance(self._dist, str):
            self._dist = self._dist.name
        return self._dist

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    def code(self, index: Any = None) -> "StepCode":
        """The step's code: its module's first-party import closure (see
        :mod:`modelbuild.fingerprint`), computed once per ``StepInfo``.

        ``index`` (the store's database) keeps parse results across processes.
        """
        with self._code_lock:
            if self._code is None:
                from .fingerprint import step_code

                cls = self.cls
                try:
                    self._code = step_code(self.module, cls.code_modules, cls.code_files, index=index)
                except (ModuleNotFoundError, ValueError, OSError) as exc:
                    raise InternalError(f"step {self.name}: cannot fingerprint its code: {exc}") from exc
            return self._code

    def code_if(self, fingerprint: str, code_modules: tuple[str, ...], code_files: tuple[str, ...],
                index: Any = None) -> "StepCode | None":
        """The step's code, without importing it, if it still has ``fingerprint``; else None.

        ``code_modules`` and ``code_files`` are what the class declared when
        ``fingerprint`` was taken (a bound graph records them: graph_cache.py).
        The same files hashing to the same fingerprint means the same module,
        hence the same declarations; only then is the result kept as :meth:`code`'s.
        """
        with self._code_lock:
            if self._code is not None:
                return self._code if self._code.fingerprint == fingerprint else None
            from .fingerprint import step_code

            try:
                code = step_code(self.module, code_modules, code_files, index=index)
            except (ModuleNotFoundError, ValueError, OSError):
                return None  # binding afresh reports it
            if code.fingerprint != fingerprint:
                return None
            self._code = code
            return code

    @property
    def fingerprint(self) -> str:
        """Hash of the step's code (its import closure and declared data files)."""
        return self.code().fingerprint


def source_files(cls: "type[Step]") -> list[Path]:
    """The files whose content makes up a step class's fingerprint."""
    from .fingerprint import step_code

    return step_code(cls.__module__, cls.code_modules, cls.code_files).paths


class Registry:
    """Name -> :class:`StepInfo` for every installed step plugin."""

    def __init__(self, steps: dict[str, StepInfo], distributions: tuple[str, ...] | None = None):
        self._steps = dict(sorted(steps.items()))
        #: Every ``*.dist-info`` / ``*.egg-info`` directory on ``sys.path`` (``folder/name-version.dist-info``),
        #: as discovery saw them: which distributions, at which versions, are installed. None: not known.
        self.distributions = distributions

    @classmethod
    def discover(cls) -> "Registry":
        steps: dict[str, StepInfo] = {}
        listed: list[str] = []
        found = _scan_entry_points(listing=listed)
        scanned = found is not None  # else the installed set is only known to importlib.metadata
        if found is None:
            from importlib import metadata

            # the distribution's name is read only if asked for (StepInfo.dist)
            found = [(ep.name, ep.value, ep.dist) for ep in metadata.entry_points(group=GROUP)]
        for name, value, dist in found:
            # A later duplicate (e.g. two installs of one plugin) must not win silently.
            if name in steps and steps[name].entry != value:
                raise InternalError(
                    f"two plugins register step '{name}': {steps[name].entry} and {value}"
                )
            steps[name] = StepInfo(name, value, dist)
        return cls(steps, tuple(listed) if scanned else None)

    def names(self) -> list[str]:
        return list(self._steps)

    def __contains__(self, name: str) -> bool:
        return name in self._steps

    def get(self, name: str) -> StepInfo:
        return self._steps[name]

    def __iter__(self):
        return iter(self._steps.values())


# -- entry point discovery without importlib.metadata ----------------------------


class _DistName:
    """A distribution whose ``name`` is read from its METADATA on first use."""

    def __init__(self, folder: str):
        self.folder = folder

    @property
    def name(self) -> str | None:
        for meta in ("METADATA", "PKG-INFO"):
            try:
                with open(os.path.join(self.folder, meta), encoding="utf-8") as fh:
                    for line in fh:
                        if line.startswith("Name:"):
                            return line[5:].strip()
                        if not line.strip():
                            break
            except OSError:
                continue
        return None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _reads_sys_path(finder: Any) -> bool:
    """The ``importlib_metadata`` backport's finder (installed by importing it,
    as dask and others do) lists the same ``sys.path`` distributions as the
    standard library's ``PathFinder``: no reason to give up the fast scan."""
    cls = type(finder)
    return cls.__module__ == "importlib_metadata" and cls.__name__ == "MetadataPathFinder"


def _scan_entry_points(group: str = GROUP, listing: list[str] | None = None) -> list[tuple[str, str, _DistName]] | None:
    """(name, "module:attr", distribution) of every entry point of ``group``
    (``modelbuild.steps``, ``modelbuild.backends``), in ``sys.path`` order;
    None where only importlib.metadata can tell. ``listing`` receives every
    distribution directory seen (``folder/dir``), in the same order."""
    from importlib.machinery import PathFinder

    if any(f is not PathFinder and hasattr(f, "find_distributions") and not _reads_sys_path(f) for f in sys.meta_path):
        return None  # e.g. a zipimport-style finder that lists distributions of its own
    seen: set[str] = set()
    found = []
    for entry in sys.path:
        folder = entry or "."
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it if e.name.endswith((".dist-info", ".egg-info")))
        except NotADirectoryError:
            return None  # a zip file on sys.path: it may hold distributions
        except OSError:
            continue
        if listing is not None:
            listing.extend(os.path.join(folder, n) for n in names)
        for dist_dir in names:
            dist = _normalized(dist_dir.rpartition(".")[0].partition("-")[0])
            if dist in seen:
                continue  # importlib.metadata: the first distribution of a name wins
            seen.add(dist)
            path = os.path.join(folder, dist_dir)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if group not in text:
                continue
            section = None
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith(("#", ";")):
                    continue
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].strip()
                elif section == group and "=" in line:
                    name, _, value = line.partition("=")
                    found.append((name.strip(), value.strip(), _DistName(path)))
    return found
