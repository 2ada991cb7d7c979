"""The local executor: runs one step in a child process and reports how it ended.

The engine decides *what* runs; this module only knows *how* to run one job:
write the job file, start ``python -m modelbuild.worker``, relay its progress
lines, and turn its exit (clean, StepError, platform, crash, signal) into a
:class:`JobOutcome`. The child and its process group die with the parent
(PR_SET_PDEATHSIG on Linux), so a killed build leaves no step running behind
it; an interrupted build stops its steps with :func:`terminate_all`.
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

__all__ = ["JobOutcome", "run_job", "terminate_all"]

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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # A process group of its own, so the worker can take the step's own
    # children (e.g. a command's shell) down with it; and SIGTERM when the
    # build tool dies, even by SIGKILL, which the worker turns into killpg.
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def run_job(job: dict[str, Any], job_dir: Path, on_progress: Callable[[dict], None] | None = None) -> JobOutcome:
    """Run ``job`` (see worker.py for its fields) and wait for it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    result_path = job_dir / "result.json"
    job = {**job, "result": str(result_path)}
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelbuild.worker", str(job_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=job["work"],
        env=env,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    assert proc.stdout is not None
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
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
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    duration = time.monotonic() - start
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
