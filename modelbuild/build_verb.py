"""The body of ``modelbuild build``, without click: shared by the click verb
(commands.py) and by :func:`modelbuild.cli.main` for the common command lines.

Every edit-and-rebuild runs ``modelbuild build [TARGET...] [-q] [-j N] [-k]``,
and importing click costs about as much as Python's own start-up (its
``types``, ``core`` and what they import: inspect, uuid, datetime, gettext...),
so :func:`simple_args` reads those command lines (and ``--full-check``)
itself and anything else goes through click. Both roads end here, with the
same options: :data:`DEFAULTS` are click's defaults for every option of the
verb (tests/test_startup.py checks they stay so).

Example::

    run(simple_args(["build", "-q", "--full-check"]))   # -> the exit code
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Any

__all__ = ["run", "simple_args", "DEFAULTS"]

#: Every option of the build verb, as click gives it when not on the command line.
DEFAULTS: dict[str, Any] = {
    "project": None, "recipes": None, "overrides": [], "cache_dir": None, "out_dir": None, "targets": [],
    "jobs": None, "keep_going": False, "json": False, "report": None, "quiet": False, "require_validation": False,
    "skip_unavailable": False, "full_check": False, "frozen": False, "refresh": False, "executor": None,
    "scheduler": None, "no_fuse": False, "remote_cache": None, "remote_upload": None, "remote_required": None,
}


def simple_args(argv: list[str]) -> SimpleNamespace | None:
    """The options of ``build [TARGET...] [-q] [-k] [-j N] [--full-check]``; None for
    any other command line (click parses it, and reports what is wrong with it)."""
    if argv[:1] != ["build"] or "_MODELBUILD_COMPLETE" in os.environ:
        return None
    opts: dict[str, Any] = {**DEFAULTS, "targets": [], "overrides": []}
    args = list(argv[1:])
    while args:
        a = args.pop(0)
        if a in ("-q", "--quiet"):
            opts["quiet"] = True
        elif a in ("-k", "--keep-going"):
            opts["keep_going"] = True
        elif a == "--full-check":
            opts["full_check"] = True
        elif a in ("-j", "--jobs"):
            if not args or not args[0].isdigit():
                return None
            opts["jobs"] = int(args.pop(0))
        elif a.startswith("--jobs=") or (a.startswith("-j") and not a.startswith("-j=") and len(a) > 2):
            value = a.split("=", 1)[1] if a.startswith("--jobs=") else a[2:]
            if not value.isdigit():
                return None
            opts["jobs"] = int(value)
        elif not a or a.startswith("-"):  # any other option (or "--"): click parses it
            return None
        else:
            opts["targets"].append(a)
    return SimpleNamespace(**opts)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def run(args: SimpleNamespace, color: bool | None = None) -> int:
    """Build as ``args`` say (every key of :data:`DEFAULTS`) and return the exit code.

    ``color``: forced on or off, or None (NO_COLOR, else whether stderr is a terminal).
    """
    from .cli import EXIT_FAILED, EXIT_UNAVAILABLE, noop_options
    from .fastpath import try_noop

    if color is None and os.environ.get("NO_COLOR"):
        color = False
    options = noop_options(args.targets, args.overrides, args.out_dir, args.require_validation)
    # A Dask cluster may run what this host cannot: its no-op answer is not this host's.
    if not (args.json or args.report or args.full_check or args.frozen or args.refresh or args.executor == "dask"):
        quick = try_noop(project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, options=options)
        if quick is not None:
            if not args.quiet:
                _err(quick)
            return 0
    from .api import build as run_build
    from .fastpath import record_noop
    from .progress import format_summary, make_renderer

    renderer = make_renderer(sys.stderr, quiet=args.quiet or args.json, color=color)
    with renderer:
        result = run_build(
            args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, out_dir=args.out_dir,
            jobs=args.jobs, keep_going=args.keep_going, overrides=args.overrides,
            require_validation=args.require_validation, on_event=renderer.handle, frozen=args.frozen,
            refresh=args.refresh, executor=args.executor, scheduler=args.scheduler,
            remote_cache=args.remote_cache, remote_upload=args.remote_upload, remote_required=args.remote_required,
            fuse=False if args.no_fuse else None,
        )
    report = result.to_json() if (args.report or args.json) else None  # milliseconds per 100 targets
    if args.report:
        from pathlib import Path

        from .step import write_json

        write_json(Path(args.report), report)
    if args.json:
        import json

        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    for warning in result.warnings:
        _err(f"warning: {warning}")
    _err(format_summary(result))
    if result.ok:
        record_noop(result, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, options=options)
    else:
        return EXIT_FAILED
    unbuilt = result.unavailable_requested
    if unbuilt and not args.skip_unavailable:
        # Bazel's rule: a target named on the command line that cannot be built here is an error.
        _err(f"error: not built on this host: {', '.join(unbuilt)} (--skip-unavailable to accept this)")
        return EXIT_UNAVAILABLE
    return 0
