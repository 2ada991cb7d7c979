"""The local executor: runs one step in a child process and reports how it ended.

The engine decides *what* runs; this module only knows *how* to run one job:
write the job file, start ``python -m modelbuild.worker``, relay its progress
lines, and turn its exit (clean, StepError, platform, crash, signal) into a
:class:`JobOutcome`. The child leads a process group of its own and dies with
the parent, taking that group along (the worker sets PR_SET_PDEATHSIG on
Linux, see worker.py), so a killed build leaves no step running behind it; an
interrupted build stops its steps with :func:`terminate_all`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Executor", "FUSE_ENV", "JobOutcome", "LocalExecutor", "StepJob", "Submitted", "Toolchain", "job_outcome", "run_job",
           "spawn_worker", "terminate_all"]

_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def terminate_all() -> None:
    """Stop every running step (and what it started): used on Ctrl-C."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass(frozen=True)
class JobOutcome:
    status: str  # "ok" | "failed" | "unavailable"
    reason: str = ""
    summary: str = ""
    duration_s: float = 0.0
    needs: str | None = None
    command: str | None = None
    #: Peak RSS of the step's process (and the processes it waited for), when it reported one.
    peak_rss_bytes: int | None = None
    #: The output, already in the store (blobs only), when the executor ingested it itself (a Dask
    #: worker); None: the engine ingests the job's ``out`` directory.
    manifest: Any = None
    #: Where the step ran (a Dask worker's name); None: in a child process of this build.
    worker: str | None = None


#: The build tool's pid, for the worker to check that it was not orphaned before it
#: asked to die with its parent (worker.die_with_parent).
PARENT_ENV = "MODELBUILD_PARENT_PID"


def run_job(job: dict[str, Any], job_dir: Path, on_progress: Callable[[dict], None] | None = None) -> JobOutcome:
    """Run ``job`` (see worker.py for its fields) and wait for it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    result_path = job_dir / "result.json"
    job = {**job, "result": str(result_path)}
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps(job))
    start = time.monotonic()
    proc = spawn_worker([str(job_path)], job["work"])
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if on_progress is None:
                continue
            try:
                on_progress(json.loads(line))
            except (ValueError, TypeError):
                continue
        code = proc.wait()
    finally:
        forget(proc)
    return job_outcome(code, result_path, time.monotonic() - start)


def spawn_worker(args: list[str], cwd: str, *, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    r"""Start ``python -m modelbuild.worker ARGS`` in its own process group, dying with this process.

    The process is registered so :func:`terminate_all` stops it; the caller
    :func:`forget`\s it once it has exited.

    No Python code runs between fork and exec (no ``preexec_fn``): the build
    spawns steps from several threads, and a child forked while another
    thread was importing a module inherits that module's lock held by a
    thread it does not have; its first import of the module then waits
    forever, and so does the build (found by the equivalence profile: a
    restore importing ``ctypes`` while a sibling forked). The new session is
    made by ``start_new_session``; dying with the parent is the worker's job.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PARENT_ENV] = str(os.getpid())
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelbuild.worker", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        text=True,
        start_new_session=True,
    )
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(proc)


def job_outcome(code: int, result_path: Path, duration: float) -> JobOutcome:
    """The outcome of a job from its worker's exit code (or signal, negative) and ``result.json``."""
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = None
    rss = result.get("peak_rss_bytes") if isinstance(result, dict) else None
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return JobOutcome("failed", f"step process killed by {name}{hint}", duration_s=duration)
    if result is None:
        return JobOutcome("failed", f"step process exited with code {code} without a result", duration_s=duration)
    if result["status"] == "ok" and code == 0:
        return JobOutcome("ok", summary=result.get("summary", ""), duration_s=duration, peak_rss_bytes=rss)
    if result["status"] == "unavailable":
        return JobOutcome(
            "unavailable", result.get("reason", ""), duration_s=duration, needs=result.get("needs"),
            command=result.get("command"), peak_rss_bytes=rss,
        )
    return JobOutcome("failed", result.get("reason", f"exit code {code}"), duration_s=duration, peak_rss_bytes=rss)


