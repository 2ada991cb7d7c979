"""``modelbuild.lock``: what every input of a build resolved to, committed by users.

The lock is TOML, written with sorted keys one value per line so that a
change reads as a small diff. It holds:

- ``targets``: the targets it was made for (their closures are covered);
- ``recipe_digest``: a digest of the resolved targets of those closures (step,
  inputs, parameters with defaults filled in), so editing an unrelated
  target does not make the lock stale;
- ``source_date_epoch``: when the lock's content last changed; a release uses
  it as the archive's mtime unless ``SOURCE_DATE_EPOCH`` is set;
- ``[toolchain]``: python, platform and the versions of the ML toolchain;
- ``[fetch.NAME]``: for every ``fetch`` target, its resolved identity, read
  from the ``checkpoint.json`` the fetch wrote: hf -> ``commit`` and every
  file's sha256; URL -> ``sha256``; local path -> ``content`` digest;
  synthetic -> ``seed``, ``architecture``, ``size`` and ``generator`` (the
  fingerprint of the code that draws the weights); always ``artifact``, the
  checkpoint artifact's digest.

:func:`stale` lists what no longer matches (``build --frozen`` refuses to run
then); :func:`locked_overrides` is the hook that makes a build use the locked
resolution: every hf fetch whose recipe names a floating revision (``main``)
is built at the locked commit.

Example::

    lock = Lock.read(root / "modelbuild.lock")
    problems = stale(lock, graph, names)      # [] when the lock is current
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ModelbuildError
from .keys import canonical_json
from .hashing import hash_bytes

__all__ = [
    "LOCK_NAME",
    "LOCK_FORMAT",
    "TOOLCHAIN",
    "Lock",
    "LockStale",
    "current_toolchain",
    "recipe_digest",
    "fetch_identity",
    "stale",
    "resolution_differences",
    "locked_overrides",
    "dumps_toml",
]

LOCK_NAME = "modelbuild.lock"
LOCK_FORMAT = 1
#: Distributions whose versions the lock pins (missing ones are "not installed").
TOOLCHAIN = ("coremltools", "executorch", "huggingface_hub", "torch", "torchao", "transformers")
_SHA = re.compile(r"^[0-9a-f]{40}$")


class LockStale(ModelbuildError):
    """The lock is missing or does not match the recipes, the toolchain or a fetch."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "modelbuild.lock is stale: " + "; ".join(self.problems) + " (run `modelbuild lock` to update it)"


@dataclass
class Lock:
    """The parsed lock. ``fetch`` maps a fetch target to its resolved identity."""

    targets: list[str]
    recipe_digest: str
    toolchain: dict[str, str]
    fetch: dict[str, dict[str, Any]] = field(default_factory=dict)
    source_date_epoch: int = 0
    version: int = LOCK_FORMAT

    def to_data(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "targets": sorted(self.targets),
            "recipe_digest": self.recipe_digest,
            "source_date_epoch": self.source_date_epoch,
            "toolchain": dict(self.toolchain),
            "fetch": {k: dict(v) for k, v in self.fetch.items()},
        }

    def content_equals(self, other: "Lock") -> bool:
        a, b = self.to_data(), other.to_data()
        a.pop("source_date_epoch")
        b.pop("source_date_epoch")
        return a == b

    def dumps(self) -> str:
        header = (
            "# modelbuild.lock: what every input of the build resolved to.\n"
            "# Written by `modelbuild lock`; commit it. `modelbuild build --frozen` refuses a stale lock.\n"
        )
        return header + dumps_toml(self.to_data())

    def write(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.dumps())
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> "Lock":
        """Parse a lock; raises :class:`LockStale` naming the problem if it is missing or unreadable."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise LockStale([f"no lock at {path} (run `modelbuild lock`)"]) from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise LockStale([f"{path.name} is unreadable: {err}"]) from None
        if data.get("version") != LOCK_FORMAT:
            raise LockStale([f"{path.name} has format version {data.get('version')!r}, expected {LOCK_FORMAT}"])
        try:
            return cls(
                targets=[str(t) for t in data["targets"]],
                recipe_digest=str(data["recipe_digest"]),
                toolchain={str(k): str(v) for k, v in data["toolchain"].items()},
                fetch={str(k): dict(v) for k, v in data.get("fetch", {}).items()},
                source_date_epoch=int(data.get("source_date_epoch", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise LockStale([f"{path.name} is malformed ({err})"]) from None


# -- what is current -----------------------------------------------------------------


def current_toolchain() -> dict[str, str]:
    """python, platform, modelbuild and :data:`TOOLCHAIN` versions of this environment."""
    versions = {
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
    for dist in ("modelbuild", *TOOLCHAIN):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def recipe_digest(graph, names: list[str]) -> str:
    """Digest of the resolved targets in the closure of ``names`` (not of unrelated targets)."""
    doc = {}
    for name in graph.closure(names):
        node = graph.nodes[name]
        doc[name] = {"step": node.step.name, "inputs": node.inputs,
                     "params": node.params.model_dump(mode="json")}
    return hash_bytes(canonical_json(doc).encode())


def fetch_identity(record, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The lock entry of a fetch, from its action record and its ``checkpoint.json``."""
    source = str(checkpoint.get("source", ""))
    entry: dict[str, Any] = {"source": source, "artifact": record.manifest.digest}
    files = {name: info.get("sha256", "") for name, info in (checkpoint.get("files") or {}).items()}
    if source.startswith("hf://"):
        entry.update(kind="hf", revision=checkpoint.get("revision", "main"),
                     commit=checkpoint.get("resolved_commit", ""), files=files)
        if checkpoint.get("subdir"):
            entry["subdir"] = checkpoint["subdir"]
    elif source.startswith(("https://", "http://")):
        entry.update(kind="url", sha256=checkpoint.get("sha256", ""))
    elif checkpoint.get("synthetic"):
        entry.update(kind="synthetic", architecture=checkpoint.get("architecture"), size=checkpoint.get("size"),
                     seed=checkpoint.get("seed", 0), generator=record.key_record.get("step_code", ""))
    else:
        sources = record.key_record.get("sources") or {}
        entry.update(kind="local", content=next(iter(sources.values()), record.manifest.digest), files=files)
    return {k: v for k, v in entry.items() if v is not None}


