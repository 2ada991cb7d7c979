"""Lazy materialization: a build with a remote cache downloads only the bytes it needs.

Bazel's "build without the bytes": deciding the next step's key needs only a
hit's *record* (key -> output digests), not its blobs. So a hit that the
remote cache answered, and whose blobs are not in the local store, is left
there (:meth:`LazyInputs._leave`) unless

- the target was asked for (its ``out/`` must be written),
- its step judges its output (a verdict needs the bytes), or
- a step that must run here takes it as an input: :meth:`LazyInputs._fetch_inputs`
  downloads it (verified) into the store and ``out/<input>/`` before the step
  starts; a blob found corrupt there has the input's step run here instead.

Such a result is CACHED with ``remote_only`` set and no ``out``; the report,
``explain`` and the summary say "not downloaded". Without a remote (or with
``lazy=False``: ``release``) every hit is restored into ``out/`` as before.

This is a mixin of :class:`~modelbuild.engine.Engine` (it uses the engine's
store, graph, history, events and ``_realize``), kept apart so that the
engine module reads as the decide -> run -> commit -> materialize path.
"""

from __future__ import annotations

import threading
from dataclasses import fields
from typing import TYPE_CHECKING

from .errors import CacheCorrupt, ModelbuildError, one_line
from .materialize import holds
from .outcome import Blocker, Prepared, Status, TargetResult

if TYPE_CHECKING:
    from .graph import Node
    from .schedule import Claim
    from .store import ActionRecord

__all__ = ["LazyInputs", "NOT_DOWNLOADED"]

#: Appended to the reason of a hit left on the remote.
NOT_DOWNLOADED = " (not downloaded: no step here needs it)"


class LazyInputs:
    """The engine's lazy-materialization methods (see the module docstring)."""

    def _init_lazy(self, lazy: bool) -> None:
        #: Leave remote hits that nothing here needs on the remote (see :meth:`_leave`).
        self.lazy = lazy
        self._wanted: set[str] = set()  # the targets asked for: their out/ is always materialized
        self._results: dict[str, TargetResult] = {}
        #: name -> the remote record of a result left on the remote in this build
        self._left: dict[str, "ActionRecord"] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}

    def _leave(self, node: "Node", key: str, record: "ActionRecord") -> bool:
        """Leave this hit's blobs on the remote: it came from there, some blob is not
        here, nobody asked for the target, and it has no verdict to judge (that
        needs its bytes). Its consumers that run fetch it first (:meth:`_fetch_inputs`)."""
        return (self.lazy and node.name not in self._wanted and not node.judges
                and self.store.from_remote(key) is not None and self.store.lacks(record.manifest) > 0)

    def _left_there(self, node: "Node", key: str, record: "ActionRecord") -> TargetResult:
        """A CACHED result whose blobs stay on the remote; ``out/<name>`` is not written, and one
        left by an earlier build that holds something else is removed (out/ never shows a stale artifact)."""
        dest = self.out_dir / node.name
        here = dest.exists() or dest.is_symlink()
        if here and not holds(dest, record.manifest, self.store.stat_cache):
            self.store.remove_output(dest)
            here = False
        self._left[node.name] = record
        reason = self._hit_reason(node.name, key) + NOT_DOWNLOADED
        return TargetResult(node.name, node.step_name, Status.CACHED, reason, [reason], key, record.manifest.digest,
                            record.manifest.size, 0.0, dest if here else None, None, record.summary,
                            remote_hit=True, remote_only=True)

    def _fetch_inputs(self, node: "Node", upstream: dict[str, TargetResult], claim: "Claim") -> TargetResult | None:
        """Before ``node`` runs: download the inputs left on the remote into ``out/``
        (verified). A corrupt remote copy is rebuilt here; the result of ``node`` to
        return when that fails or gives other bytes, else None."""
        for producer in self.graph.producers(node.name):
            res = upstream[producer]
            if not res.remote_only:
                continue
            with self._fetch_locks.setdefault(producer, threading.Lock()):
                if not res.remote_only:  # another consumer fetched it meanwhile
                    continue
                record = self._left[producer]
                from .engine import Event  # the engine imports this module

                self._emit(Event("progress", node.name, node.step_name,
                                 progress={"message": f"fetching input {producer} from the remote cache"}))
                dest = self.out_dir / producer
                try:
                    self.store.materialize(record.manifest, dest)
                except CacheCorrupt as exc:
                    again = self._rebuild_left(producer, record, exc, claim)
                    for f in fields(TargetResult):  # the producer's result, as its consumers and the report see it
                        setattr(res, f.name, getattr(again, f.name))
                    self._emit(Event("finish", producer, res.step, res))
                    if not res.ok:
                        blocker = Blocker.of(producer, res)
                        return TargetResult(node.name, node.step_name, Status.SKIPPED, blocker.describe(), blocked_by=blocker)
                    if res.digest != record.manifest.digest:
                        return TargetResult(node.name, node.step_name, Status.FAILED,
                                            f"input {producer} was rebuilt (its remote copy is corrupt) with other bytes "
                                            "than the remote cache recorded; build again")
                    continue
                res.out, res.remote_only = dest, False
                res.reason = res.reason.removesuffix(NOT_DOWNLOADED)
                res.reasons = [res.reason]
                self.history.record(producer, res, record.key, record.key_record)  # explain: downloaded after all
        return None

    def _rebuild_left(self, name: str, record: "ActionRecord", exc: CacheCorrupt, claim: "Claim") -> TargetResult:
        """Run the step of a result left on the remote whose blobs turned out corrupt there."""
        node = self.graph.nodes[name]
        unmet = self.executor.unmet(node.requirements(self.graph.nodes))
        if unmet:  # another host's result, and this host cannot make it
            result = self._settle(node, self._unavailable(node, unmet, node.elsewhere()))
        else:
            prepared = Prepared(record.key, record.key_record, None, [f"cache entry corrupt: {exc}"])
            upstream = {p: self._results[p] for p in self.graph.producers(name)}
            try:
                with self.store.lock(record.key):
                    result = self._realize(node, upstream, prepared, claim)
            except (ModelbuildError, OSError) as err:
                result = TargetResult(name, node.step_name, Status.FAILED, one_line(err), list(prepared.reasons), record.key)
        self.history.record(name, result, record.key, record.key_record)
        return result
