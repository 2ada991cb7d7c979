"""The step registry: step plugins found through the ``modelbuild.steps`` entry points.

Built-in steps are registered by modelbuild's own ``pyproject.toml`` under the
same group as third-party ones. Loading a step imports only its module, which
must stay light (no torch at module level).

Example::

    >>> registry = Registry.discover()
    >>> registry.get("command").name
    'command'
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

from .errors import InternalError
from .step import Step

__all__ = ["Registry", "StepInfo", "source_files"]

GROUP = "modelbuild.steps"


@dataclass
class StepInfo:
    """A registered step: its name, where it comes from, and (lazily) its class."""

    name: str
    entry: str  # "module:Class"
    dist: str | None = None

    @cached_property
    def cls(self) -> type[Step]:
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

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the source of the step's module and its declared code modules."""
        h = hashlib.blake2b(digest_size=16)
        for path in source_files(self.cls):
            h.update(path.name.encode())
            h.update(b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
        return h.hexdigest()


def source_files(cls: type[Step]) -> list[Path]:
    """The source files whose content makes up a step's fingerprint."""
    modules = [cls.__module__, *cls.code_modules]
    files = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise InternalError(f"step {cls.name}: cannot find source of module {name}")
        files.append(Path(spec.origin))
    return files


class Registry:
    """Name -> :class:`StepInfo` for every installed step plugin."""

    def __init__(self, steps: dict[str, StepInfo]):
        self._steps = dict(sorted(steps.items()))

    @classmethod
    def discover(cls) -> "Registry":
        steps: dict[str, StepInfo] = {}
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            # A later duplicate (e.g. two installs of one plugin) must not win silently.
            if ep.name in steps and steps[ep.name].entry != ep.value:
                raise InternalError(
                    f"two plugins register step '{ep.name}': {steps[ep.name].entry} and {ep.value}"
                )
            steps[ep.name] = StepInfo(ep.name, ep.value, dist)
        return cls(steps)

    def names(self) -> list[str]:
        return list(self._steps)

    def __contains__(self, name: str) -> bool:
        return name in self._steps

    def get(self, name: str) -> StepInfo:
        return self._steps[name]

    def __iter__(self):
        return iter(self._steps.values())