#: Fields of a fetch entry that identify the content; the rest is informational.
_IDENTITY = {"hf": ("commit", "files"), "url": ("sha256",), "synthetic": ("artifact",), "local": ("content",)}


def resolution_differences(name: str, locked: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How a fetch's resolution today differs from the locked one (empty: the same)."""
    problems = []
    kind = locked.get("kind")
    for fld in _IDENTITY.get(kind, ("artifact",)):
        a, b = locked.get(fld), now.get(fld)
        if a == b:
            continue
        if fld == "files" and isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"fetch {name}: files differ from the lock: {', '.join(changed)}")
        else:
            problems.append(f"fetch {name}: {fld} {_short(a)} locked, {_short(b)} now")
    return problems


def _short(value: Any) -> str:
    text = str(value)
    return text[:15] if len(text) > 15 else text


def stale(lock: Lock | None, graph, names: list[str], *, toolchain: dict[str, str] | None = None) -> list[str]:
    """What makes ``lock`` unusable for building ``names`` (empty: it is current).

    Checks the lock covers the targets, the recipe digest of their closure,
    the toolchain, and that every fetch of the closure has an entry. Whether a
    fetch still resolves the same is checked after fetching
    (:func:`resolution_differences`).
    """
    if lock is None:
        return ["no modelbuild.lock (run `modelbuild lock`)"]
    problems = []
    covered = set(graph.closure([t for t in lock.targets if t in graph.nodes]))
    missing = [n for n in names if n not in covered]
    if missing:
        problems.append(f"target(s) not covered by the lock: {', '.join(missing)}")
    elif recipe_digest(graph, sorted(lock.targets)) != lock.recipe_digest:
        problems.append("recipe digest changed (a target of the locked chain was edited)")
    now = toolchain if toolchain is not None else current_toolchain()
    for dist in sorted(set(lock.toolchain) | set(now)):
        if dist == "modelbuild":
            continue  # informational: step code changes show in action keys, not here
        a, b = lock.toolchain.get(dist, "(unlocked)"), now.get(dist, "not installed")
        if a != b:
            problems.append(f"toolchain differs: {dist} {a} locked, {b} installed")
    for name in graph.closure(names):
        if graph.nodes[name].step.name == "fetch" and name not in lock.fetch:
            problems.append(f"fetch {name} is not in the lock")
    return problems


def locked_overrides(lock: Lock, graph, names: list[str]) -> list[str]:
    """``--set`` overrides that pin each floating hf revision of the closure to its locked commit.

    This is the hook through which a frozen build uses the locked resolution
    instead of asking the Hub what ``main`` is today.
    """
    overrides = []
    for name in graph.closure(names):
        node = graph.nodes[name]
        entry = lock.fetch.get(name)
        if node.step.name != "fetch" or not entry or entry.get("kind") != "hf":
            continue
        commit = entry.get("commit") or ""
        revision = getattr(node.params, "revision", "")
        if _SHA.match(commit) and revision != commit:
            overrides.append(f"targets.{name}.revision={json.dumps(commit)}")
    return overrides


def new_epoch(old: Lock | None, new: Lock) -> int:
    """Keep the old ``source_date_epoch`` when nothing else changed, else now."""
    if old is not None and old.content_equals(new):
        return old.source_date_epoch
    return int(time.time())


# -- a small, stable TOML writer -------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in sorted(v.items())) + " }" if v else "{}"
    if v is None:
        raise TypeError("TOML has no null")
    raise TypeError(f"cannot write a {type(v).__name__} as TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """Sorted TOML: scalars first, then one ``[table]`` per nested dict (recursively).

    >>> print(dumps_toml({"b": 1, "a": {"x": "y", "t": {"k": [1, 2]}}}), end="")
    b = 1
    <BLANKLINE>
    [a]
    x = "y"
    <BLANKLINE>
    [a.t]
    k = [1, 2]
    """
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    for k in sorted(scalars):
        lines.append(f"{_key(k)} = {_value(scalars[k])}")
    for k in sorted(tables):
        _table(tables[k], [*path, k], lines)
