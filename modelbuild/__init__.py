"""modelbuild: declarative, content-addressed builds of on-device model artifacts.

The public API is listed in ``__all__`` and loaded lazily, so that importing
``modelbuild`` (and ``modelbuild.cli``) stays cheap::

    import modelbuild
    result = modelbuild.build(["tiny-llama"])

Step plugins use :mod:`modelbuild.step`; see ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # operations
    "build": "modelbuild.api",
    "plan": "modelbuild.api",
    "explain": "modelbuild.api",
    "graph": "modelbuild.api",
    "list_targets": "modelbuild.api",
    "list_steps": "modelbuild.api",
    "schema": "modelbuild.api",
    "cache_stats": "modelbuild.api",
    "cache_verify": "modelbuild.api",
    "cache_gc": "modelbuild.api",
    "cache_clear": "modelbuild.api",
    "cache_push": "modelbuild.api",
    "cache_pull": "modelbuild.api",
    "clean": "modelbuild.api",
    "report": "modelbuild.api",
    "lock": "modelbuild.api",
    "release": "modelbuild.api",
    "release_verify": "modelbuild.api",
    "verify": "modelbuild.api",
    "whence": "modelbuild.api",
    # results
    "BuildResult": "modelbuild.engine",
    "TargetResult": "modelbuild.engine",
    "Status": "modelbuild.outcome",
    "Blocker": "modelbuild.outcome",
    # the step API
    "Step": "modelbuild.step",
    "Params": "modelbuild.step",
    "Input": "modelbuild.step",
    "Requirements": "modelbuild.step",
    "Verdict": "modelbuild.step",
    "StepContext": "modelbuild.step",
    "Artifact": "modelbuild.artifacts",
    # errors
    "ModelbuildError": "modelbuild.errors",
    "RecipeError": "modelbuild.errors",
    "StepError": "modelbuild.errors",
    "StepFailed": "modelbuild.errors",
    "PlatformUnavailable": "modelbuild.errors",
    "CacheCorrupt": "modelbuild.errors",
    "StoreError": "modelbuild.errors",
    "InternalError": "modelbuild.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelbuild' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps each public name bound to its API object.

    Importing a submodule binds it on its package: once ``modelbuild.graph``
    (the BuildGraph module) was loaded, ``modelbuild.graph`` would be that
    module, not the :func:`modelbuild.api.graph` operation. Submodules stay
    importable by their full name (``from modelbuild.graph import BuildGraph``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
