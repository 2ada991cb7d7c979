"""The ``modelbuild`` command: thin wrappers that parse arguments, call one api
function and render its result.

Importing this module must stay cheap (argparse only): ``modelbuild --help``
and a no-op build never import torch, pydantic-heavy plugins or networkx
before they are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

__all__ = ["main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", help="project root (the directory holding recipes/); default: found from the current directory")
    p.add_argument("--recipes", help="recipes directory (default: <project>/recipes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. targets.tiny-llama-ckpt.source=./ckpt or vars.seq=256 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")


def _cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="cache location (default: $MODELBUILD_CACHE_DIR or <project>/cache)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelbuild",
        description="Declarative, cached builds of on-device model artifacts.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="targets found in recipes/, one line each")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("build", help="build targets (default: the recipes' default target)")
    _common(p)
    _cache(p)
    p.add_argument("targets", nargs="*")
    p.add_argument("-j", "--jobs", type=int, default=None, help="steps to run at once (default: number of cores)")
    p.add_argument("-k", "--keep-going", action="store_true", help="build everything not downstream of a failure")
    p.add_argument("--json", action="store_true", help="print the build report as JSON on stdout")
    p.add_argument("--report", metavar="FILE", help="also write the JSON build report to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.add_argument("--out-dir", help="where targets are materialized (default: <project>/out)")
    p.add_argument("--require-validation", action="store_true",
                   help="treat 'not validated here' (e.g. needs macOS) as a failure")
    p.add_argument("--full-check", action="store_true",
                   help="skip the no-op fast path: recompute every action key")

    p = sub.add_parser("plan", help="dry run: each step, hit or miss, and why")
    _common(p)
    _cache(p)
    p.add_argument("targets", nargs="*")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("explain", help="why the last build of TARGET did what it did")
    _common(p)
    _cache(p)
    p.add_argument("target", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("graph", help="the DAG of TARGET")
    _common(p)
    p.add_argument("target", nargs="?")
    p.add_argument("--format", default="text", choices=["text", "dot", "mermaid", "json"])

    p = sub.add_parser("steps", help="installed step plugins and their parameters")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true")

    p = sub.add_parser("schema", help="JSON Schema of the recipe format, for editors")
    p.add_argument("--verbose", "-v", action="store_true")

    p = sub.add_parser("cache", help="inspect and maintain the cache")
    p.add_argument("action", choices=["stats", "verify", "gc", "clear"])
    p.add_argument("--project")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--json", action="store_true")
    _cache(p)

    p = sub.add_parser("clean", help="remove materialized outputs (not the cache)")
    _common(p)
    p.add_argument("targets", nargs="*")

    p = sub.add_parser("report", help="compare validation reports of targets side by side")
    _common(p)
    _cache(p)
    p.add_argument("targets", nargs="+")
    p.add_argument("--json", action="store_true")
    return parser


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _cmd_list(args) -> int:
    from .api import list_targets

    rows = list_targets(project=args.project, recipes=args.recipes, overrides=args.overrides)
    if args.json:
        _print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        star = "*" if r["default"] else " "
        print(f"{star} {r['name']:<{width}}  {r['step']:<9} {r['description']}".rstrip())
    return 0


def _cmd_build(args) -> int:
    from .fastpath import try_noop

    options = dict(targets=args.targets, overrides=args.overrides, out_dir=args.out_dir,
                   require_validation=args.require_validation)
    if not (args.json or args.report or args.full_check):
        quick = try_noop(project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, options=options)
        if quick is not None:
            if not args.quiet:
                print(quick, file=sys.stderr)
            return 0
    from .api import build
    from .fastpath import record_noop
    from .progress import format_summary, make_renderer

    renderer = make_renderer(sys.stderr, quiet=args.quiet or args.json)
    with renderer:
        result = build(
            args.targets,
            project=args.project,
            recipes=args.recipes,
            cache_dir=args.cache_dir,
            out_dir=args.out_dir,
            jobs=args.jobs,
            keep_going=args.keep_going,
            overrides=args.overrides,
            require_validation=args.require_validation,
            on_event=renderer.handle,
        )
    report = result.to_json()
    if args.report:
        from .step import write_json
        from pathlib import Path

        write_json(Path(args.report), report)
    if args.json:
        _print_json(report)
    print(format_summary(result), file=sys.stderr)
    if result.ok:
        record_noop(result, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, options=options)
    return 0 if result.ok else 1


def _cmd_plan(args) -> int:
    from .api import plan

    result = plan(args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, overrides=args.overrides)
    if args.json:
        _print_json(result.to_json())
        return 0
    width = max((len(r.target) for r in result.rows), default=0)
    for r in result.rows:
        print(f"{r.decision:<11} {r.target:<{width}}  {r.step:<9} {'; '.join(r.reasons)}")
    return 0


def _cmd_explain(args) -> int:
    from .api import explain

    result = explain(args.target, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, overrides=args.overrides)
    if args.json:
        _print_json(result.to_json())
        return 0
    for e in result.entries:
        line = f"{e['target']} ({e['step']}): {e['status']}"
        if e.get("key"):
            line += f"  key {e['key'][:12]}"
        print(line)
        for reason in e.get("reasons") or ([e["reason"]] if e.get("reason") else []):
            print(f"    {reason}")
        if e.get("status") == "failed" and e.get("reason"):
            print(f"    failed: {e['reason']}" + (f" [log: {e['log']}]" if e.get("log") else ""))
        if e.get("verdict"):
            v = e["verdict"]
            print(f"    verdict: {'pass' if v.get('ok') else 'fail'} {v.get('reason') or ''}".rstrip())
    return 0


def _cmd_graph(args) -> int:
    from .api import graph

    print(graph(args.target, fmt=args.format, project=args.project, recipes=args.recipes, overrides=args.overrides))
    return 0


def _cmd_steps(args) -> int:
    from .api import list_steps

    steps = list_steps()
    if args.json:
        _print_json(steps)
        return 0
    for s in steps:
        ins = ", ".join(f"{k}: {'|'.join(v['kinds'])}{'?' if v['optional'] else ''}{'[]' if v['many'] else ''}" for k, v in s["inputs"].items())
        print(f"{s['name']} (v{s['version']}): ({ins}) -> {s['output']}  {s['description']}")
        if s["requires"]["platforms"] or s["requires"]["tools"]:
            print(f"    requires: {', '.join(s['requires']['platforms'] + s['requires']['tools'])}")
        for p in s["params"]:
            default = "required" if p["required"] else f"default {json.dumps(p['default'], default=str)}"
            judge = " (judge only: not keyed)" if p["judge"] else ""
            print(f"    {p['name']}: {p['type']} = {default}{judge}  {p['description']}".rstrip())
    return 0


def _cmd_schema(args) -> int:
    from .api import schema

    _print_json(schema())
    return 0


def _cmd_cache(args) -> int:
    from . import api

    if args.action == "stats":
        stats = api.cache_stats(project=args.project, cache_dir=args.cache_dir)
        if args.json:
            _print_json(stats)
        else:
            for k, v in stats.items():
                print(f"{k}: {v}")
        return 0
    if args.action == "verify":
        problems = api.cache_verify(project=args.project, cache_dir=args.cache_dir)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1 if problems else 0
    if args.action == "gc":
        result = api.cache_gc(project=args.project, cache_dir=args.cache_dir)
        _print_json(result) if args.json else print(", ".join(f"{k}: {v}" for k, v in result.items()))
        return 0
    api.cache_clear(project=args.project, cache_dir=args.cache_dir)
    print("cache cleared", file=sys.stderr)
    return 0


def _cmd_clean(args) -> int:
    from .api import clean

    removed = clean(args.targets, project=args.project, recipes=args.recipes)
    print(f"removed {len(removed)} output(s)" + (f": {', '.join(removed)}" if removed else ""), file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from .api import report

    table = report(args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir, overrides=args.overrides)
    if args.json:
        _print_json(table.rows)
        return 0
    from rich.console import Console

    Console().print(table.render())
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _cmd_list,
    "build": _cmd_build,
    "plan": _cmd_plan,
    "explain": _cmd_explain,
    "graph": _cmd_graph,
    "steps": _cmd_steps,
    "schema": _cmd_schema,
    "cache": _cmd_cache,
    "clean": _cmd_clean,
    "report": _cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"modelbuild {version('modelbuild')}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from .errors import ModelbuildError

    try:
        return COMMANDS[args.command](args)
    except ModelbuildError as exc:
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, traceback with --verbose
        if getattr(args, "verbose", False) or os.environ.get("MODELBUILD_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
