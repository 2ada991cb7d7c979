"""What runs on a Dask worker for one step: :func:`run_step`.

The scheduler carries only small records: the job's fields, its action key,
the key record, and the *manifests* of its inputs (paths, sizes and digests,
never bytes). On the worker the task

1. checks that this host is the one the key describes: the step's code
   fingerprint, its toolchain versions and the digests of its declared source
   files must be what the engine keyed (a worker with another torch, or an
   older checkout of the project, would otherwise cache its output under a
   key that says something else), and that it has what the step requires
   (``MODELBUILD_HOST_PLATFORM`` makes a Linux worker a Mac stand-in in tests).
   A step routed here by its requirements was keyed with this worker's own
   toolchain (:func:`toolchain_of`, asked before keying), so it passes;
2. pulls each input from the shared store by digest, verified on arrival
   (:meth:`Store.missing_or_corrupt`), into its own scratch directory;
3. runs the step in the same child-process sandbox as a local build
   (:func:`modelbuild.executor.run_job`);
4. commits the output's blobs to the shared store and returns its manifest
   (the engine checks the blobs and writes the action record: the engine owns
   the action cache).

The worker's name is exported to the step's process as ``MODELBUILD_WORKER``
(for logs, and for tests that prove where a step ran).

Example (what :class:`~modelbuild.dask_executor.DaskExecutor` submits)::

    client.submit(run_step, spec, resources={"macos": 1}, pure=False)
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

__all__ = ["run_step", "toolchain_of", "LOG_TAIL_BYTES"]

#: How much of a step's log comes back through the scheduler (the end of it).
LOG_TAIL_BYTES = 256 * 1024

_STORES: dict[str, Any] = {}
_REMOTES: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _store(root: str):
    from .store import Store

    with _LOCK:
        if root not in _STORES:
            _STORES[root] = Store(Path(root))
        return _STORES[root]


def _info(name: str, entry: str):
    """A fresh StepInfo per task: its fingerprint must be that of the code on disk now, which
    the step's process will import (the store's parse index keeps this to a few stats)."""
    from .plugins import StepInfo

    return StepInfo(name, entry)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name if worker.name is not None else worker.address)
    except (ImportError, ValueError):
        return f"pid-{os.getpid()}"


def _threads() -> int:
    """Threads a step may use here: the worker's ``cpu`` resource, else the cores per worker thread."""
    try:
        from distributed import get_worker

        worker = get_worker()
        cpu = (worker.state.total_resources or {}).get("cpu")
        if cpu:
            return max(1, int(cpu))
        return max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return os.cpu_count() or 1


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_untouched = True


def _forget_nanny_threads() -> None:
    """Drop the ``OMP_NUM_THREADS=1`` (etc.) a Dask nanny puts in its worker's environment.

    worker.py gives a step its thread count through these variables unless the
    user set them; left in place, the nanny's 1 would run every step on one
    core. A value other than the nanny's is the user's and stays.
    """
    global _untouched
    with _LOCK:
        if not _untouched:
            return
        _untouched = False
        try:
            import dask

            preset = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
        except ImportError:
            return
        for var in _THREAD_VARS:
            if var in preset and os.environ.get(var) == str(preset[var]):
                del os.environ[var]


def toolchain_of(step: str, entry: str) -> dict[str, str]:
    """The toolchain versions this worker would key ``step`` with (what :func:`run_step` checks a key against).

    The Dask executor asks the workers that can take a step this way before the
    engine keys it, when the machine running ``modelbuild build`` cannot run the
    step itself: a Linux client cannot probe a Mac's Xcode (``client.run``,
    so a worker busy with a step still answers).
    """
    return dict(_info(step, entry).instance().toolchain_versions())


def _failed(reason: str, worker: str, **extra: Any) -> dict[str, Any]:
    return {"status": "failed", "reason": reason, "worker": worker, **extra}


