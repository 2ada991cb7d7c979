"""``plan``: a dry run. For each step: hit or miss, and the typed reason.

Each row is :meth:`Engine.decide <modelbuild.engine.Engine.decide>`, the very
decision ``build`` acts on, fed with the *predicted* results of the inputs: a
hit's digest is known; a miss's is not until it is rebuilt, so a target
downstream of a miss is "pending" (an identical rebuild would keep it a hit).
Downstream of an unavailable or failing input a target is "skipped", with the
same ``blocked_by`` the build would give it.

Example::

    for row in plan(["tiny-llama"]).rows:
        print(row.target, row.decision, row.reasons)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engine import Engine
from ..outcome import Blocker, Kind, TargetResult
from .workspace import Workspace

__all__ = ["plan", "Plan", "PlanRow"]


@dataclass(frozen=True)
class PlanRow:
    target: str
    step: str
    decision: Kind  # hit | miss | pending | unavailable | skipped | error (a str enum)
    reasons: tuple[str, ...]
    key: str | None = None
    #: For "skipped": the input that will produce nothing, and whether by a failure.
    blocked_by: Blocker | None = None
    #: For "unavailable": the exact command to run it on a host that can.
    command: str | None = None

    def to_json(self) -> dict:
        blocked = self.blocked_by and {"target": self.blocked_by.target, "failed": self.blocked_by.failed, "origin": self.blocked_by.origin}
        return {"target": self.target, "step": self.step, "decision": str(self.decision), "reasons": list(self.reasons),
                "key": self.key, "blocked_by": blocked, "command": self.command}


@dataclass
class Plan:
    requested: list[str]
    rows: list[PlanRow] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": "modelbuild-plan/1", "requested": self.requested, "rows": [r.to_json() for r in self.rows]}


def plan(
    targets: list[str] | None = None,
    *,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    require_validation: bool = False,
    refresh: bool = False,
    remote_cache: str | None = None,
    executor: str | None = None,
    scheduler: str | None = None,
) -> Plan:
    """``remote_cache`` (default: the project configuration) is asked for records
    the local cache lacks, as ``build`` would: such a row is a hit whose reason
    says ``remote hit`` (nothing is downloaded). ``executor`` and ``scheduler``
    (default: the project configuration) as for ``build``: with Dask, a step the
    cluster can run is planned, not "unavailable", and a step routed to workers
    is keyed with their toolchain (the reasons say which workers': docs/distributed.md)."""
    from ..dask_executor import executor_for
    from ..remote import open_remote

    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    result = Plan(requested=names)
    with ws.store() as store:
        store.remote = open_remote(ws.root, remote_cache)
        runner, _ = executor_for(ws.root, executor, scheduler, store)
        try:
            _plan(result, graph, names, Engine(graph, store, project=ws.root, out_dir=ws.out_dir,
                                               require_validation=require_validation, refresh=refresh, executor=runner))
        finally:
            runner.close()
    return result


def _plan(result: Plan, graph, names: list[str], engine: Engine) -> None:
    predicted: dict[str, TargetResult] = {}
    for name in graph.closure(names):
        node = graph.nodes[name]
        decision = engine.decide(node, {p: predicted[p] for p in graph.producers(name)})
        key = decision.prepared.key if decision.prepared else None
        # What the build will have for this target when its consumers are decided.
        predicted[name] = TargetResult(name, node.step_name, decision.status, decision.reasons[0] if decision.reasons else "",
                                       digest=decision.digest, blocked_by=decision.blocked_by)
        result.rows.append(PlanRow(name, node.step_name, decision.kind, decision.reasons, key,
                                   decision.blocked_by, decision.command))
