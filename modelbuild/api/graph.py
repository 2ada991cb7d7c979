"""``graph``: the DAG of a target as a text tree, Graphviz dot, Mermaid or JSON.

Example::

    print(graph("tiny-llama", fmt="mermaid"))
"""

from __future__ import annotations

import json
from pathlib import Path

from .workspace import Workspace

__all__ = ["graph", "FORMATS"]

FORMATS = ("text", "dot", "mermaid", "json")


def graph(
    target: str | None = None,
    *,
    fmt: str = "text",
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    overrides: list[str] | None = None,
) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown graph format '{fmt}' (one of {', '.join(FORMATS)})")
    ws = Workspace.locate(project, recipes=recipes)
    g = ws.graph(overrides)
    [name] = g.resolve_names([target] if target else [])
    order = g.closure([name])
    edges = [(p, n) for n in order for p in g.producers(n)]
    if fmt == "json":
        nodes = [{"target": n, "step": g.nodes[n].step.name, "kind": g.nodes[n].kind} for n in order]
        return json.dumps({"nodes": nodes, "edges": [list(e) for e in edges]}, indent=2)
    if fmt == "dot":
        lines = ["digraph modelbuild {", "  rankdir=LR;"]
        lines += [f'  "{n}" [label="{n}\\n{g.nodes[n].step.name} -> {g.nodes[n].kind}"];' for n in order]
        lines += [f'  "{a}" -> "{b}";' for a, b in edges]
        return "\n".join(lines + ["}"])
    if fmt == "mermaid":
        ids = {n: f"n{i}" for i, n in enumerate(order)}
        lines = ["graph LR"]
        lines += [f'  {ids[n]}["{n}<br/>{g.nodes[n].step.name}"]' for n in order]
        lines += [f"  {ids[a]} --> {ids[b]}" for a, b in edges]
        return "\n".join(lines)
    lines: list[str] = []

    def walk(node: str, prefix: str, last: bool, top: bool) -> None:
        info = g.nodes[node]
        label = f"{node} ({info.step.name} -> {info.kind})"
        lines.append(label if top else f"{prefix}{'└── ' if last else '├── '}{label}")
        kids = g.producers(node)
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, False)

    walk(name, "", True, True)
    return "\n".join(lines)
