"""The public library API. Each operation is its own module; the CLI calls these.

Example::

    from modelbuild.api import build, plan, explain
    result = build(["tiny-llama"])
    print(result.ok, {n: r.status for n, r in result.targets.items()})

Each operation's module is imported when the operation is first used, so a
``modelbuild build`` does not pay for the release, lock or report modules
(and what they import) before it can say what is up to date.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

#: operation -> the module of this package that defines it
_HOME = {
    "build": "build",
    "plan": "plan",
    "explain": "explain",
    "graph": "graph",
    "list_targets": "listing",
    "list_steps": "listing",
    "schema": "listing",
    "cache_stats": "cache",
    "cache_verify": "cache",
    "cache_gc": "cache",
    "cache_clear": "cache",
    "cache_push": "cache",
    "cache_pull": "cache",
    "clean": "clean",
    "report": "report",
    "lock": "lock",
    "release": "release",
    "release_verify": "release",
    "verify": "verify",
    "whence": "whence",
}

__all__ = list(_HOME)

if TYPE_CHECKING:  # for type checkers and editors; at run time see __getattr__
    from .build import build
    from .cache import cache_clear, cache_gc, cache_pull, cache_push, cache_stats, cache_verify
    from .clean import clean
    from .explain import explain
    from .graph import graph
    from .listing import list_steps, list_targets, schema
    from .lock import lock
    from .plan import plan
    from .release import release, release_verify
    from .report import report
    from .verify import verify
    from .whence import whence


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'modelbuild.api' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _API(types.ModuleType):
    """Most operations share their module's name (``api.build`` is the function
    of ``api/build.py``). Importing a submodule makes the import system set it
    as an attribute of this package; keep the operation there instead, as the
    eager ``from .build import build`` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOME.get(name) == name and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _API
