"""``report``: compare the validation reports of several targets side by side.

Reads ``out/<target>/report.json`` of each target and the verdict of its last
build (pass, fail with the reason, or e.g. "not validated here: needs macOS");
never runs a model and never imports torch.

Example::

    table = report(["tiny-llama-pte-validate", "tiny-llama-8da4w-pte-validate"])
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
        return {"ok": False, "status": last.get("reason") or last["status"], "reason": last.get("reason") or ""}
    return None


def report(targets: list[str], *, project: Path | str | None = None, recipes: Path | str | None = None,
           cache_dir: Path | str | None = None, overrides: list[str] | None = None):
    from ..compare import compare_reports

    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets))
    history = History(ws.cache_dir)
    paths = {name: ws.out_dir / name / "report.json" for name in names}
    verdicts = {name: _verdict(history.load(name)) for name in names}
    return compare_reports(paths, verdicts)
