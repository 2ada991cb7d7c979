"""``report``: compare the validation reports of several targets side by side.

Reads ``out/<target>/report.json`` of each (already built) target; never runs
a model and never imports torch.

Example::

    table = report(["tiny-llama-validate", "tiny-llama-8da4w-validate"])
    for row in table.rows:
        print(row)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RecipeError
from .workspace import Workspace

__all__ = ["report"]


def report(targets: list[str], *, project: Path | str | None = None, recipes: Path | str | None = None, overrides: list[str] | None = None):
    from ..compare import compare_reports

    ws = Workspace.locate(project, recipes=recipes)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets))
    paths = {}
    for name in names:
        path = ws.out_dir / name / "report.json"
        if not path.is_file():
            raise RecipeError(f"{name} has no report at {path}: build it first (modelbuild build {name})")
        paths[name] = path
    return compare_reports(paths)