@dataclass(frozen=True)
class StepJob:
    """A prepared step job: what the engine hands an executor for one cache miss.

    ``job`` holds the worker's fields (worker.py) with this host's paths;
    ``job_dir`` is scratch for the job file and its result; ``key`` and
    ``record`` are the action key and the key record it was computed from
    (what a remote executor checks its host against: step code, sources,
    toolchain); ``requirements`` is what the step needs of its host.
    """

    job: dict[str, Any]
    job_dir: Path
    key: str
    record: dict[str, Any]
    requirements: Any = None  # step.Requirements (not imported here: the step API imports pydantic)
    on_progress: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class Toolchain:
    """Toolchain versions read where a step will run, not on this host (:meth:`Executor.toolchain`).

    ``workers``: the places they were read on (Dask worker names), which the
    step is then pinned to; ``note``: the sentence ``plan``, ``build`` and
    ``explain`` show beside the target's reasons.
    """

    versions: dict[str, str]
    workers: tuple[str, ...]
    note: str


class Submitted:
    """A submitted job: :meth:`result` waits for its :class:`JobOutcome`; :meth:`cancel` stops it."""

    def result(self) -> JobOutcome:  # pragma: no cover - interface
        raise NotImplementedError

    def cancel(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Executor:
    """How the engine's cache misses run: the engine decides hit or miss, owns the
    action cache and commits records; an executor only runs steps.

    ``submit(job)`` returns a :class:`Submitted`; its ``result()`` is awaited
    by the engine thread that owns the target. ``unmet(req)`` says what no
    place this executor runs on has (``decide`` turns it into "unavailable");
    ``check`` may refuse a build before anything runs; ``stop_pending`` (a
    failure without ``-k``) and ``cancel_all`` (Ctrl-C) stop what is queued or
    running; ``toolchain`` may give the toolchain versions a step is keyed with
    when it runs on hosts unlike this one (the engine still computes the key). Example (the Dask executor is modelbuild/dask_executor.py)::

        engine = Engine(graph, store, project=root, out_dir=root / "out", executor=LocalExecutor())
    """

    name = "local"
    #: Whether chains of misses run in one process (only the local executor fuses).
    fuse: bool = False

    def submit(self, job: StepJob) -> Submitted:  # pragma: no cover - interface
        raise NotImplementedError

    def unmet(self, requirements: Any) -> str | None:
        from .step_types import unmet_requirement  # light: no pydantic

        return unmet_requirement(requirements)

    def toolchain(self, step: Any, requirements: Any) -> Toolchain | None:
        """The toolchain versions to key ``step`` (a plugins.StepInfo) with, when this executor runs it
        on hosts whose toolchain this one cannot vouch for (a Dask worker with Xcode for a Linux
        client); None (the default): this host's own, read by the engine."""
        return None

    def check(self, graph: Any, order: list[str], *, keep_going: bool) -> None:
        """Raise a ModelbuildError if the build cannot run here at all (default: it can)."""

    def stop_pending(self) -> None:
        """Cancel jobs submitted but not started (default: none wait)."""

    def settled(self, target: str) -> None:
        """``target`` is done in this build (built, cached, failed or skipped): what was
        kept for it can go (the local executor's fused sessions, fused.py)."""

    def cancel_all(self) -> None:
        """Stop every job, running or not (Ctrl-C)."""

    def close(self) -> None:
        """Release what the executor holds (connections)."""


class _LocalRun(Submitted):
    def __init__(self, job: StepJob) -> None:
        self._job = job

    def result(self) -> JobOutcome:
        # The engine's own thread waits here, so the step process starts now.
        return run_job(self._job.job, self._job.job_dir, self._job.on_progress)

    def cancel(self) -> None:
        terminate_all()  # step processes are not told apart: only Ctrl-C cancels locally


class LocalExecutor(Executor):
    """The default: each step in a child process of this build (:func:`run_job`).

    With ``fuse`` (default: on unless ``MODELBUILD_FUSE=0``) a chain of misses
    whose steps hand their output in memory (``Step.keeps_value`` feeding an
    ``Input(in_memory=True)``) runs in one long-lived worker process, the value
    going from step to step without a save and a load in between (fused.py).
    """

    def __init__(self, fuse: bool | None = None) -> None:
        self.fuse = fuse if fuse is not None else os.environ.get(FUSE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        self._sessions = None  # fused.Sessions, made by check() when fusing

    def check(self, graph: Any, order: list[str], *, keep_going: bool) -> None:
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None
        if self.fuse:
            from .fused import Sessions

            sessions = Sessions(graph, order)
            self._sessions = sessions if sessions.chains else None

    def submit(self, job: StepJob) -> Submitted:
        if self._sessions is not None:
            return self._sessions.submit(job)
        return _LocalRun(job)

    def settled(self, target: str) -> None:
        if self._sessions is not None:
            self._sessions.settled(target)

    def cancel_all(self) -> None:
        terminate_all()

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None


#: ``MODELBUILD_FUSE=0`` runs every step in its own process (``--no-fuse``).
FUSE_ENV = "MODELBUILD_FUSE"