def run_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one step job on this worker; return a small JSON-able record of how it ended.

    ``spec``: ``job`` (worker.py fields, engine paths), ``store`` (the shared
    cache's path), ``key``, ``record`` (the key record), ``inputs`` (slot ->
    manifest JSON, or a list of them), ``requirements``.
    """
    from .errors import ModelbuildError, one_line

    worker = _worker_name()
    # Constant per process: safe to set from any task thread.
    os.environ["MODELBUILD_WORKER"] = worker
    _forget_nanny_threads()
    try:
        return _run(spec, worker)
    except (ModelbuildError, OSError) as exc:
        return _failed(f"on worker {worker}: {one_line(exc)}", worker)


def _cancelled_probe():
    """A function telling whether this task was cancelled (the build stopped, Ctrl-C).

    Dask cannot interrupt a running task's thread; the step's process can be
    killed, though, once the worker has been told the task is no longer wanted.
    Call it in the task's own thread.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError, AttributeError, KeyError):
        return lambda: False

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")

    return cancelled


def _run_job(job: dict[str, Any], job_dir: Path, cancelled) -> Any:
    """:func:`modelbuild.executor.run_job` (the same sandbox), with its process killed if the task is cancelled."""
    import json
    import signal
    import time

    from .executor import forget, job_outcome, spawn_worker

    job_dir.mkdir(parents=True, exist_ok=True)
    result_path = job_dir / "result.json"
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps({**job, "result": str(result_path)}))
    start = time.monotonic()
    proc = spawn_worker([str(job_path)], job["work"])
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if cancelled():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the step and whatever it started
                except (ProcessLookupError, PermissionError):
                    pass
                return

    watcher = threading.Thread(target=watch, name="modelbuild-cancel-watch", daemon=True)
    watcher.start()
    try:
        assert proc.stdout is not None
        for _line in proc.stdout:  # progress lines: not relayed through the scheduler
            pass
        code = proc.wait()
    finally:
        done.set()
        forget(proc)
    return job_outcome(code, result_path, time.monotonic() - start)


