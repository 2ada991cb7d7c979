"""Fused execution: a chain of misses runs in one long-lived worker process.

Run one step per process and every link of a chain pays a process start, the
import of torch, the producer's save and the consumer's load of the same
program (at 1B: about 10 s to save, 13 s to load). Here, when a step that can
hand its output in memory (``Step.keeps_value``) has, in this build, a
consumer whose input slot takes it (``Input(in_memory=True)``), the producer
runs in a *session*: a ``python -m modelbuild.worker --session`` process that
stays up between jobs. The producer still writes its artifact into ``ctx.out``
(so the cache holds every intermediate) and keeps the value
(``ctx.keep_value``); the engine ingests and records that artifact, then
decides the consumer exactly as always (:meth:`Engine.decide`: its key needs
the producer's digest, so the decision waits for the write and the hash). A
miss is sent to the same session, where ``ctx.input_value`` returns the kept
value instead of loading the files. A hit, a failure or a skip of every
consumer drops the value; so does handing it over (one consumer gets it; the
others load the files), so a program is never held twice.

Nothing about keys, records or decisions changes: the session is only where
the step runs. A session that dies (a crash, an out-of-memory kill) fails its
running step as a child process would; its values are gone and consumers
load their inputs from the store. A failure of a step leaves the steps before
it recorded, as without fusion. ``MODELBUILD_FUSE=0`` / ``--no-fuse`` runs
every step in its own process.

Example (what the local executor does when fusing)::

    sessions = Sessions(graph, order)       # which producer feeds whom in memory
    outcome = sessions.submit(step_job).result()
    sessions.settled("tiny-llama-pte")      # its producer's value can go
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

from .executor import JobOutcome, StepJob, Submitted, forget, job_outcome, run_job, spawn_worker

__all__ = ["Sessions"]

#: How long a closing session may take to exit before it is killed.
CLOSE_WAIT_S = 10.0


class Sessions:
    """The fused sessions of one build: which job runs where, and which values are held."""

    def __init__(self, graph: Any, order: list[str]) -> None:
        self._graph = graph
        wanted = set(order)
        #: producer -> its consumers in this build that take its output in memory
        self.chains: dict[str, set[str]] = {}
        for name in order:
            node = graph.nodes[name]
            for slot, producer in node.inputs.items():
                # From the bound graph's facts: deciding this loads no step (graph_facts.py).
                if not node.takes_in_memory(slot) or isinstance(producer, list) or producer not in wanted:
                    continue
                if graph.nodes[producer].keeps_value:
                    self.chains.setdefault(producer, set()).add(name)
        self._open = {p: set(c) for p, c in self.chains.items()}  # consumers not settled yet
        self._unsettled = set(order)
        self._holder: dict[str, _Session] = {}  # producer -> the session holding its value
        self._sessions: list[_Session] = []
        self._lock = threading.Lock()

    def submit(self, job: StepJob) -> Submitted:
        return _FusedRun(self, job)

    def settled(self, target: str) -> None:
        """``target`` is done: producers none of whose consumers remain drop their values."""
        with self._lock:
            self._unsettled.discard(target)
            for producer, consumers in self._open.items():
                consumers.discard(target)
                if not consumers and producer in self._holder:
                    self._holder.pop(producer).drop(producer)
            if not self._unsettled:
                self._close_all()

    def close(self) -> None:
        with self._lock:
            self._close_all()

    # -- routing ---------------------------------------------------------------

    def _route(self, job: StepJob) -> tuple["_Session | None", dict[str, str], bool]:
        """The session to run ``job`` in (None: its own process), the values it takes, whether it keeps one."""
        target = job.job["target"]
        with self._lock:
            session: _Session | None = None
            values: dict[str, str] = {}
            for slot, spec in job.job["inputs"].items():
                producer = spec.get("target") if isinstance(spec, dict) else None
                held = self._holder.get(producer or "")
                if held is None or held.busy or not held.alive or target not in self.chains.get(producer or "", ()):
                    continue
                if session is None or held is session:
                    session, values[slot] = held, producer or ""
            for producer in values.values():  # handed over: nobody else may take it
                del self._holder[producer]
            keep = bool(self._open.get(target))
            if session is None and keep:
                session = next((s for s in self._sessions if s.idle), None)
                if session is None:
                    session = _Session(job.job["work"])
                    self._sessions.append(session)
            if session is not None:
                session.busy = True
            return session, values, keep

    def _done(self, job: StepJob, session: "_Session", values: dict[str, str], kept: bool, ok: bool) -> None:
        target = job.job["target"]
        with self._lock:
            session.busy = False
            session.values.difference_update(values.values())
            if not session.alive:
                for producer in [p for p, s in self._holder.items() if s is session]:
                    del self._holder[producer]
                self._sessions.remove(session)
            elif kept and ok and self._open.get(target):
                self._holder[target] = session
                session.values.add(target)
            elif kept:
                session.drop(target)

    def _close_all(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        self._holder.clear()


class _FusedRun(Submitted):
    def __init__(self, sessions: Sessions, job: StepJob) -> None:
        self._sessions = sessions
        self._job = job

    def result(self) -> JobOutcome:
        session, values, keep = self._sessions._route(self._job)
        if session is None:
            return run_job(self._job.job, self._job.job_dir, self._job.on_progress)
        outcome, kept = JobOutcome("failed", "internal error: the fused session did not answer"), False
        try:
            outcome, kept = session.run(self._job, values, keep)
        finally:
            self._sessions._done(self._job, session, values, kept, outcome.status == "ok")
        return outcome

    def cancel(self) -> None:
        from .executor import terminate_all

        terminate_all()


class _Session:
    """One ``modelbuild.worker --session`` process; one job at a time (the caller marks it busy)."""

    def __init__(self, cwd: str) -> None:
        self.proc = spawn_worker(["--session"], cwd, stdin=subprocess.PIPE)
        self.busy = False
        self.alive = True
        self.values: set[str] = set()
        self._write = threading.Lock()

    @property
    def idle(self) -> bool:
        return self.alive and not self.busy and not self.values

    def _send(self, request: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        with self._write:
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def run(self, job: StepJob, values: dict[str, str], keep: bool) -> tuple[JobOutcome, bool]:
        job.job_dir.mkdir(parents=True, exist_ok=True)
        result_path = job.job_dir / "result.json"
        job_path = job.job_dir / "job.json"
        job_path.write_text(json.dumps({**job.job, "result": str(result_path)}))
        start = time.monotonic()
        assert self.proc.stdout is not None
        if self._send({"op": "run", "job": str(job_path), "values": values, "keep": keep}):
            for line in self.proc.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("session") == "done":
                    return job_outcome(int(message["code"]), result_path, time.monotonic() - start), bool(message.get("kept"))
                if job.on_progress is not None:
                    try:
                        job.on_progress(message)
                    except (ValueError, TypeError):
                        continue
        # The session died under the step (a crash, a kill): as a step process would.
        self.alive = False
        code = self.proc.wait()
        forget(self.proc)
        self.values.clear()
        return job_outcome(code if code != 0 else 1, result_path, time.monotonic() - start), False

    def drop(self, producer: str) -> None:
        self.values.discard(producer)
        if self.alive:
            self._send({"op": "drop", "target": producer})

    def close(self) -> None:
        """Let the process exit (end of input); kill it if it does not."""
        self.alive = False
        self.values.clear()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if not self.busy:
            try:
                self.proc.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            forget(self.proc)
