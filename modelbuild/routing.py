"""Routing by requirements: a step's :class:`~modelbuild.step.Requirements` as Dask worker resources.

A Dask worker advertises abstract resources (``dask worker ... --resources
"macos=1,xcode=1"``) and a task submitted with ``resources={"macos": 1}`` only
runs on a worker that has them. This module turns what a step declares into
such a demand, and checks a demand against the workers a cluster has *before*
anything is submitted: Dask itself would keep a task no worker can take
waiting forever.

The mapping (docs/distributed.md):

- each platform is a resource of its name (``macos``, ``linux``); a step that
  accepts several platforms takes the first one some worker advertises;
- each tool is a resource of its name, except Xcode's tools (``xcrun``,
  ``xcodebuild``), which are all ``xcode``;
- ``memory_gb`` is a demand only when some worker advertises ``memory_gb``
  (a cluster that does not count memory is not asked to);
- ``cpu`` (if a worker advertises it) is how many threads a step there may use,
  never a demand.

Example::

    >>> demand(Requirements(platforms=("macos",), tools=("xcrun",)), [{"macos": 1, "xcode": 1}])
    {'macos': 1.0, 'xcode': 1.0}
    >>> lacking({"macos": 1.0}, [{"cpu": 8}])
    'no worker with macos'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .executor import Toolchain
from .step_types import Requirements  # light: no pydantic on a build's path

__all__ = ["TOOL_RESOURCES", "demand", "lacking", "describe_workers", "pick_toolchain"]

#: Tools whose resource is not their own name: Xcode's command-line tools come together.
TOOL_RESOURCES = {"xcrun": "xcode", "xcodebuild": "xcode", "xcode-select": "xcode"}

Resources = Mapping[str, float]


def demand(req: Requirements, workers: Iterable[Resources]) -> dict[str, float]:
    """The resources a task of a step with ``req`` is submitted with, given the workers' resources."""
    workers = list(workers)
    advertised = {name for w in workers for name in w}
    wanted: dict[str, float] = {}
    if req.platforms:
        # Dask resources cannot say "either": take a platform the cluster has (else the first, which fails the check).
        platform = next((p for p in req.platforms if p in advertised), req.platforms[0])
        wanted[platform] = 1.0
    for tool in req.tools:
        wanted[TOOL_RESOURCES.get(tool, tool)] = 1.0
    if req.memory_gb and "memory_gb" in advertised:
        wanted["memory_gb"] = float(req.memory_gb)
    return wanted


def lacking(wanted: Resources, workers: Iterable[Resources]) -> str | None:
    """Why no single worker can take a task demanding ``wanted`` ("no worker with macos"), or None."""
    workers = list(workers)
    if any(all(w.get(name, 0) >= amount for name, amount in wanted.items()) for w in workers):
        return None
    if not workers:
        return "no worker in the cluster"
    absent = [name for name in wanted if not any(name in w for w in workers)]
    if absent:
        return "no worker with " + " and ".join(absent)
    small = [name for name, amount in wanted.items() if not any(w.get(name, 0) >= amount for w in workers)]
    if small:
        return "no worker with " + " and ".join(f"{name}>={_num(wanted[name])}" for name in small)
    return "no worker with all of " + ", ".join(sorted(wanted))


def describe_workers(workers: Mapping[str, Resources]) -> str:
    """The cluster's resources for an error message: ``w1 (cpu=8, linux=1); mac (macos=1)``."""
    if not workers:
        return "no workers"
    parts = []
    for name, res in sorted(workers.items()):
        shown = ", ".join(f"{k}={_num(v)}" for k, v in sorted(res.items())) or "no resources"
        parts.append(f"{name} ({shown})")
    return "; ".join(parts)


def pick_toolchain(answers: Mapping[str, Any]) -> Toolchain | None:
    """The toolchain to key a routed step with, from what each capable worker said (name -> versions,
    or the exception or None of a worker that could not say); None if none could.

    Workers are grouped by their answer; the largest group wins (a tie: the
    group holding the alphabetically first name) and the step is pinned to it,
    as Bazel matches a remote action's platform properties to its executors:

    >>> pick_toolchain({"mac-2": {"xcode": "16.1"}, "mac-1": {"xcode": "16.0"}}).note
    'keyed with the toolchain of worker mac-1 (runs only there; mac-2 has xcode 16.1)'
    """
    good = {n: dict(v) for n, v in answers.items() if isinstance(v, Mapping)}
    if not good:
        return None
    groups: dict[str, list[str]] = {}
    for name in sorted(good):
        groups.setdefault(json.dumps(good[name], sort_keys=True), []).append(name)
    chosen = min(groups.values(), key=lambda names: (-len(names), names[0]))
    versions = good[chosen[0]]
    note = f"keyed with the toolchain of {'worker' if len(chosen) == 1 else 'workers'} {', '.join(chosen)}"
    others = sorted(n for n in answers if n not in chosen)
    if others:
        parts = []
        for name in others:
            theirs = good.get(name)
            if theirs is None:
                answer = answers[name]
                why = f"{type(answer).__name__}: {answer}".splitlines()[0][:200] if isinstance(answer, BaseException) else "no answer"
                parts.append(f"{name} did not say ({why})")
                continue
            dist = next(d for d in sorted(set(versions) | set(theirs)) if versions.get(d) != theirs.get(d))
            parts.append(f"{name} has {dist} {theirs[dist]}" if dist in theirs else f"{name} has no {dist}")
        note += f" (runs only there; {'; '.join(parts)})"
    return Toolchain(versions, tuple(chosen), note)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
