"""The public library API. Each operation is its own module; the CLI calls these.

Example::

    from modelbuild.api import build, plan, explain
    result = build(["tiny-llama"])
    print(result.ok, {n: r.status for n, r in result.targets.items()})
"""

from .build import build
from .cache import cache_clear, cache_gc, cache_stats, cache_verify
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

__all__ = [
    "build",
    "plan",
    "explain",
    "graph",
    "list_targets",
    "list_steps",
    "schema",
    "cache_stats",
    "cache_verify",
    "cache_gc",
    "cache_clear",
    "clean",
    "report",
    "lock",
    "release",
    "release_verify",
    "verify",
    "whence",
]
