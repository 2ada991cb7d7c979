"""``explain``: why the last build of a target (and its inputs) did what it did.

Example::

    for entry in explain("tiny-llama").entries:
        print(entry["target"], entry["status"], entry["reasons"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..history import History
from .workspace import Workspace

__all__ = ["explain", "Explanation"]


@dataclass
class Explanation:
    target: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": "modelbuild-explain/1", "target": self.target, "entries": self.entries}


def explain(
    target: str | None = None,
    *,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    overrides: list[str] | None = None,
) -> Explanation:
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    [name] = graph.resolve_names([target] if target else [])
    history = History(ws.cache_dir)
    result = Explanation(name)
    for each in graph.closure([name]):
        last = history.load(each)
        entry: dict[str, Any] = {"target": each, "step": graph.nodes[each].step.name}
        if last is None:
            entry.update(status="never built", reasons=[], key=None)
        else:
            entry.update(
                status=last.get("status"),
                reason=last.get("reason", ""),
                reasons=last.get("reasons", []),
                key=last.get("key"),
                digest=last.get("digest"),
                duration_s=last.get("duration_s"),
                log=last.get("log"),
                verdict=last.get("verdict"),
                blocked_by=last.get("blocked_by"),
                command=last.get("command"),
                worker=last.get("worker"),
                remote_hit=bool(last.get("remote_hit")),
                remote_only=bool(last.get("remote_only")),
                when=last.get("when"),
            )
        result.entries.append(entry)
    return result
