"""``report``: compare the validation reports of several targets side by side.

Reads ``out/<target>/report.json`` of each target and the verdict of its last
build (pass, fail with the reason, or e.g. "not validated here: needs macOS");
never runs a model and never imports torch. With ``html=`` it also writes the
variants report as one self-contained page (:mod:`modelbuild.report_html`),
adding what only the graph knows: the chain of steps behind each artifact and
the parameters that set the variants apart.

Example::

    table = report(["tiny-llama-pte-validate", "tiny-llama-8da4w-pte-validate"], html="report.html")
    for row in table.rows:
        print(row["target"], row["status"], row["cosine"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..history import History
from .workspace import Workspace

__all__ = ["report"]


def _verdict(last: dict[str, Any] | None) -> dict[str, Any] | None:
    if last is None:
        return None
    if last.get("verdict"):
        return last["verdict"]
    if last.get("status") in ("unavailable", "failed", "skipped"):
        return {"ok": False, "status": last.get("reason") or last["status"], "reason": last.get("reason") or "",
                "state": last["status"], "command": last.get("command")}
    return None


def _chain(graph, name: str) -> list[dict[str, Any]]:
    """The steps that made the target's artifact (its ``artifact`` input, else all its inputs), source first,
    each with the parameters its recipe sets (defaults left out)."""
    slots = graph.nodes[name].inputs
    chosen = [slots["artifact"]] if "artifact" in slots else list(slots.values())
    made_by = [p for ps in chosen for p in (ps if isinstance(ps, list) else [ps])]
    if not made_by:
        return []
    return [{"target": t, "step": graph.nodes[t].target.step,
             "params": graph.nodes[t].params.model_dump(mode="json", exclude_defaults=True)}
            for t in graph.closure(made_by)]


def report(targets: list[str], *, project: Path | str | None = None, recipes: Path | str | None = None,
           cache_dir: Path | str | None = None, overrides: list[str] | None = None,
           html: Path | str | None = None, out_dir: Path | str | None = None):
    """Compare the targets' reports (``<out_dir>/<target>/report.json``, default out/); with ``html``, also
    write the variants page to that file."""
    from ..compare import compare_reports

    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets))
    history = History(ws.cache_dir)
    paths = {name: ws.out_dir / name / "report.json" for name in names}
    verdicts = {name: _verdict(history.load(name)) for name in names}
    table = compare_reports(paths, verdicts, {name: _chain(graph, name) for name in names})
    if html is not None:
        Path(html).write_text(table.html(title="Variants report"), encoding="utf-8")
    return table
