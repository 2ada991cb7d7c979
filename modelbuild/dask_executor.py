"""The Dask executor: cache misses run on the workers of a ``dask.distributed`` cluster.

The engine still decides hit or miss and writes every action record; this
executor only runs the misses, each as one Dask task (:func:`modelbuild.dask_task.run_step`)
submitted with the resources its step's requirements map to (routing.py).
Artifacts never go through the scheduler: the task carries the input
*manifests* and returns the output's manifest; the bytes travel through the
shared cache (a mounted directory the workers see at the same path), checked
by digest on both ends.

Before a build starts, :meth:`DaskExecutor.check` compares what the targets
need with what the workers advertise: a step no worker can take is an error
that lists the cluster's resources (Dask would keep such a task waiting
forever), or with ``-k`` that target is "unavailable" (``needs a worker with
macos``). A worker that dies while running a step fails that target (after the
scheduler's own bounded retries, ``distributed.scheduler.allowed-failures``);
a task that waits while no live worker can take it any more is cancelled.

A step routed by its requirements is keyed with the toolchain of the workers
that will run it (:meth:`DaskExecutor.toolchain`, asked through
``client.run`` before the engine keys it): a Linux client cannot probe a
Mac's Xcode. Workers that disagree: the largest group keys it and the task is
pinned to that group.

Example::

    with DaskExecutor("tcp://127.0.0.1:8786", store) as executor:
        Engine(graph, store, project=root, out_dir=root / "out", executor=executor).build(["tiny-llama"])
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import ModelbuildError, one_line
from .executor import Executor, JobOutcome, StepJob, Submitted, Toolchain
from .hashing import Manifest
from .routing import demand, describe_workers, lacking, pick_toolchain
from .step_types import Requirements  # light: no pydantic on a build's path

__all__ = ["DaskExecutor", "ClusterError", "executor_for"]

#: How long a submitted task may wait while no live worker can take it before it is cancelled.
ORPHAN_GRACE_S = 30.0
#: How often a waiting engine thread looks at the cluster.
POLL_S = 2.0


class ClusterError(ModelbuildError):
    """The Dask cluster cannot run this build: unreachable, or no worker has what a step needs."""


def executor_for(project: Path, kind: str | None, scheduler: str | None, store) -> tuple[Executor, int | None]:
    """The executor a build asked for, and how many steps to keep running at once by default.

    ``kind`` and ``scheduler`` come from the command line; when ``kind`` is
    None the project configuration decides (``executor``/``scheduler`` in
    modelbuild.toml or ``[tool.modelbuild]``), else the local executor.
    """
    from .executor import LocalExecutor

    if kind is None or (kind == "dask" and not scheduler):
        from .config import load_config

        cfg = load_config(project)
        kind = kind or cfg.executor
        scheduler = scheduler or cfg.scheduler
    if kind == "local":
        return LocalExecutor(), None
    if kind != "dask":
        raise ClusterError(f"unknown executor '{kind}' (expected 'local' or 'dask')")
    if not scheduler:
        raise ClusterError("the dask executor needs a scheduler: --scheduler tcp://HOST:8786 "
                           "(or scheduler = \"...\" in modelbuild.toml)")
    executor = DaskExecutor(scheduler, store)
    return executor, executor.slots()


class DaskExecutor(Executor):
    """Run misses on the Dask cluster at ``address`` (``tcp://host:8786``), sharing ``store``."""

    name = "dask"

    def __init__(self, address: str, store, *, connect_timeout_s: float = 10.0) -> None:
        try:
            from distributed import Client
        except ImportError as exc:
            raise ClusterError("--executor dask needs the dask distributed package: pip install 'modelbuild[dask]'") from exc
        self.address = address
        self.store = store
        try:
            self.client = Client(address, timeout=f"{connect_timeout_s}s", set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError (a malformed address), ...
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {one_line(exc)}") from exc
        self._futures: dict[str, Any] = {}  # task key -> future, while submitted
        self._lock = threading.Lock()
        self._workers: dict[str, dict[str, float]] = {}
        self._where: dict[str, tuple[str, Any]] = {}  # worker name -> (address, the name as Dask knows it)
        #: (step, entry, requirements) -> the toolchain it is keyed with (asked once per build: toolchain())
        self._toolchains: dict[tuple[str, str, Requirements], Toolchain | None] = {}
        self._threads = 0
        self._seen_at = 0.0
        self._refresh()

    # -- the cluster ----------------------------------------------------------

    def _refresh(self, max_age_s: float = 0.0) -> dict[str, dict[str, float]]:
        """Worker name -> advertised resources (cached for ``max_age_s``)."""
        with self._lock:
            if self._seen_at and time.monotonic() - self._seen_at < max_age_s:
                return self._workers
        info = self.client.scheduler_info(n_workers=-1)
        workers, where, threads = {}, {}, 0
        for address, w in (info.get("workers") or {}).items():
            name = str(w.get("name", address))
            workers[name] = {k: float(v) for k, v in (w.get("resources") or {}).items()}
            where[name] = (address, w.get("name", address))
            threads += int(w.get("nthreads") or 1)
        with self._lock:
            self._workers, self._where, self._threads, self._seen_at = workers, where, threads, time.monotonic()
        return workers

    def slots(self) -> int:
        """Worker threads in the cluster: how many steps the engine keeps submitted at once by default."""
        self._refresh(max_age_s=POLL_S)
        return max(1, self._threads)

    def _lacks(self, req: Requirements, workers: dict[str, dict[str, float]]) -> str | None:
        return lacking(demand(req, workers.values()), workers.values())

    def unmet(self, requirements: Requirements) -> str | None:
        reason = self._lacks(requirements, self._refresh(max_age_s=POLL_S))
        if reason is None:
            return None
        # decide() says "needs ...": "needs a worker with macos"
        if reason.startswith("no worker with "):
            return "a worker with " + reason.removeprefix("no worker with ")
        return "a worker (the Dask cluster has none)"

    def check(self, graph: Any, order: list[str], *, keep_going: bool) -> None:
        workers = self._refresh()
        blocked = {}
        for name in order:
            node = graph.nodes[name]
            reason = self._lacks(node.requirements(graph.nodes), workers)
            if reason is not None:
                blocked[name] = reason
        if blocked and not keep_going:
            listed = ", ".join(f"{n} ({r})" for n, r in list(blocked.items())[:5])
            more = f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
            raise ClusterError(
                f"no worker of the Dask cluster at {self.address} can run {listed}{more}; "
                f"its workers: {describe_workers(workers)} "
                "(start a worker with --resources, e.g. \"macos=1,xcode=1\"; -k builds the rest)")

    # -- keys -----------------------------------------------------------------

    def toolchain(self, step: Any, requirements: Requirements) -> Toolchain | None:
        """Key a step that is routed by its requirements with the toolchain of the workers that will run it.

        A step submitted with resources (``mlmodelc``: ``macos``, ``xcode``) runs
        on a worker that this host may not resemble at all: a Linux client
        would key it with ``xcode: not available``, which no Mac has, and the
        worker would rightly refuse the key (dask_task.py). So the workers that
        advertise those resources are asked (``client.run``: a worker busy with
        a step still answers) for the versions they would key it with, once
        per build; as Bazel keys a remote action with its execution platform.
        Workers that disagree are grouped by their answer: the largest group
        (ties: the one with the first name) keys the step, and the step is
        pinned to that group (:meth:`submit`), so its result is always made by
        a toolchain its key describes. A step any worker may take (no
        resources) is keyed with this host's toolchain, as a local build
        would, and each worker must match it.
        """
        workers = self._refresh(max_age_s=POLL_S)
        wanted = demand(requirements, workers.values())
        if not wanted:
            return None
        memo = (step.name, step.entry, requirements)
        with self._lock:
            if memo in self._toolchains:
                return self._toolchains[memo]
        able = sorted(n for n, res in workers.items() if all(res.get(k, 0) >= v for k, v in wanted.items()))
        found = self._ask_toolchain(step, able) if able else None  # none: check() and unmet() say so
        with self._lock:
            self._toolchains[memo] = found
        return found

    def _ask_toolchain(self, step: Any, able: list[str]) -> Toolchain:
        from .dask_task import toolchain_of

        with self._lock:
            addresses = {self._where[n][0]: n for n in able if n in self._where}
        try:
            answers = self.client.run(toolchain_of, step.name, step.entry, workers=list(addresses), on_error="return")
        except Exception as exc:  # noqa: BLE001 - the scheduler went away, ...
            raise ClusterError(f"cannot ask the workers {', '.join(able)} of the Dask cluster at {self.address} "
                               f"for the toolchain of step {step.name}: {one_line(exc)}") from exc
        said = {addresses.get(a, str(a)): v for a, v in answers.items()}
        said.update({n: None for n in able if n not in said})  # left meanwhile
        found = pick_toolchain(said)
        if found is None:
            name, exc = sorted(said.items())[0]
            raise ClusterError(f"no worker of the Dask cluster at {self.address} could report its toolchain for step "
                               f"{step.name} ({name}: {one_line(exc) if isinstance(exc, BaseException) else 'no answer'})")
        return found

    # -- jobs -----------------------------------------------------------------

    def submit(self, job: StepJob) -> Submitted:
        from .dask_task import run_step

        req = job.requirements if job.requirements is not None else Requirements()
        resources = demand(req, self._refresh(max_age_s=POLL_S).values())
        spec = {
            "job": job.job,
            "store": str(self.store.root),
            "key": job.key,
            "record": job.record,
            "inputs": {slot: [self._manifest(s) for s in specs] if isinstance(specs, list) else self._manifest(specs)
                       for slot, specs in job.job["inputs"].items()},
            "requirements": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(req).items()},
            "remote": self._remote_spec(),
        }
        task = f"modelbuild-{job.job['target']}-{job.key[:12]}-{os.urandom(4).hex()}"  # no uuid: every build imports this module
        pinned = self._pinned(job, req)
        future = self.client.submit(run_step, spec, key=task, resources=resources or None, pure=False,
                                    workers=pinned, allow_other_workers=False)
        with self._lock:
            self._futures[task] = future
        return _DaskRun(self, task, future, job, req, pinned)

    def _pinned(self, job: StepJob, req: Requirements) -> list[Any] | None:
        """The workers whose toolchain keyed this step (:meth:`toolchain`), as Dask knows their names; None: any."""
        with self._lock:
            found = self._toolchains.get((job.job["step"], job.job["entry"], req))
            if found is None:
                return None
            return [self._where[n][1] if n in self._where else n for n in found.workers]

    def _remote_spec(self) -> dict[str, Any] | None:
        """Where a worker that does not see this build's cache exchanges artifacts (the remote tier)."""
        remote = getattr(self.store, "remote", None)
        if remote is None:
            return None
        # Storage options hold no credentials (config.py refuses them); workers bring their own.
        return {"url": remote.url, "options": dict(getattr(remote, "_options", {}) or {}), "upload": bool(remote.upload)}

    def _manifest(self, spec: dict[str, str]) -> dict[str, Any]:
        """The manifest of an input (from its action record), which the worker pulls by digest.

        With an uploading remote tier, the input's blobs are put there too
        (if missing), for a worker that does not see this cache.
        """
        record = self.store.get_action(spec["key"]) if spec.get("key") else None
        if record is None or record.manifest.digest != spec["digest"]:
            raise ClusterError(f"input {spec['target']} has no action record for its output {spec['digest'][:15]}")
        remote = getattr(self.store, "remote", None)
        if remote is not None and remote.upload and remote.down is None:
            try:
                remote.push_blobs(record.manifest, self.store)
            except ModelbuildError:  # a worker sharing this cache does not need it; one that does says so
                pass
        return record.manifest.to_json()

    def _forget(self, task: str) -> None:
        with self._lock:
            self._futures.pop(task, None)

    def stop_pending(self) -> None:
        """Cancel the submitted tasks no worker has started (a failure without -k)."""
        with self._lock:
            futures = dict(self._futures)
        if not futures:
            return
        try:  # the scheduler's "processing" includes tasks queued on a worker: ask the workers
            busy = {str(k) for keys in self.client.run(_executing, on_error="ignore").values() for k in keys or ()}
        except Exception:  # noqa: BLE001 - the scheduler went away: nothing to spare
            return
        waiting = [f for task, f in futures.items() if task not in busy]
        if waiting:
            self.client.cancel(waiting)

    def cancel_all(self) -> None:
        with self._lock:
            futures = list(self._futures.values())
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 - interrupted anyway
                pass

    def close(self) -> None:
        self.cancel_all()
        self.client.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DaskRun(Submitted):
    def __init__(self, executor: DaskExecutor, task: str, future: Any, job: StepJob, req: Requirements,
                 pinned: list[Any] | None = None) -> None:
        self._ex, self._task, self._future, self._job, self._req = executor, task, future, job, req
        self._pinned = [str(n) for n in pinned] if pinned else None

    def cancel(self) -> None:
        self._ex.client.cancel([self._future])

    def result(self) -> JobOutcome:
        try:
            raw = self._wait()
        finally:
            self._ex._forget(self._task)
        if isinstance(raw, JobOutcome):
            return raw
        log = raw.get("log")
        if log:
            Path(self._job.job["log"]).write_text(log)
        outcome = JobOutcome(
            raw["status"], raw.get("reason") or "", raw.get("summary") or "", float(raw.get("duration_s") or 0.0),
            raw.get("needs"), raw.get("command"), raw.get("peak_rss_bytes"), worker=raw.get("worker"),
        )
        if raw["status"] != "ok":
            return outcome
        manifest = Manifest.from_json(raw["manifest"])
        if raw.get("via") == "remote":  # a worker with its own cache: fetch (and verify) its output
            try:
                self._ex.store.remote.pull(manifest, self._ex.store)
            except ModelbuildError as exc:
                return JobOutcome("failed", f"the output of worker {outcome.worker} cannot be fetched: {one_line(exc)}",
                                  duration_s=outcome.duration_s, worker=outcome.worker)
        problems = self._ex.store.missing_or_corrupt(manifest)  # what the worker stored, checked here
        if problems:
            return JobOutcome("failed", f"worker {outcome.worker} stored an unusable output: {problems[0]}",
                              duration_s=outcome.duration_s, worker=outcome.worker)
        return JobOutcome(outcome.status, outcome.reason, outcome.summary, outcome.duration_s, outcome.needs,
                          outcome.command, outcome.peak_rss_bytes, manifest=manifest, worker=outcome.worker)

    def _wait(self) -> dict[str, Any] | JobOutcome:
        from concurrent.futures import CancelledError
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        orphaned_since: float | None = None
        while True:
            try:
                return self._future.result(timeout=POLL_S)
            except TimeoutError:  # still running (asyncio's is the same class since 3.11)
                pass
            except KilledWorker as exc:
                return JobOutcome("failed", f"the Dask worker running it died ({_killed(exc)})")
            except (CancelledError, FutureCancelledError):
                return JobOutcome("failed", "cancelled: the build stopped")
            except Exception as exc:  # noqa: BLE001 - the task raised, or the scheduler connection broke
                return JobOutcome("failed", f"on the Dask cluster: {type(exc).__name__}: {one_line(exc)}")
            # Still waiting: is there still a worker that could take it?
            try:
                workers = self._ex._refresh(max_age_s=POLL_S)
                lacks = self._ex._lacks(self._req, workers)
                if lacks is None and self._pinned and not any(n in workers for n in self._pinned):
                    lacks = f"no worker with the toolchain its key was computed with ({', '.join(self._pinned)})"
            except Exception:  # noqa: BLE001 - e.g. the scheduler is gone; the future will say so
                lacks = None
            if lacks is None:
                orphaned_since = None
            elif orphaned_since is None:
                orphaned_since = time.monotonic()
            elif time.monotonic() - orphaned_since > ORPHAN_GRACE_S:
                self.cancel()
                return JobOutcome("failed", f"{lacks} is left in the Dask cluster at {self._ex.address}")



def _executing(dask_worker) -> list[str]:
    """Keys of the tasks a worker is running now (not those it holds waiting for resources)."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _killed(exc: BaseException) -> str:
    """KilledWorker's first sentence or two: which task, on how many workers, the last one."""
    text = one_line(exc)
    cut = text.find("Inspecting")
    text = text[:cut].strip() if cut > 0 else text
    return text if len(text) < 400 else text[:400] + "..."
