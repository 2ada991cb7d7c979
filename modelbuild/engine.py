"""The engine: decide hit or miss for each target, run the misses, commit, materialize.

For each target in topological order (independent ones in parallel, up to
``jobs``, the head of the longest remaining chain first, each step process
given its share of the cores: schedule.py):

1. skip it if an input failed; mark it "unavailable" if the host cannot run it;
2. compute its action key from the *digests* of its inputs (keys.py);
3. under a per-key lock, look the key up in the action cache; a record whose
   blobs are missing or corrupt is a miss with that reason;
4. on a miss, run the step in a child process (executor.py), ingest its output
   into the blob store, then write the action record;
5. materialize the artifact under ``out/<target>/``;
6. judge it (for steps with thresholds), and remember what happened (history.py).

Example::

    engine = Engine(graph, store, project=root, out_dir=root / "out", jobs=2)
    result = engine.build(["tiny-llama"])
    result.targets["tiny-llama"].status      # "built", "cached", "failed", ...
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .artifacts import Artifact
from .errors import CacheCorrupt, ModelbuildError, StoreError
from .executor import JobOutcome, run_job, terminate_all
from .graph import BuildGraph, Node, input_kinds
from .hashing import digest_path
from .history import History
from .keys import action_key, diff_records, key_record
from .plugins import source_files
from .schedule import Claim, CoreShare, critical_path
from .step import unmet_requirement
from .store import ActionRecord, Store

__all__ = ["Engine", "TargetResult", "BuildResult", "Event", "Prepared", "STATUSES"]

BUILT, CACHED, FAILED, SKIPPED, UNAVAILABLE = "built", "cached", "failed", "skipped", "unavailable"
STATUSES = (BUILT, CACHED, FAILED, SKIPPED, UNAVAILABLE)


@dataclass
class TargetResult:
    """What happened to one target in a build."""

    name: str
    step: str
    status: str
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

    @property
    def ok(self) -> bool:
        return self.status in (BUILT, CACHED)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out) if self.out else None
        data["log"] = str(self.log) if self.log else None
        return data


@dataclass
class BuildResult:
    requested: list[str]
    targets: dict[str, TargetResult]
    duration_s: float = 0.0
    #: Files the build's keys were derived from (recipes, step code, sources), for the no-op fast path.
    watched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless a target failed or was skipped because of a failure."""
        return not any(r.status == FAILED or (r.status == SKIPPED and "failed" in r.reason) for r in self.targets.values())

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for r in self.targets.values():
            counts[r.status] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "modelbuild-build-report/1",
            "ok": self.ok,
            "requested": self.requested,
            "duration_s": round(self.duration_s, 3),
            "counts": self.counts(),
            "targets": {name: r.to_json() for name, r in self.targets.items()},
        }


@dataclass
class Event:
    """A progress event: ``start`` / ``progress`` / ``finish`` of a target."""

    kind: str
    target: str
    step: str
    result: TargetResult | None = None
    progress: dict[str, Any] | None = None


@dataclass
class Prepared:
    """A target's key and the reasons it would (or would not) run."""

    key: str
    record: dict[str, Any]
    hit: ActionRecord | None
    reasons: list[str]


