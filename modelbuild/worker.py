"""The child process that runs one step: ``python -m modelbuild.worker JOB.json``.

Running each step in its own process means a crash inside it (a segfault in
native code, an out-of-memory kill, an exception) fails that target, with its
log kept, and never the build tool or the cache.

Protocol: the job file (written by executor.py) says which step to run and
where; the step's stdout and stderr go to the log file; progress lines (JSON)
go to the original stdout, which the parent reads; the outcome is written to
``result.json`` beside the job file. Exit codes: 0 ok, 3 StepError,
4 PlatformUnavailable, 1 anything else.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process and of the processes it waited for.

    On Linux the process's own peak is ``VmHWM``: ``ru_maxrss`` survives
    ``execve``, so it would report the peak of whatever process forked the
    worker (a large Python process calling the API, say).
    """
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children)
    own = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1])  # kB
                    break
    except OSError:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * max(own, children)  # KiB


def _write_result(path: Path, result: dict) -> None:
    result = {**result, "peak_rss_bytes": peak_rss_bytes()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def _kill_group(signum, frame) -> None:  # pragma: no cover - signal path
    # The build tool went away (PR_SET_PDEATHSIG) or asked us to stop: take
    # every process the step started down with us.
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main(job_path: str) -> int:
    if os.getpgrp() == os.getpid():
        signal.signal(signal.SIGTERM, _kill_group)
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["result"])
    # Keep the real stdout for progress; send everything the step prints to its log.
    progress = os.fdopen(os.dup(1), "w", buffering=1)
    log_fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)

    # The engine gives each step process its share of the cores; torch and
    # MKL read these before their thread pools start. A user's own setting wins.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(job["jobs"]))

    from .artifacts import Artifact
    from .errors import PlatformUnavailable, StepError
    from .plugins import StepInfo
    from .step import StepContext

    def artifact(spec: dict) -> Artifact:
        return Artifact(kind=spec["kind"], path=Path(spec["path"]), digest=spec["digest"], target=spec["target"])

    try:
        info = StepInfo(job["step"], job["entry"])
        step = info.instance()
        params = step.Params.model_validate(job["params"])
        inputs = {
            slot: [artifact(s) for s in spec] if isinstance(spec, list) else artifact(spec)
            for slot, spec in job["inputs"].items()
        }
        ctx = StepContext(
            target=job["target"],
            params=params,
            inputs=inputs,
            sources={k: Path(v) for k, v in job["sources"].items()},
            out=Path(job["out"]),
            work=Path(job["work"]),
            jobs=job["jobs"],
            project=Path(job["project"]),
            downloads=Path(job["downloads"]),
            progress_stream=progress,
        )
        print(f"== modelbuild: {job['target']} ({job['step']})", flush=True)
        step.run(ctx)
    except StepError as exc:
        print(f"== step error: {exc}", flush=True)
        _write_result(result_path, {"status": "failed", "reason": str(exc)})
        return 3
    except PlatformUnavailable as exc:
        print(f"== unavailable here: {exc}", flush=True)
        _write_result(result_path, {"status": "unavailable", "needs": exc.needs, "command": exc.command, "reason": str(exc)})
        return 4
    except BaseException as exc:  # noqa: BLE001 - any failure of a step is reported, never raised
        traceback.print_exc()
        message = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")
        _write_result(result_path, {"status": "failed", "reason": reason, "traceback": True})
        return 1
    _write_result(result_path, {"status": "ok", "summary": ctx.summary})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
