"""``verify``: does a target rebuild bit for bit (``rebuild=True``), or match a bundle made elsewhere (``against``)?

Example::

    from modelbuild.api import verify
    report = verify("tiny-llama", rebuild=True)
    for d in report.differences:
        print(d.line())          # "tiny-llama-pte (lower): model.pte: differs at byte 4096 (segment data ...)"
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ModelbuildError
from ..reproduce import RebuildReport, compare_against, rebuild_check
from .workspace import Workspace

__all__ = ["verify"]


def verify(
    target: str | None = None,
    *,
    rebuild: bool = False,
    against: Path | str | None = None,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    jobs: int | None = None,
    scratch: Path | str | None = None,
    on_event: Callable | None = None,
) -> RebuildReport:
    """Build ``target`` as usual, then rebuild its chain in a scratch cache and compare
    every file (``rebuild``), and/or compare its chain's outputs with ``against``.

    ``scratch`` keeps the scratch cache and out dir (default: removed).
    """
    from .build import build

    if not rebuild and against is None:
        raise ModelbuildError("verify needs --rebuild or --against DIR")
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names([target] if target else [])
    result = build(names, project=ws.root, recipes=ws.recipes_dir, cache_dir=ws.cache_dir, out_dir=ws.out_dir,
                   jobs=jobs, overrides=overrides, keep_going=True, on_event=on_event)
    failed = [f"{n} {r.status}: {r.reason}" for n, r in result.targets.items() if r.status in ("failed", "skipped")]
    if failed:
        raise ModelbuildError("cannot verify: the build did not succeed: " + "; ".join(failed))
    with ws.store() as store:
        report = RebuildReport()
        if rebuild:
            report = rebuild_check(graph, store, project=ws.root, names=names, jobs=jobs,
                                   scratch=Path(scratch) if scratch else None, on_event=on_event)
        if against is not None:
            other = compare_against(graph, store, result.targets, Path(against))
            report.targets.update({f"{k} (against)" if rebuild else k: v for k, v in other.targets.items()})
            report.steps.update(other.steps)
            report.differences.extend(other.differences)
            report.duration_s += other.duration_s
        return report
