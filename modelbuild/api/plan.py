"""``plan``: a dry run. For each step: hit or miss, and the typed reason.

A target downstream of a miss cannot know its key yet (its input digest is
not known until the input is rebuilt); it is shown as "pending" with the
upstream target named, because an unchanged rebuild would cut it off early.

Example::

    for row in plan(["tiny-llama"]).rows:
        print(row.target, row.decision, row.reasons)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engine import Engine, _InputMissing
from ..graph import input_kinds
from ..step import unmet_requirement
from .workspace import Workspace

__all__ = ["plan", "Plan", "PlanRow"]


@dataclass(frozen=True)
class PlanRow:
    target: str
    step: str
    decision: str  # "hit" | "miss" | "pending" | "unavailable" | "error"
    reasons: tuple[str, ...]
    key: str | None = None

    def to_json(self) -> dict:
        return {"target": self.target, "step": self.step, "decision": self.decision, "reasons": list(self.reasons), "key": self.key}


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
) -> Plan:
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    engine = Engine(graph, ws.store(), project=ws.root, out_dir=ws.out_dir)
    result = Plan(requested=names)
    digests: dict[str, str | None] = {}
    for name in graph.closure(names):
        node = graph.nodes[name]
        producers = graph.producers(name)
        unknown = [p for p in producers if digests.get(p) is None]
        if unknown:
            result.rows.append(PlanRow(name, node.step.name, "pending", tuple(f"input {p} will be rebuilt (an identical rebuild keeps this a hit)" for p in unknown)))
            digests[name] = None
            continue
        unmet = unmet_requirement(node.step.requirements(node.params, input_kinds(node, graph.nodes)))
        if unmet:
            result.rows.append(PlanRow(name, node.step.name, "unavailable", (f"needs {unmet}: {node.step.elsewhere(name, node.params)}",)))
            digests[name] = None
            continue
        inputs = {
            slot: [digests[p] for p in prods] if isinstance(prods, list) else digests[prods]
            for slot, prods in node.inputs.items()
        }
        try:
            prepared = engine.prepare(node, inputs)
        except _InputMissing as exc:
            result.rows.append(PlanRow(name, node.step.name, "error", (str(exc),)))
            digests[name] = None
            continue
        if prepared.hit is not None:
            digests[name] = prepared.hit.manifest.digest
            result.rows.append(PlanRow(name, node.step.name, "hit", ("up to date",), prepared.key))
        else:
            digests[name] = None
            result.rows.append(PlanRow(name, node.step.name, "miss", tuple(prepared.reasons), prepared.key))
    return result