def _run(spec: dict[str, Any], worker: str) -> dict[str, Any]:
    from .hashing import digest_path
    from .step import Requirements, unmet_requirement

    job = dict(spec["job"])
    record = spec["record"]
    req = Requirements(**spec.get("requirements") or {})
    lacks = unmet_requirement(req)
    if lacks:
        return {"status": "unavailable", "needs": lacks, "worker": worker,
                "reason": f"worker {worker} was given a step that needs {lacks}, which it lacks"}
    store, remote = _caches(spec, worker)
    info = _info(job["step"], job["entry"])
    step = info.instance()
    # This host must be the one the key describes.
    here = info.code(store.cache).fingerprint
    if here != record.get("step_code"):
        return _failed(f"worker {worker} has different code for step {job['step']} than the build that keyed it "
                       f"(install the same modelbuild and plugins there)", worker)
    # Both ways: a version the key lacks counts too (an Xcode that the keying host could not
    # probe), else a result would be cached under a key that does not describe its toolchain.
    ours, keyed = step.toolchain_versions(), dict(record.get("toolchain") or {})
    for dist in sorted(set(ours) | set(keyed)):
        if ours.get(dist) != keyed.get(dist):
            have = f"has {dist} {ours[dist]}" if dist in ours else f"has no {dist}"
            want = f"with {keyed[dist]}" if dist in keyed else f"without {dist}"
            return _failed(f"worker {worker} {have}, the key was computed {want}", worker)
    for rel, digest in (record.get("sources") or {}).items():
        path = Path(job["sources"].get(rel, ""))
        if not path.exists():
            return _failed(f"source {rel} is not at {path} on worker {worker} (workers need the project checkout)", worker)
        if digest_path(path, store.stat_cache) != digest:
            return _failed(f"source {rel} on worker {worker} is not what the build keyed (a different checkout?)", worker)

    scratch = store.scratch_dir(f"{job['target']}-")
    try:
        inputs = {}
        for slot, specs in job["inputs"].items():
            manifests = spec["inputs"][slot]
            if isinstance(specs, list):
                inputs[slot] = [_pull(store, remote, s, m, scratch / "in" / f"{slot}-{i}")
                                for i, (s, m) in enumerate(zip(specs, manifests))]
            else:
                inputs[slot] = _pull(store, remote, specs, manifests, scratch / "in" / slot)
        out, work, log = scratch / "out", scratch / "work", scratch / "step.log"
        out.mkdir()
        work.mkdir()
        log.write_text("")
        job.update(inputs=inputs, out=str(out), work=str(work), log=str(log), jobs=_threads(),
                   downloads=str(store.downloads))
        outcome = _run_job(job, scratch / "job", _cancelled_probe())
        result: dict[str, Any] = {
            "status": outcome.status, "reason": outcome.reason, "summary": outcome.summary,
            "duration_s": outcome.duration_s, "needs": outcome.needs, "command": outcome.command,
            "peak_rss_bytes": outcome.peak_rss_bytes, "worker": worker, "log": _tail(log),
        }
        if outcome.status == "ok":
            manifest = store.ingest(out)  # blobs only: the engine writes the action record
            if remote is not None:  # the engine's cache is not here: hand the output over through the remote
                remote.push_blobs(manifest, store)
                result["via"] = "remote"
            result["manifest"] = manifest.to_json()
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _caches(spec: dict[str, Any], worker: str):
    """The store this task works in, and the remote tier it exchanges artifacts through (or None).

    The build's cache directory when this worker sees it; the worker's own
    cache (``MODELBUILD_WORKER_CACHE``, else ~/.cache/modelbuild-worker) plus
    the build's remote cache when it does not, or when it is told to keep its
    own. Writing outputs to the remote needs a build that uploads (``--remote-upload``).
    """
    from .errors import ModelbuildError

    shared = spec["store"] if os.path.isdir(spec["store"]) else None
    own = os.environ.get("MODELBUILD_WORKER_CACHE")
    remote_spec = spec.get("remote")
    if shared is not None and not (own and remote_spec):
        return _store(shared), None
    if not remote_spec:
        raise ModelbuildError(f"the build's cache {spec['store']} is not mounted on worker {worker} "
                              "and the build has no remote cache (--remote-cache) to exchange artifacts through")
    if not remote_spec.get("upload"):
        raise ModelbuildError(f"worker {worker} does not share the build's cache: it needs a build that may write "
                              "the remote cache (--remote-upload) to hand its output back")
    root = own or os.path.join(os.path.expanduser("~"), ".cache", "modelbuild-worker")
    return _store(root), _remote(remote_spec)


def _remote(remote_spec: dict[str, Any]):
    from .remote import RemoteCache

    key = (remote_spec["url"], repr(sorted((remote_spec.get("options") or {}).items())))
    with _LOCK:
        if key not in _REMOTES:
            _REMOTES[key] = RemoteCache(remote_spec["url"], options=remote_spec.get("options") or {},
                                        upload=True, required=True)
        return _REMOTES[key]


def _pull(store, remote, spec: dict[str, Any], manifest_json: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Materialize one input from the store (fetched from the remote first if it is not here),
    checked against its digest; its job spec here."""
    from .errors import CacheCorrupt
    from .hashing import Manifest

    manifest = Manifest.from_json(manifest_json)
    if manifest.digest != spec["digest"]:
        raise CacheCorrupt(f"input {spec['target']}: its manifest does not match digest {spec['digest']}")
    if remote is not None:
        remote.pull(manifest, store)  # each blob hashed on arrival
    problems = store.missing_or_corrupt(manifest)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CacheCorrupt(f"input {spec['target']} is not usable in the shared cache: {problems[0]}{more}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    store.materialize(manifest, dest)
    return {**spec, "path": str(dest)}


def _tail(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if size <= LOG_TAIL_BYTES else f"[... {size - len(data)} bytes of the log left on the worker ...]\n" + text
