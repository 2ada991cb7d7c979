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
    frozen: bool = False,
    refresh: bool = False,
    executor: str | None = None,
    scheduler: str | None = None,
    remote_cache: str | None = None,
    remote_upload: bool | None = None,
    remote_required: bool | None = None,
    fuse: bool | None = None,
    lazy: bool = True,
) -> BuildResult:
    """Build ``targets`` (the recipes' default target when empty) and their inputs.

    Step failures do not raise: they are in the result. Recipe errors raise
    :class:`~modelbuild.errors.RecipeError` before anything runs. Targets named
    in ``targets`` that this host cannot build are listed in
    ``result.unavailable_requested`` (the CLI exits 3 for them). The store is
    closed before returning. ``frozen`` refuses a missing or stale
    ``modelbuild.lock`` (:class:`~modelbuild.lockfile.LockStale`, see api/lock.py).
    ``refresh`` resolves floating references (a Hub branch) again now instead
    of reusing a resolution remembered for a few minutes (resolve.py).
    ``executor`` ("local" or "dask", default: the project configuration, else
    local) and ``scheduler`` (``tcp://host:8786``) choose where misses run
    (docs/distributed.md); with Dask, ``jobs`` defaults to the cluster's threads.
    ``remote_cache`` (a URL), ``remote_upload`` and ``remote_required`` (default:
    the project configuration) add the shared remote cache tier (docs/remote.md);
    what went wrong with it is in ``result.warnings``. With a remote, ``lazy`` (the
    default) downloads only what ``out/`` of ``targets`` and the steps that run here
    need: a result of the chain found there and needed by nobody stays there
    (``remote_only`` in its result); ``lazy=False`` fetches every one (``release``).
    ``fuse`` (default: on unless ``MODELBUILD_FUSE=0``): the local executor runs
    a chain of misses in one process, handing programs over in memory (fused.py).
    """
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    if frozen:  # modelbuild.lock must be current; floating revisions build at their locked commits
        from .lock import frozen_graph

        graph = frozen_graph(ws, graph, names, overrides, jobs=jobs)
    from ..dask_executor import executor_for

    from ..remote import open_remote

    with ws.store() as store:
        store.remote = open_remote(ws.root, remote_cache, upload=remote_upload, required=remote_required)
        runner, slots = executor_for(ws.root, executor, scheduler, store)
        if fuse is not None and runner.name == "local":  # only the local executor fuses
            runner.fuse = fuse
        try:
            engine = Engine(
                graph,
                store,
                project=ws.root,
                out_dir=ws.out_dir,
                jobs=jobs or slots,
                keep_going=keep_going,
                require_validation=require_validation,
                on_event=on_event,
                refresh=refresh,
                executor=runner,
                lazy=lazy and store.remote is not None,
            )
            result = engine.build(names, explicit=list(targets or []))
            if store.remote is not None:  # e.g. "remote cache ... unreachable ...; building locally"
                result.warnings.extend(store.remote.warnings)
            return result
        finally:
            runner.close()
