"""The child process that runs one step: ``python -m modelbuild.worker JOB.json``.

Running each step in its own process means a crash inside it (a segfault in
native code, an out-of-memory kill, an exception) fails that target, with its
log kept, and never the build tool or the cache.

Protocol: the job file (written by executor.py) says which step to run and
where; the step's stdout and stderr go to the log file; progress lines (JSON)
go to the original stdout, which the parent reads; the outcome is written to
``result.json`` beside the job file. Exit codes: 0 ok, 3 StepError,
4 PlatformUnavailable, 1 anything else.

``python -m modelbuild.worker --session`` is a fused session (fused.py): it
runs jobs one after another, sent on stdin, and keeps the value a step hands
over (``ctx.keep_value``) for the next step of its chain; see :func:`session`.
A job's peak memory there is the process's peak during that job (VmHWM is
reset when the job starts), which includes the values it was handed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path


#: In a session: the peak of the children waited for before the current job
#: (``ru_maxrss`` of children is a maximum over the process's life).
_CHILDREN_BEFORE = 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process and of the processes it waited for.

    On Linux the process's own peak is ``VmHWM``: ``ru_maxrss`` survives
    ``execve``, so it would report the peak of whatever process forked the
    worker (a large Python process calling the API, say). In a session the
    children count only if one of this job's went above the earlier ones.
    """
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if children <= _CHILDREN_BEFORE:
        children = 0
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


def die_with_parent() -> None:
    """Be sent SIGTERM (then :func:`_kill_group`, installed here) when the build tool dies, even by SIGKILL.

    PR_SET_PDEATHSIG is set here, first thing, rather than between fork and
    exec (executor.spawn_worker says why). A tool that died before this ran
    left the worker orphaned already: its parent is no longer the pid the
    tool passed down, and the worker's group goes at once.
    """
    if os.getpgrp() == os.getpid():  # a group of its own (spawn_worker): the step's children go with it
        signal.signal(signal.SIGTERM, _kill_group)
    parent = os.environ.pop("MODELBUILD_PARENT_PID", None)  # executor.PARENT_ENV; the step does not see it
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not glibc: the build's own Ctrl-C handling still applies
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)  # as if the death signal had come: the group goes


def _redirect_output(log: str) -> None:
    """Send everything the step prints (fds 1 and 2, and Python's streams) to its log."""
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def run_one(job: dict, progress, values: dict | None = None, keep: bool = False) -> tuple[int, object]:
    """Run one job in this process: ``(exit code, the value the step kept or NOTHING)``.

    ``values`` are in-memory inputs handed over by an earlier step of the same
    session (slot -> value); with ``keep`` the step may keep its output's value
    for a consumer (``ctx.keep_value``). Writes ``result.json``.
    """
    from .artifacts import Artifact
    from .errors import PlatformUnavailable, StepError
    from .plugins import StepInfo
    from .step import NOTHING, StepContext

    result_path = Path(job["result"])

    def artifact(spec: dict) -> Artifact:
        return Artifact(kind=spec["kind"], path=Path(spec["path"]), digest=spec["digest"], target=spec["target"])

    ctx = None
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
            values=values,
            keep=keep,
        )
        values = None  # the context holds them now, and lets each go once it is taken
        print(f"== modelbuild: {job['target']} ({job['step']})", flush=True)
        for slot, producer in sorted(job.get("in_memory", {}).items()):
            print(f"== input {slot} handed over in memory by {producer} (fused session)", flush=True)
        step.run(ctx)
    except StepError as exc:
        print(f"== step error: {exc}", flush=True)
        _write_result(result_path, {"status": "failed", "reason": str(exc)})
        return 3, NOTHING
    except PlatformUnavailable as exc:
        print(f"== unavailable here: {exc}", flush=True)
        _write_result(result_path, {"status": "unavailable", "needs": exc.needs, "command": exc.command, "reason": str(exc)})
        return 4, NOTHING
    except BaseException as exc:  # noqa: BLE001 - any failure of a step is reported, never raised
        traceback.print_exc()
        message = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")
        _write_result(result_path, {"status": "failed", "reason": reason, "traceback": True})
        return 1, NOTHING
    finally:
        if ctx is not None:
            ctx.release_inputs()
    _write_result(result_path, {"status": "ok", "summary": ctx.summary})
    return 0, ctx.kept


def main(job_path: str) -> int:
    die_with_parent()
    job = json.loads(Path(job_path).read_text())
    # Keep the real stdout for progress; send everything the step prints to its log.
    progress = os.fdopen(os.dup(1), "w", buffering=1)
    _redirect_output(job["log"])

    # The engine gives each step process its share of the cores; torch and
    # MKL read these before their thread pools start. A user's own setting wins.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(job["jobs"]))
    code, _ = run_one(job, progress)
    return code


def session() -> int:
    """A fused session (fused.py): run jobs one after another, keeping values between them.

    Requests come one JSON object a line on stdin: ``{"op": "run", "job":
    PATH, "values": {slot: producer}, "keep": bool}`` or ``{"op": "drop",
    "target": producer}``; end of input ends the session. Each run's progress
    lines go to stdout, then ``{"session": "done", "code": N, "kept": bool}``.
    """
    import gc

    die_with_parent()
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    requests = sys.stdin
    own_threads = {var: var in os.environ for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    held: dict[str, object] = {}
    from .step import NOTHING

    for line in requests:
        request = json.loads(line)
        if request.get("op") == "drop":
            held.pop(request["target"], None)
            gc.collect()
            _trim_heap()
            continue
        job = json.loads(Path(request["job"]).read_text())
        os.chdir(job["work"])
        _redirect_output(job["log"])
        for var, users in own_threads.items():
            if not users:  # the engine's share for this job, unless the user set one
                os.environ[var] = str(job["jobs"])
        if "torch" in sys.modules and not own_threads["OMP_NUM_THREADS"]:
            sys.modules["torch"].set_num_threads(int(job["jobs"]))
        handed = {slot: held.pop(producer) for slot, producer in request.get("values", {}).items() if producer in held}
        job["in_memory"] = {slot: request["values"][slot] for slot in handed}
        _reset_peak()
        code, kept = run_one(job, channel, handed, keep=bool(request.get("keep")))
        del handed
        if kept is not NOTHING:
            held[job["target"]] = kept
        del kept
        gc.collect()  # what the step dropped (FX graphs hold cycles), before the next one starts
        _trim_heap()
        channel.write(json.dumps({"session": "done", "code": code, "kept": job["target"] in held}) + "\n")
        channel.flush()
    return 0


def _reset_peak() -> None:
    """Start this process's VmHWM afresh, so a job's peak is its own (Linux >= 4.0)."""
    global _CHILDREN_BEFORE
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the job's peak is then the session's peak so far
    import resource

    _CHILDREN_BEFORE = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _trim_heap() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


if __name__ == "__main__":
    sys.exit(session() if sys.argv[1:] == ["--session"] else main(sys.argv[1]))
