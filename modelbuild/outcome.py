"""Typed outcomes: what the engine decided for a target, and what happened to it.

Statuses, decisions and the reason a target was blocked are values, never
parsed back out of text: ``BuildResult.ok``, the skipped logic, the CLI's exit
code and ``plan`` read the typed fields; reason strings are for people.

The enums are ``StrEnum``: JSON reports, history files and comparisons such as
``status == "built"`` see the plain string.

Example::

    r = result.targets["after"]
    if r.status is Status.SKIPPED and r.blocked_by and not r.blocked_by.failed:
        print(f"{r.name} waits for {r.blocked_by.origin}, which needs another host")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import ActionRecord

__all__ = ["Status", "STATUSES", "Blocker", "Kind", "Decision", "Prepared", "TargetResult", "BuildResult"]


class Status(StrEnum):
    """What happened to a target in a build."""

    BUILT = "built"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNAVAILABLE = "unavailable"


STATUSES = tuple(Status)


@dataclass(frozen=True)
class Blocker:
    """Why a target was skipped: its input ``target`` did not produce an artifact.

    ``origin`` is the target where it started (``target`` itself, or further
    up when ``target`` was skipped too); ``failed`` says whether that was a
    failure (the build is not ok) or a step this host cannot run (it is).
    """

    target: str
    failed: bool
    origin: str
    #: What ``origin`` lacks, e.g. "needs macOS" (for people; not compared).
    detail: str = field(default="", compare=False)

    @classmethod
    def of(cls, producer: str, res: "TargetResult") -> "Blocker":
        """Why a target is skipped whose input ``producer`` came to ``res`` (not ok)."""
        if res.status == Status.SKIPPED and res.blocked_by is not None:
            up = res.blocked_by
            return cls(producer, up.failed, up.origin, up.detail)
        unavailable = res.status == Status.UNAVAILABLE
        return cls(producer, failed=not unavailable, origin=producer, detail=res.reason if unavailable else "")

    def describe(self) -> str:
        """One line for people, e.g. ``input b was skipped (a failed)``."""
        if self.origin == self.target:
            return f"input {self.target} " + ("failed" if self.failed else f"is unavailable here ({self.detail})")
        return f"input {self.target} was skipped ({self.origin} " + ("failed)" if self.failed else f"is unavailable here: {self.detail})")


class Kind(StrEnum):
    """The engine's decision for one target, before anything runs."""

    HIT = "hit"              # a usable record exists: restore it
    MISS = "miss"            # run the step (reasons say why)
    PENDING = "pending"      # an input is still to be rebuilt: its digest, hence the key, is unknown
    UNAVAILABLE = "unavailable"  # this host lacks what the step needs
    SKIPPED = "skipped"      # an input produced nothing (``blocked_by`` says which and why)
    ERROR = "error"          # the target fails before running (a missing or unreadable source, ...)


#: The status a build gives a target for each decision (PENDING becomes a HIT or MISS once known).
_STATUS_OF = {Kind.HIT: Status.CACHED, Kind.MISS: Status.BUILT, Kind.PENDING: Status.BUILT,
              Kind.UNAVAILABLE: Status.UNAVAILABLE, Kind.SKIPPED: Status.SKIPPED, Kind.ERROR: Status.FAILED}


@dataclass(frozen=True)
class Prepared:
    """A target's key, its key record, the usable record (if any) and the reasons it would run."""

    key: str
    record: dict[str, Any]
    hit: "ActionRecord | None"
    reasons: list[str]


@dataclass(frozen=True)
class Decision:
    """What :meth:`Engine.decide <modelbuild.engine.Engine.decide>` concluded for one target."""

    kind: Kind
    reasons: tuple[str, ...] = ()
    prepared: Prepared | None = None
    blocked_by: Blocker | None = None
    #: For UNAVAILABLE: the exact command to run it on a host that can.
    command: str | None = None

    @property
    def status(self) -> Status:
        """The status the build gives the target (predicted, for HIT/MISS/PENDING)."""
        return _STATUS_OF[self.kind]

    @property
    def digest(self) -> str | None:
        """The output digest, when known before running (a hit)."""
        return self.prepared.hit.manifest.digest if self.prepared and self.prepared.hit else None


@dataclass
class TargetResult:
    """What happened to one target in a build."""

    name: str
    step: str
    status: Status
    reason: str = ""
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    digest: str | None = None
    size: int | None = None
    duration_s: float = 0.0
    out: Path | None = None
    log: Path | None = None
    summary: str = ""
    verdict: dict[str, Any] | None = None
    command: str | None = None
    #: Peak RSS of the step's process when it ran in this build (None when cached).
    peak_rss_bytes: int | None = None
    #: For SKIPPED: the input that produced nothing, and whether that was a failure.
    blocked_by: Blocker | None = None
    #: The Dask worker that ran the step (None: run here, or not run in this build).
    worker: str | None = None
    #: CACHED from the shared remote cache in this build (fetched, verified), not from the local store.
    remote_hit: bool = False
    #: CACHED from the remote cache and left there: no step here needed its bytes, so neither its
    #: blobs nor ``out/<name>`` were downloaded (lazy materialization, docs/remote.md).
    remote_only: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (Status.BUILT, Status.CACHED)

    @property
    def failed(self) -> bool:
        """Failed, or skipped because of a failure upstream (never read from the reason text)."""
        return self.status == Status.FAILED or (self.status == Status.SKIPPED and self.blocked_by is not None and self.blocked_by.failed)

    @property
    def unavailable(self) -> bool:
        """Not built because this host cannot run it or one of its inputs."""
        return self.status == Status.UNAVAILABLE or (self.status == Status.SKIPPED and self.blocked_by is not None and not self.blocked_by.failed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["out"] = str(self.out) if self.out else None
        data["log"] = str(self.log) if self.log else None
        return data


@dataclass
class BuildResult:
    requested: list[str]
    targets: dict[str, TargetResult]
    duration_s: float = 0.0
    #: Files the build's keys were derived from (recipes, step code, sources), for the no-op fast
    #: path: path -> its stat signature from before it was read (None: not read by the engine).
    watched: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    #: The targets the caller named (empty when the default target was built).
    explicit: list[str] = field(default_factory=list)
    #: When a time-bound resolution of this build (a Hub branch's commit) stops being good
    #: (``time.time_ns()``); the no-op fast path claims nothing past it. None: nothing time-bound.
    valid_until_ns: int | None = None
    #: Warnings for people, one line each (e.g. the remote cache was unreachable: built locally).
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless a target failed or was skipped because of a failure."""
        return not any(r.failed for r in self.targets.values())

    @property
    def unavailable_requested(self) -> list[str]:
        """Targets named explicitly that this host could not build (itself or an input).

        The CLI exits 3 for these (Bazel's rule for incompatible targets);
        targets reached only as the default or as a dependency are just reported.
        """
        return [n for n in self.explicit if n in self.targets and self.targets[n].unavailable]

    def counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in STATUSES}
        for r in self.targets.values():
            counts[str(r.status)] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "modelbuild-build-report/1",
            "ok": self.ok,
            "requested": self.requested,
            "unavailable_requested": self.unavailable_requested,
            "duration_s": round(self.duration_s, 3),
            "counts": self.counts(),
            "warnings": list(self.warnings),
            "targets": {name: r.to_json() for name, r in self.targets.items()},
        }
