"""``build``: bring targets up to date.

Example::

    from modelbuild.api import build
    result = build(["tiny-llama"], jobs=2)
    assert result.ok, result.targets
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..engine import BuildResult, Engine, Event
from .workspace import Workspace

__all__ = ["build"]


def build(
    targets: list[str] | None = None,
    *,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    jobs: int | None = None,
    keep_going: bool = False,
    overrides: list[str] | None = None,
    require_validation: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> BuildResult:
    """Build ``targets`` (the recipes' default target when empty) and their inputs.

    Step failures do not raise: they are in the result. Recipe errors raise
    :class:`~modelbuild.errors.RecipeError` before anything runs.
    """
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    engine = Engine(
        graph,
        ws.store(),
        project=ws.root,
        out_dir=ws.out_dir,
        jobs=jobs,
        keep_going=keep_going,
        require_validation=require_validation,
        on_event=on_event,
    )
    return engine.build(names)
