"""The engine: decide hit or miss for each target, run the misses, commit, materialize.

For each target in topological order (independent ones in parallel, up to
``jobs``, the head of the longest remaining chain first, each step process
given its share of the cores: schedule.py):

1. decide (:meth:`Engine.decide`, the one decision ``plan`` shows too): skip
   it if an input produced nothing, mark it "unavailable" if the host cannot
   run it, else compute its action key from the *digests* of its inputs
   (keys.py) and look it up: hit, or miss with typed reasons (a record whose
   blobs are missing or corrupt is a miss with that reason);
2. under a per-key lock, look the key up again (another builder may have
   finished it meanwhile);
3. on a miss, run the step in a child process (executor.py), ingest its output
   into the blob store, then write the action record;
4. materialize the artifact under ``out/<target>/``; with ``lazy`` (a build
   with a remote cache), a hit found on the remote whose blobs are not here is
   left there unless the target was asked for or a step that runs here needs
   it as an input (Bazel's "build without the bytes": lazy.py);
5. judge it (for steps with thresholds), and remember what happened (history.py).

Example::

    engine = Engine(graph, store, project=root, out_dir=root / "out", jobs=2)
    result = engine.build(["tiny-llama"])
    result.targets["tiny-llama"].status      # Status.BUILT == "built", "cached", "failed", ...

An error of one target (a source that cannot be hashed, a store write that
fails) fails that target with a one-line reason; the others go on (``-k``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .artifacts import Artifact
from .errors import CacheCorrupt, InternalError, ModelbuildError, StoreError, one_line
from .executor import Executor, JobOutcome, LocalExecutor, StepJob
from .graph import BuildGraph, Node
from .hashing import RACY_MARGIN_NS, Seen, digest_path, hash_file, stat_signature
from .history import History
from .lazy import LazyInputs
from .keys import action_key, diff_records, key_record
from .pool import Workers
from .outcome import STATUSES, Blocker, BuildResult, Decision, Kind, Prepared, Status, TargetResult
from .fingerprint import StepCode
from .resolve import Resolver
from .schedule import Claim, CoreShare, ReadyOrder, critical_path
from .store import ActionRecord, Store

__all__ = ["Engine", "TargetResult", "BuildResult", "Event", "Prepared", "Decision", "Kind", "Status", "STATUSES"]

BUILT, CACHED, FAILED, SKIPPED, UNAVAILABLE = Status.BUILT, Status.CACHED, Status.FAILED, Status.SKIPPED, Status.UNAVAILABLE
_SETTLED = (Kind.SKIPPED, Kind.UNAVAILABLE, Kind.ERROR)  # decisions that end a target without running it


@dataclass
class Event:
    """A progress event: ``start`` / ``progress`` / ``finish`` of a target."""

    kind: str
    target: str
    step: str
    result: TargetResult | None = None
    progress: dict[str, Any] | None = None


class Engine(LazyInputs):
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
        refresh: bool = False,
        executor: Executor | None = None,
        lazy: bool = False,
    ) -> None:
        self.graph = graph
        self._init_lazy(lazy)  # lazy.py: remote hits nothing here needs stay on the remote
        #: Runs the misses (executor.py): local child processes unless given, e.g. a DaskExecutor.
        self.executor = executor if executor is not None else LocalExecutor()
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
        #: target -> which workers' toolchain keyed it (executor.Toolchain.note), for plan, build, explain
        self._keyed_there: dict[str, str] = {}
        self._stop = False
        self._share = CoreShare(os.cpu_count() or 1)
        #: target -> what its key's sources were computed from (source_digests)
        self._read: dict[str, _Consumed] = {}
        #: out/<target>/ and its files -> stat signature, as a restore found them in place (materialize.py)
        self._out_seen: dict[str, tuple[int, ...]] = {}
        #: (output file, its blob's digest, executable) of every output this build restored or wrote
        self._out_blobs: list[tuple[str, str, bool]] = []
        # Moving references (a Hub branch) are pinned before keying (resolve.py); --refresh asks again.
        self.resolver = Resolver(self.project, store.root, refresh=refresh)

    # -- events ---------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            with self._event_lock:
                self._on_event(event)

    # -- keys -----------------------------------------------------------------

    def toolchain(self, node: Node) -> dict[str, str]:
        """The toolchain versions ``node`` is keyed with: those of the workers that will run it when the
        executor routes it by its requirements (a Dask worker with Xcode: dask_executor.py), else this host's."""
        there = self.executor.toolchain(node.info, node.requirements(self.graph.nodes)) \
            if type(self.executor).toolchain is not Executor.toolchain else None
        if there is not None:
            self._keyed_there[node.name] = there.note
            return there.versions
        if node.info.name not in self._toolchains:
            self._toolchains[node.info.name] = node.toolchain_versions()
        return self._toolchains[node.info.name]

    def source_digests(self, node: Node) -> dict[str, str]:
        """Digests of the node's declared sources; the stat signatures of what
        was hashed are kept (``_read``) to check them once the step has run,
        and for the no-op fast path."""
        digests = {}
        seen: Seen = {}
        paths: dict[str, Path] = {}
        started = time.time_ns()
        for rel in node.sources(self.resolver):
            path = (self.project / rel) if not os.path.isabs(rel) else Path(rel)
            if not path.exists():
                raise _InputMissing(f"missing input file: {rel} (named in {node.target.file} at {node.target.key_path})")
            digests[rel] = digest_path(path, self.store.stat_cache, seen)
            paths[rel] = path
        self._read[node.name] = _Consumed(started, seen, {rel: (paths[rel], d) for rel, d in digests.items()})
        return digests

    def step_code(self, node: Node) -> StepCode:
        """The step's code and fingerprint (its import closure; parse results kept in the store)."""
        return node.info.code(self.store.cache)

    def changed_since_read(self, node: Node) -> str | None:
        """A source or code file of ``node`` whose content is no longer what its key was computed from.

        A step that ran meanwhile may have consumed the new content under the
        old key: its result must not be recorded under that key. Files whose
        stat signature is unchanged (and not racy) are taken as unchanged;
        the others are hashed again, so a ``touch`` or a rewrite with the
        same bytes is not a change.
        """
        def shown(path: str) -> str:
            rel = os.path.relpath(path, self.project)
            return path if rel.startswith("..") else rel

        def unsure(then: tuple[int, ...] | None, now: tuple[int, ...] | None, read_ns: int) -> bool:
            # A different signature, or one changed within a timestamp tick of
            # the read (a later write in that tick would leave it the same).
            return now != then or now is None or max(now[3], now[4]) >= read_ns - RACY_MARGIN_NS

        code = self.step_code(node)
        for f in code.files:
            if unsure(f.signature, _signature_of(str(f.path)), code.read_ns):
                try:
                    if hash_file(f.path) != f.digest:
                        return shown(str(f.path))
                except StoreError:
                    return shown(str(f.path))
        consumed = self._read.get(node.name)
        if consumed is None:
            return None
        if any(unsure(sig, _signature_of(path), consumed.started_ns) for path, sig in consumed.seen.items()):
            for path, digest in consumed.digests.values():
                try:
                    again = digest_path(path)
                except StoreError:
                    again = None
                if again != digest:
                    return shown(str(path))
        return None

    def prepare(self, node: Node, input_digests: dict[str, str | list[str]]) -> Prepared:
        """Compute the key and look it up (no lock, no side effects)."""
        params = node.key_params(self.resolver)  # from the bound graph's facts unless the step resolves
        try:
            sources = self.source_digests(node)
        except (StoreError, CacheCorrupt) as exc:  # e.g. a symlink or an unreadable file among the sources
            raise _InputMissing(f"source not usable: {one_line(exc)}") from exc
        record = key_record(
            step=node.step_name,
            step_version=node.step_facts.version,
            fingerprint=self.step_code(node).fingerprint,
            params=params,
            inputs=input_digests,
            sources=sources,
            toolchain=self.toolchain(node),
        )
        key = action_key(record)
        hit, reasons = self.lookup(key)
        if hit is None and not reasons:
            reasons = self.miss_reasons(node.name, record, key)
        if hit is None:
            reasons = [*reasons, *self._notes(node.name)]
        return Prepared(key, record, hit, reasons)

    def _notes(self, name: str) -> list[str]:
        """What the user must see beside a target's decision: the resolver's notes, and whose toolchain keyed it."""
        there = self._keyed_there.get(name)
        return [*self.resolver.notes(name), *([there] if there else [])]

    def lookup(self, key: str) -> tuple[ActionRecord | None, list[str]]:
        """The usable record for ``key``, or None with the corruption found (if any)."""
        try:
            hit = self.store.get_action(key)
        except CacheCorrupt as exc:
            return None, [f"cache entry corrupt: {exc}"]
        if hit is None:  # the shared remote tier, if any (remote.py): its blobs come when restored
            return self.store.remote_action(key), []
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

    def decide(self, node: Node, upstream: Mapping[str, TargetResult], *,
               on_keying: Callable[[], None] | None = None) -> Decision:
        """The decision for ``node`` given what its inputs came to: ``build`` and ``plan`` both use it.

        ``upstream`` maps each producer to its result (``build``) or predicted
        result (``plan``: an input still to be rebuilt has no digest yet, so
        this target is PENDING). Nothing runs and nothing is written;
        ``on_keying`` is called before the (possibly slow) hashing of sources.
        """
        producers = self.graph.producers(node.name)
        for producer in producers:
            res = upstream[producer]
            if not res.ok:
                blocker = Blocker.of(producer, res)
                return Decision(Kind.SKIPPED, (blocker.describe(),), blocked_by=blocker)
        unmet = self.executor.unmet(node.requirements(self.graph.nodes))
        if unmet:  # unless another host's result for these very inputs is in the shared remote cache
            return self._shared_hit(node, upstream) or self._unavailable(node, unmet, node.elsewhere())
        waiting = [p for p in producers if upstream[p].digest is None]
        if waiting:
            return Decision(Kind.PENDING, tuple(f"input {p} will be rebuilt (an identical rebuild keeps this a hit)" for p in waiting))
        if on_keying is not None:
            on_keying()
        digests: dict[str, str | list[str]] = {
            slot: [upstream[p].digest or "" for p in prods] if isinstance(prods, list) else upstream[prods].digest or ""
            for slot, prods in node.inputs.items()
        }
        try:
            prepared = self.prepare(node, digests)
        except _InputMissing as exc:
            return Decision(Kind.ERROR, (str(exc),))
        except (ModelbuildError, OSError) as exc:  # e.g. the cache cannot be read: this target's error
            return Decision(Kind.ERROR, (one_line(exc),))
        if prepared.hit is not None:
            return Decision(Kind.HIT, (self._hit_reason(node.name, prepared.key),), prepared)
        return Decision(Kind.MISS, tuple(prepared.reasons), prepared)

    def _shared_hit(self, node: Node, upstream: Mapping[str, TargetResult]) -> Decision | None:
        """A HIT for a step this host cannot run, when the remote cache (remote.py) holds its result
        (a Mac worker built the ``.mlmodelc``); None otherwise, or without a remote tier."""
        if self.store.remote is None or any(upstream[p].digest is None for p in self.graph.producers(node.name)):
            return None
        digests: dict[str, str | list[str]] = {
            slot: [upstream[p].digest or "" for p in prods] if isinstance(prods, list) else upstream[prods].digest or ""
            for slot, prods in node.inputs.items()
        }
        try:
            prepared = self.prepare(node, digests)
        except (_InputMissing, ModelbuildError, OSError):
            return None
        if prepared.hit is None:
            return None
        return Decision(Kind.HIT, (self._hit_reason(node.name, prepared.key),), prepared)

    def _hit_reason(self, name: str, key: str) -> str:
        previous = self.history.known(name)  # read by the scheduler at the build's start: words only
        reason = "up to date" if previous and previous.get("key") == key else "cached: built before with the same inputs"
        remote = self.store.from_remote(key)
        if remote is not None:
            reason = f"remote hit: from {remote}"
        return "; ".join([reason, *self._notes(name)])  # e.g. "offline: revision main taken as ..."

    # -- build ----------------------------------------------------------------

    def build(self, names: list[str], *, explicit: list[str] | None = None) -> BuildResult:
        """Build ``names`` and their inputs; ``explicit`` are the ones the user named (for exit codes)."""
        start = time.monotonic()
        order = self.graph.closure(names)
        results: dict[str, TargetResult] = {}
        self._wanted, self._results = set(names), results
        self.executor.check(self.graph, order, keep_going=self.keep_going)  # e.g. no Dask worker has macos
        # A killed build may have left a half-written tree beside an output that this build
        # does not write again (its target skipped or failed): out/ holds no scratch after a build.
        for parent in {(self.out_dir / name).parent for name in order}:
            self.store.sweep_scratch(parent)
        with Workers(self.jobs, "modelbuild") as pool:  # pool.py: not concurrent.futures (its import costs)
            try:
                self._schedule(pool, order, results)
            except BaseException:
                # Ctrl-C (or a bug): stop the running steps so the pool can shut down.
                self._stop = True
                self.executor.cancel_all()
                raise
        ordered = {name: results[name] for name in order}
        return BuildResult(requested=list(names), targets=ordered, duration_s=time.monotonic() - start,
                           watched=self._watched(order), explicit=list(explicit if explicit is not None else names),
                           # A worker's toolchain cannot be stat'ed here: the no-op fast path must not vouch for it.
                           valid_until_ns=0 if self._keyed_there else self.resolver.valid_until_ns)

    def _schedule(self, pool: Workers, order: list[str], results: dict[str, TargetResult]) -> None:
        pending = set(order)
        rank = critical_path(order, self.graph.consumers, self._expected_cost)
        # The records of the keys the targets had last time, and their blobs' stat
        # records, in two queries instead of two per target (store.prefetch).
        self.store.prefetch([entry["key"] for entry in map(self.history.known, order)
                             if entry and isinstance(entry.get("key"), str)])
        ready_order = ReadyOrder(order, rank, self.graph.producers, serial=self.jobs == 1)
        # Producers each target still waits for: counted down as results come
        # in, so that picking the ready targets costs O(ready), not O(targets).
        unfinished = {name: len(self.graph.producers(name)) for name in order}
        ready = [name for name in order if unfinished[name] == 0]
        running = 0

        def finished(name: str) -> None:
            self.executor.settled(name)  # e.g. a fused session drops a value no consumer will take
            ready_order.finished(name)
            for consumer in self.graph.consumers(name):
                if consumer in unfinished:
                    unfinished[consumer] -= 1
                    if unfinished[consumer] == 0:
                        ready.append(consumer)

        while pending or running:
            # Longest remaining chain first (at -j 1: depth first); ties keep the topological order.
            ready.sort(key=ready_order.key)
            starting: list[str] = []
            for name in list(ready):
                node = self.graph.nodes[name]
                if self._stop:
                    pending.discard(name)
                    ready.remove(name)
                    results[name] = TargetResult(name, node.step_name, SKIPPED, "not started: the build stopped after a failure (use --keep-going)")
                    self._emit(Event("finish", name, node.step_name, results[name]))
                    finished(name)
                    continue
                if running + len(starting) >= self.jobs:
                    break
                pending.discard(name)
                ready.remove(name)
                starting.append(name)
            # The whole batch is claimed before any of it starts: a step that runs
            # divides the cores by its siblings that run too, so none may decide
            # before its siblings are counted (on a loaded machine this thread can
            # be descheduled between two submits).
            for name, claim in [(name, self._share.claim()) for name in starting]:
                upstream = {p: results[p] for p in self.graph.producers(name)}
                pool.submit(name, self._build_one, self.graph.nodes[name], upstream, claim)
                running += 1
            if not running:
                continue
            for name, result, error in pool.finished():  # waits for at least one
                running -= 1
                node = self.graph.nodes[name]
                if isinstance(error, Exception):  # one target's internal error must not kill the build
                    result = TargetResult(name, node.step_name, FAILED, f"internal error: {type(error).__name__}: {error}")
                elif error is not None:
                    raise error
                results[name] = result
                if result.status == FAILED and not self.keep_going:
                    self._stop = True
                    self.executor.stop_pending()
                self._emit(Event("finish", name, node.step_name, result))
                finished(name)

    def _expected_cost(self, name: str) -> float:
        """Seconds the target's step took when it last ran, else 1 (a cold build ranks by depth)."""
        entry = self.history.load(name) or {}
        seconds = entry.get("duration_s")
        if entry.get("status") == BUILT and isinstance(seconds, (int, float)) and seconds > 0:
            return float(seconds)
        return 1.0

    def _watched(self, order: list[str]) -> dict[str, tuple[int, ...] | None]:
        """What the build's keys came from, for the no-op fast path: path ->
        stat signature when it was read (None: stat it when recording).

        Sources and step code carry the signature from before they were hashed,
        so a file edited later in the build shows as changed next time.
        """
        files: dict[str, tuple[int, ...] | None] = {str(p): None for p in self.graph.recipes.files}
        for name in order:
            node = self.graph.nodes[name]
            files.update((str(f.path), f.signature) for f in self.step_code(node).files)
            read = self._read.get(name)
            if read is not None:
                files.update(read.seen)
                continue
            for rel in node.sources(self.resolver, known=True):  # never keyed in this build
                path = self.project / rel
                files[str(path)] = None
                if path.is_dir():
                    files.update((str(p), None) for p in path.rglob("*"))
        files.update(self._out_seen)  # outputs restored in place: the fast path need not walk them again
        files.update(self._unlinked_blobs())
        return dict(sorted(files.items()))

    def _unlinked_blobs(self) -> dict[str, None]:
        """The blobs of output files that are not hard links to them, for the fast path to stat.

        The fast path watches out/, and an output that *is* its blob shows any damage to
        the blob in its own ctime. One that is not (placed by reflink or copy, or kept in
        place after ``cache clear`` because it held the right bytes) does not: without its
        blob watched, a blob removed or changed in the cache would pass for "nothing changed".
        """
        blobs: dict[str, None] = {}
        for out_file, digest, executable in self._out_blobs:
            blob = str(self.store.blob_path(digest, executable))
            try:
                seen = self._out_seen.get(out_file)  # a restore found it in place: stat'ed already
                if seen is None:
                    st = os.stat(out_file)
                    seen = (st.st_dev, st.st_ino)
                b = os.stat(blob)
                if tuple(seen[:2]) == (b.st_dev, b.st_ino):
                    continue
            except OSError:
                pass
            blobs[blob] = None
        return blobs

    def _note_blobs(self, dest: Path, manifest) -> None:
        self._out_blobs.extend((os.path.join(dest, e.path), e.digest, e.executable) for e in manifest.entries)

    def _build_one(self, node: Node, upstream: dict[str, TargetResult], claim: Claim) -> TargetResult:
        prepared: Prepared | None = None
        try:
            result, prepared = self._attempt(node, upstream, claim)
        except (ModelbuildError, OSError) as exc:  # one target's error: fail it, record it, go on
            result = TargetResult(node.name, node.step_name, FAILED, one_line(exc))
        except Exception as exc:  # noqa: BLE001 - a bug, but still only this target's
            result = TargetResult(node.name, node.step_name, FAILED, f"internal error: {type(exc).__name__}: {one_line(exc)}")
        finally:
            claim.release()
        self.history.record(node.name, result, prepared.key if prepared else None, prepared.record if prepared else None)
        return result

    def _attempt(self, node: Node, upstream: dict[str, TargetResult], claim: Claim) -> tuple[TargetResult, Prepared | None]:
        name, step_name = node.name, node.step_name
        decision = self.decide(node, upstream, on_keying=lambda: self._emit(Event("start", name, step_name)))
        if decision.kind in _SETTLED:
            return self._settle(node, decision), None
        prepared = decision.prepared
        if prepared is None:  # PENDING: impossible once every input has finished
            raise InternalError(f"{name}: decided before its inputs were built")
        try:
            with self.store.lock(prepared.key):
                # Another builder may have finished this key while we waited for the lock.
                if prepared.hit is None:
                    again, _ = self.lookup(prepared.key)
                    if again is not None:
                        prepared = Prepared(prepared.key, prepared.record, again, prepared.reasons)
                result = self._realize(node, upstream, prepared, claim)
        except (ModelbuildError, OSError) as exc:  # e.g. a store write that failed: this target's failure
            return TargetResult(name, step_name, FAILED, one_line(exc), list(prepared.reasons), prepared.key), prepared
        if result.ok:
            self._judge(node, result)
        return result, prepared

    def _settle(self, node: Node, decision: Decision) -> TargetResult:
        """The result of a target that ends without running (skipped, unavailable, error)."""
        return TargetResult(node.name, node.step_name, decision.status, decision.reasons[0] if decision.reasons else "",
                            command=decision.command, blocked_by=decision.blocked_by)

    def _realize(self, node: Node, upstream: dict[str, TargetResult], prepared: Prepared, claim: Claim) -> TargetResult:
        name, step_name = node.name, node.step_name  # the step itself is loaded only if it must run (_run)
        dest = self.out_dir / name
        record = prepared.hit
        if record is not None and self._leave(node, prepared.key, record):
            claim.skip()
            return self._left_there(node, prepared.key, record)
        if record is not None:
            claim.skip()
            try:
                self.store.materialize(record.manifest, dest, seen=self._out_seen)
                self._note_blobs(dest, record.manifest)
            except CacheCorrupt as exc:
                unmet = self.executor.unmet(node.requirements(self.graph.nodes))
                if unmet:  # another host's shared result failed its check, and this host cannot run the step
                    return self._settle(node, self._unavailable(node, unmet, node.elsewhere()))
                prepared = Prepared(prepared.key, prepared.record, None, [f"cache entry corrupt: {exc}"])
                record = None
            else:
                reason = self._hit_reason(name, prepared.key)
                return TargetResult(
                    name, step_name, CACHED, reason, [reason], prepared.key, record.manifest.digest,
                    record.manifest.size, 0.0, dest, None, record.summary,
                    remote_hit=self.store.from_remote(prepared.key) is not None,
                )
        blocked = self._fetch_inputs(node, upstream, claim)
        if blocked is not None:
            return blocked
        outcome, record, log = self._run(node, upstream, prepared, claim)
        reason = "; ".join(prepared.reasons)
        if outcome.status == "unavailable":
            return self._settle(node, self._unavailable(node, outcome.needs or outcome.reason, outcome.command))
        if outcome.status != "ok" or record is None:
            return TargetResult(name, step_name, FAILED, outcome.reason, prepared.reasons, prepared.key,
                                duration_s=outcome.duration_s, log=log, peak_rss_bytes=outcome.peak_rss_bytes)
        self.store.materialize(record.manifest, dest)
        self._note_blobs(dest, record.manifest)
        return TargetResult(
            name, step_name, BUILT, reason, prepared.reasons, prepared.key, record.manifest.digest,
            record.manifest.size, outcome.duration_s, dest, log, record.summary,
            peak_rss_bytes=outcome.peak_rss_bytes, worker=outcome.worker,
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
            return {"kind": self.graph.nodes[producer].kind, "path": str(res.out), "digest": res.digest or "", "target": producer,
                    "key": res.key or ""}

        inputs = {
            slot: [spec(p) for p in producers] if isinstance(producers, list) else spec(producers)
            for slot, producers in node.inputs.items()
        }
        job = {
            "step": step.name,
            "entry": node.info.entry,
            "target": name,
            "params": self.resolver.params(node).model_dump(mode="json"),
            "inputs": inputs,
            "sources": {rel: str((self.project / rel).resolve()) for rel in step.sources(self.resolver.params(node))},
            "out": str(out),
            "work": str(work),
            "downloads": str(self.store.root / "downloads"),
            "jobs": claim.run(),
            "project": str(self.project),
            "log": str(log),
        }
        (self.store.root / "downloads").mkdir(exist_ok=True)
        try:
            requirements = node.requirements(self.graph.nodes)
            outcome = self.executor.submit(StepJob(job, scratch / "job", prepared.key, prepared.record, requirements,
                                                   lambda p: self._emit(Event("progress", name, step.name, progress=p)))).result()
            if outcome.status != "ok":
                return outcome, None, log
            changed = self.changed_since_read(node)
            if changed is not None:  # the key says the old content; the step may have read the new
                return JobOutcome("failed", f"{changed} changed while the step ran (its result is not cached; build again)",
                                  duration_s=outcome.duration_s), None, log
            try:  # a remote executor stored the output's blobs itself (and checked them)
                manifest = outcome.manifest if outcome.manifest is not None else self.store.ingest(out)
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

    def _unavailable(self, node: Node, needs: str, command: str | None) -> Decision:
        reason = f"needs {needs}"
        if node.kind == "measurements":
            reason = f"not validated here: needs {needs}"
            if self.require_validation:
                return Decision(Kind.ERROR, (reason + " (--require-validation)",), command=command)
        return Decision(Kind.UNAVAILABLE, (reason,), command=command)

    def _judge(self, node: Node, result: TargetResult) -> None:
        if result.out is None:
            return
        if not node.judges:  # Step.judge not overridden: nothing to judge (and no need to load the step)
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
    """A declared source is missing or cannot be hashed: the target cannot be keyed."""


@dataclass(frozen=True)
class _Consumed:
    """What a target's sources were keyed from: when hashing started, the stat
    signature of each file and directory read, and each source's digest."""

    started_ns: int
    seen: Seen
    digests: dict[str, tuple[Path, str]]


def _signature_of(path: str) -> tuple[int, ...] | None:
    try:
        return stat_signature(os.stat(path))
    except OSError:
        return None