class Engine:
    def __init__(
        self,
        graph: BuildGraph,
        store: Store,
        *,
        project: Path,
        out_dir: Path,
        jobs: int | None = None,
        keep_going: bool = False,
        require_validation: bool = False,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.graph = graph
        self.store = store
        self.project = Path(project)
        self.out_dir = Path(out_dir)
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.keep_going = keep_going
        self.require_validation = require_validation
        self.history = History(store.root)
        self._on_event = on_event
        self._event_lock = threading.Lock()
        self._toolchains: dict[str, dict[str, str]] = {}
        self._stop = False
        self._share = CoreShare(os.cpu_count() or 1)

    # -- events ---------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            with self._event_lock:
                self._on_event(event)

    # -- keys -----------------------------------------------------------------

    def toolchain(self, node: Node) -> dict[str, str]:
        if node.info.name not in self._toolchains:
            self._toolchains[node.info.name] = node.step.toolchain_versions()
        return self._toolchains[node.info.name]

    def source_digests(self, node: Node) -> dict[str, str]:
        digests = {}
        for rel in node.step.sources(node.params):
            path = (self.project / rel) if not os.path.isabs(rel) else Path(rel)
            if not path.exists():
                raise _InputMissing(f"missing input file: {rel} (named in {node.target.file} at {node.target.key_path})")
            digests[rel] = digest_path(path, self.store.stat_cache)
        return digests

    def prepare(self, node: Node, input_digests: dict[str, str | list[str]]) -> Prepared:
        """Compute the key and look it up (no lock, no side effects)."""
        params = node.params.model_dump(mode="json", exclude=set(node.step.judge_params))
        record = key_record(
            step=node.step.name,
            step_version=node.step.version,
            fingerprint=node.info.fingerprint,
            params=params,
            inputs=input_digests,
            sources=self.source_digests(node),
            toolchain=self.toolchain(node),
        )
        key = action_key(record)
        hit, reasons = self.lookup(key)
        if hit is None and not reasons:
            reasons = self.miss_reasons(node.name, record, key)
        return Prepared(key, record, hit, reasons)

    def lookup(self, key: str) -> tuple[ActionRecord | None, list[str]]:
        """The usable record for ``key``, or None with the corruption found (if any)."""
        try:
            hit = self.store.get_action(key)
        except CacheCorrupt as exc:
            return None, [f"cache entry corrupt: {exc}"]
        if hit is None:
            return None, []
        problems = self.store.missing_or_corrupt(hit.manifest)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return None, [f"cache entry corrupt: {problems[0]}{more}"]
        return hit, []

    def miss_reasons(self, name: str, record: dict[str, Any], key: str) -> list[str]:
        previous = self.history.load(name)
        if previous is None or "record" not in previous:
            return ["new target"]
        if previous.get("key") == key:
            if previous.get("status") == FAILED:
                return ["retrying: the last attempt with these inputs failed"]
            return ["output missing: the cache no longer holds this result"]
        return diff_records(previous["record"], record) or ["key changed"]

    # -- build ----------------------------------------------------------------

    def build(self, names: list[str]) -> BuildResult:
        start = time.monotonic()
        order = self.graph.closure(names)
        results: dict[str, TargetResult] = {}
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="modelbuild") as pool:
            try:
                self._schedule(pool, order, results)
            except BaseException:
                # Ctrl-C (or a bug): stop the running steps so the pool can shut down.
                self._stop = True
                terminate_all()
                raise
        ordered = {name: results[name] for name in order}
        return BuildResult(requested=list(names), targets=ordered, duration_s=time.monotonic() - start, watched=self._watched(order))

    def _schedule(self, pool: ThreadPoolExecutor, order: list[str], results: dict[str, TargetResult]) -> None:
        pending = list(order)
        rank = critical_path(order, self.graph.consumers, self._expected_cost)
        position = {name: i for i, name in enumerate(order)}
        running: dict[Future, str] = {}
        while pending or running:
            ready = [n for n in pending if all(p in results for p in self.graph.producers(n))]
            # Longest remaining chain first; ties keep the stable topological order.
            ready.sort(key=lambda n: (-rank[n], position[n]))
            for name in ready:
                node = self.graph.nodes[name]
                if self._stop:
                    pending.remove(name)
                    results[name] = TargetResult(name, node.step.name, SKIPPED, "not started: the build stopped after a failure (use --keep-going)")
                    self._emit(Event("finish", name, node.step.name, results[name]))
                    continue
                if len(running) >= self.jobs:
                    break
                pending.remove(name)
                upstream = {p: results[p] for p in self.graph.producers(name)}
                running[pool.submit(self._build_one, node, upstream, self._share.claim())] = name
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                node = self.graph.nodes[name]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - one target's internal error must not kill the build
                    result = TargetResult(name, node.step.name, FAILED, f"internal error: {type(exc).__name__}: {exc}")
                results[name] = result
                if result.status == FAILED and not self.keep_going:
                    self._stop = True
                self._emit(Event("finish", name, node.step.name, result))

    def _expected_cost(self, name: str) -> float:
        """Seconds the target's step took when it last ran, else 1 (a cold build ranks by depth)."""
        entry = self.history.load(name) or {}
        seconds = entry.get("duration_s")
        if entry.get("status") == BUILT and isinstance(seconds, (int, float)) and seconds > 0:
            return float(seconds)
        return 1.0

    def _watched(self, order: list[str]) -> list[str]:
        files = {str(p) for p in self.graph.recipes.files}
        for name in order:
            node = self.graph.nodes[name]
            files.update(str(p) for p in source_files(node.info.cls))
            for rel in node.step.sources(node.params):
                path = self.project / rel
                files.add(str(path))
                if path.is_dir():
                    files.update(str(p) for p in path.rglob("*"))
        return sorted(files)

    def _build_one(self, node: Node, upstream: dict[str, TargetResult], claim: Claim) -> TargetResult:
        try:
            result, prepared = self._attempt(node, upstream, claim)
        finally:
            claim.release()
        entry: dict[str, Any] = {
            "status": result.status,
            "reason": result.reason,
            "reasons": result.reasons,
            "duration_s": result.duration_s,
            "summary": result.summary,
            "log": str(result.log) if result.log else None,
            "digest": result.digest,
            "verdict": result.verdict,
            "command": result.command,
            "when": time.time(),
        }
        if prepared is not None:
            entry.update(key=prepared.key, record=prepared.record)
        else:
            # Not even keyed this time (skipped, unavailable): keep the last key
            # so the next real build still explains what changed since then.
            previous = self.history.load(node.name) or {}
            entry.update(key=previous.get("key"), record=previous.get("record"))
            if entry["record"] is None:
                del entry["record"]
        self.history.save(node.name, entry)
        return result

    def _attempt(self, node: Node, upstream: dict[str, TargetResult], claim: Claim) -> tuple[TargetResult, Prepared | None]:
        name, step = node.name, node.step
        for producer, res in upstream.items():
            if not res.ok:
                what = {FAILED: "failed", UNAVAILABLE: f"is unavailable here ({res.reason})", SKIPPED: "was skipped"}[res.status]
                if res.status == FAILED or (res.status == SKIPPED and "failed" in res.reason):
                    what = "failed"
                return TargetResult(name, step.name, SKIPPED, f"input {producer} {what}"), None
        kinds = input_kinds(node, self.graph.nodes)
        unmet = unmet_requirement(step.requirements(node.params, kinds))
        if unmet:
            return self._unavailable(node, unmet, step.elsewhere(name, node.params)), None
        self._emit(Event("start", name, step.name))
        digests: dict[str, str | list[str]] = {}
        for slot, producers in node.inputs.items():
            if isinstance(producers, list):
                digests[slot] = [upstream[p].digest or "" for p in producers]
            else:
                digests[slot] = upstream[producers].digest or ""
        try:
            prepared = self.prepare(node, digests)
        except _InputMissing as exc:
            return TargetResult(name, step.name, FAILED, str(exc)), None
        with self.store.lock(prepared.key):
            # Another builder may have finished this key while we waited for the lock.
            if prepared.hit is None:
                again, _ = self.lookup(prepared.key)
                if again is not None:
                    prepared = Prepared(prepared.key, prepared.record, again, prepared.reasons)
            result = self._realize(node, upstream, prepared, claim)
        if result.ok:
            self._judge(node, result)
        return result, prepared

    def _realize(self, node: Node, upstream: dict[str, TargetResult], prepared: Prepared, claim: Claim) -> TargetResult:
        name, step = node.name, node.step
        dest = self.out_dir / name
        record = prepared.hit
        if record is not None:
            claim.skip()
            try:
                self.store.materialize(record.manifest, dest)
            except CacheCorrupt as exc:
                prepared = Prepared(prepared.key, prepared.record, None, [f"cache entry corrupt: {exc}"])
                record = None
            else:
                previous = self.history.load(name)
                reason = "up to date" if previous and previous.get("key") == prepared.key else "cached: built before with the same inputs"
                return TargetResult(
                    name, step.name, CACHED, reason, [reason], prepared.key, record.manifest.digest,
                    record.manifest.size, 0.0, dest, None, record.summary,
                )
        outcome, record, log = self._run(node, upstream, prepared, claim)
        reason = "; ".join(prepared.reasons)
        if outcome.status == "unavailable":
            return self._unavailable(node, outcome.needs or outcome.reason, outcome.command)
        if outcome.status != "ok" or record is None:
            return TargetResult(name, step.name, FAILED, outcome.reason, prepared.reasons, prepared.key,
                                duration_s=outcome.duration_s, log=log, peak_rss_bytes=outcome.peak_rss_bytes)
        self.store.materialize(record.manifest, dest)
        return TargetResult(
            name, step.name, BUILT, reason, prepared.reasons, prepared.key, record.manifest.digest,
            record.manifest.size, outcome.duration_s, dest, log, record.summary,
            peak_rss_bytes=outcome.peak_rss_bytes,
        )

    def _run(self, node: Node, upstream: dict[str, TargetResult], prepared: Prepared, claim: Claim) -> tuple[JobOutcome, ActionRecord | None, Path]:
        name, step = node.name, node.step
        scratch = self.store.scratch_dir(f"{name}-")
        out, work = scratch / "out", scratch / "work"
        out.mkdir()
        work.mkdir()
        log = self.store.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

        def spec(producer: str) -> dict[str, str]:
            res = upstream[producer]
            return {"kind": self.graph.nodes[producer].kind, "path": str(res.out), "digest": res.digest or "", "target": producer}

        inputs = {
            slot: [spec(p) for p in producers] if isinstance(producers, list) else spec(producers)
            for slot, producers in node.inputs.items()
        }
        job = {
            "step": step.name,
            "entry": node.info.entry,
            "target": name,
            "params": node.params.model_dump(mode="json"),
            "inputs": inputs,
            "sources": {rel: str((self.project / rel).resolve()) for rel in step.sources(node.params)},
            "out": str(out),
            "work": str(work),
            "downloads": str(self.store.root / "downloads"),
            "jobs": claim.run(),
            "project": str(self.project),
            "log": str(log),
        }
        (self.store.root / "downloads").mkdir(exist_ok=True)
        try:
            outcome = run_job(job, scratch / "job", lambda p: self._emit(Event("progress", name, step.name, progress=p)))
            if outcome.status != "ok":
                return outcome, None, log
            try:
                manifest = self.store.ingest(out)
            except StoreError as exc:
                return JobOutcome("failed", str(exc), duration_s=outcome.duration_s), None, log
            record = ActionRecord(
                key=prepared.key,
                step=step.name,
                target=name,
                manifest=manifest,
                key_record=prepared.record,
                summary=outcome.summary,
                duration_s=outcome.duration_s,
                created=time.time(),
            )
            self.store.put_action(record)
            return outcome, record, log
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _unavailable(self, node: Node, needs: str, command: str | None) -> TargetResult:
        step = node.step
        reason = f"needs {needs}"
        if step.output == "measurements":
            reason = f"not validated here: needs {needs}"
        if self.require_validation and step.output == "measurements":
            return TargetResult(node.name, step.name, FAILED, reason + " (--require-validation)", command=command)
        return TargetResult(node.name, step.name, UNAVAILABLE, reason, command=command)

    def _judge(self, node: Node, result: TargetResult) -> None:
        if result.out is None:
            return
        artifact = Artifact(kind=node.kind, path=result.out, digest=result.digest or "", target=node.name)
        try:
            verdict = node.step.judge(node.params, artifact)
        except ModelbuildError as exc:
            result.status, result.reason = FAILED, f"judging failed: {exc}"
            return
        if verdict is None:
            return
        result.verdict = {"ok": verdict.ok, "reason": verdict.reason, "status": verdict.status, "figures": dict(verdict.figures)}
        if not verdict.ok:
            result.status = FAILED
            result.reason = verdict.reason


class _InputMissing(Exception):
    pass
