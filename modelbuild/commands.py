"""The verbs of the ``modelbuild`` command: a click group of thin commands that
parse options, call one api function and render its result.

Importing this module costs click's own import (see docs/benchmarks.md) and
nothing more: ``modelbuild --help`` and shell completion never import torch,
pydantic, networkx, rich or the step plugins. Each verb imports its api
function inside its body. Exit codes and error rendering live in
:func:`modelbuild.cli.main`; a verb returns its exit code.

Example::

    from click.testing import CliRunner
    result = CliRunner().invoke(cli, ["plan", "tiny-llama-8da4w-pte"])
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace
from typing import Any

import click

from .cli import EXIT_FAILED

__all__ = ["cli", "STATE"]


#: --verbose outlives the click context: cli.main() renders the error after it has closed.
STATE: dict[str, Any] = {"verbose": False}


def _remember_verbose(ctx, param, value):
    if value:
        STATE["verbose"] = True
    return value


def _remember_color(ctx, param, value):
    # ctx.meta is shared by the group's and the verb's contexts: `modelbuild --no-color build` and
    # `modelbuild build --no-color` both count, the verb's flag last.
    if value is not None:
        ctx.meta["modelbuild.color"] = value
    return value


def _color() -> bool | None:
    """--color/--no-color if given, else False when NO_COLOR is set, else None (a terminal decides)."""
    chosen = click.get_current_context().meta.get("modelbuild.color")
    if chosen is None and os.environ.get("NO_COLOR"):
        return False
    return chosen


def _complete_targets(ctx, param, incomplete):
    from .completion import complete_targets

    return complete_targets(ctx, incomplete)


def _complete_set(ctx, param, incomplete):
    from .completion import complete_overrides

    return complete_overrides(ctx, incomplete)


def _opt(*decls, **kw):
    return click.option(*decls, **kw)


VERBOSE = _opt("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True, callback=_remember_verbose,
               help="Show tracebacks on errors.")
COLOR = _opt("--color/--no-color", default=None, expose_value=False, callback=_remember_color,
             help="Force colour on or off (default: on for a terminal unless NO_COLOR is set).")
PROJECT = _opt("--project", type=click.Path(file_okay=False),
               help="Project root (the directory holding recipes/); default: found from the current directory.")
RECIPES = _opt("--recipes", type=click.Path(file_okay=False), help="Recipes directory (default: <project>/recipes).")
SET = _opt("--set", "overrides", multiple=True, metavar="KEY=VALUE", shell_complete=_complete_set,
           help="Override a recipe value: targets.NAME.PARAM=VALUE or vars.NAME=VALUE (repeatable).")
CACHE = _opt("--cache-dir", type=click.Path(file_okay=False),
             help="Cache location (default: $MODELBUILD_CACHE_DIR or <project>/cache).")
OUT_DIR = _opt("--out-dir", type=click.Path(file_okay=False),
               help="Where targets are materialized (default: <project>/out).")
JSON = _opt("--json", is_flag=True, help="Print the result as JSON on stdout.")
JOBS = _opt("-j", "--jobs", type=int, default=None, help="Steps to run at once (default: number of cores).")
REMOTE_CACHE = _opt("--remote-cache", metavar="URL",
                    help="The shared remote cache: s3://bucket/prefix, file:///mnt/cache, a path, any fsspec URL "
                         "(default: remote-cache in modelbuild.toml or [tool.modelbuild]; docs/remote.md).")


def _apply(*decorators):
    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


def _targets(required: bool = False):
    return click.argument("targets", nargs=-1, required=required, shell_complete=_complete_targets)


def _target():
    return click.argument("target", required=False, shell_complete=_complete_targets)


#: --project, --recipes, --set, --verbose, --color: what every recipe-reading verb takes.
COMMON = _apply(PROJECT, RECIPES, SET, VERBOSE, COLOR)


def _ns(kw: dict[str, Any]) -> SimpleNamespace:
    """Options as a namespace; tuples from ``multiple``/``nargs`` become lists (the fast path compares them)."""
    return SimpleNamespace(**{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _err(text: str) -> None:
    print(text, file=sys.stderr)


class _Group(click.Group):
    def list_commands(self, ctx):  # the order of the README, not alphabetical
        return list(self.commands)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        from importlib.metadata import version

        click.echo(f"modelbuild {version('modelbuild')}")
        ctx.exit(0)


@click.group(cls=_Group, context_settings=CONTEXT)
@_opt("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version, help="Print the version and exit.")
@COLOR
def cli() -> None:
    """Declarative, cached builds of on-device model artifacts.

    \b
    Examples:
      modelbuild build                  # the recipes' default target
      modelbuild plan tiny-llama-8da4w  # what would run, and why
      modelbuild completion bash        # shell completion (see README)
    """


@cli.command("list")
@COMMON
@JSON
def list_(**kw) -> int:
    """Targets in recipes/, one line each.

    A * marks the default target.

    \b
    Example:
      modelbuild list --json
    """
    from .api import list_targets

    args = _ns(kw)
    rows = list_targets(project=args.project, recipes=args.recipes, overrides=args.overrides)
    if args.json:
        _print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        star = "*" if r["default"] else " "
        print(f"{star} {r['name']:<{width}}  {r['step']:<9} {r['description']}".rstrip())
    return 0


@cli.command()
@COMMON
@CACHE
@OUT_DIR
@_targets()
@JOBS
@_opt("-k", "--keep-going", is_flag=True, help="Build everything not downstream of a failure.")
@_opt("--json", is_flag=True, help="Print the build report as JSON on stdout.")
@_opt("--report", metavar="FILE", type=click.Path(dir_okay=False), help="Also write the JSON build report to FILE.")
@_opt("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
@_opt("--require-validation", is_flag=True, help="Treat 'not validated here' (e.g. needs macOS) as a failure.")
@_opt("--skip-unavailable", is_flag=True,
      help="Exit 0 when a target named here cannot be built on this host (default: exit 3).")
@_opt("--full-check", is_flag=True, help="Skip the no-op fast path: recompute every action key.")
@_opt("--frozen", is_flag=True, help="Fail if modelbuild.lock is missing or stale; fetch at the locked resolution.")
@_opt("--refresh", is_flag=True, help="Resolve floating references (an hf:// revision such as main) again now.")
@_opt("--executor", type=click.Choice(["local", "dask"]), default=None,
      help="Where misses run: child processes here, or a Dask cluster (default: the project config, else local).")
@_opt("--scheduler", metavar="ADDRESS", help="The Dask scheduler, e.g. tcp://sched:8786 (with --executor dask).")
@_opt("--no-fuse", is_flag=True,
      help="Run every step in its own process (default: a chain of misses shares one, programs passed in memory).")
@REMOTE_CACHE
@_opt("--remote-upload/--no-remote-upload", default=None,
      help="Also upload what this build makes to the remote cache (default: the project config, else off).")
@_opt("--remote-required/--no-remote-required", default=None,
      help="An unreachable remote cache is an error instead of a warning (default: the project config, else off).")
def build(**kw) -> int:
    """Build TARGETS (default: the default target).

    Exit codes: 0 built or cached, 1 a target failed, 2 usage error, 3 a target
    named here cannot be built on this host (--skip-unavailable: 0).

    \b
    Examples:
      modelbuild build tiny-llama-8da4w-pte -j 2
      modelbuild build --set targets.tiny-llama-8da4w.group_size=64 --json
      modelbuild build tiny-llama-mlmodelc --executor dask --scheduler tcp://sched:8786
      modelbuild build --remote-cache s3://team-bucket/modelbuild --remote-upload
    """
    from .build_verb import run

    return run(_ns(kw), color=_color())


@cli.command()
@COMMON
@CACHE
@_targets()
@JSON
@_opt("--require-validation", is_flag=True, help="Plan 'not validated here' (e.g. needs macOS) as a failure, as build would.")
@_opt("--refresh", is_flag=True, help="Resolve floating references (an hf:// revision such as main) again now.")
@REMOTE_CACHE
@_opt("--executor", type=click.Choice(["local", "dask"]), default=None,
      help="Plan as a build on this executor would (default: the project config, else local).")
@_opt("--scheduler", metavar="ADDRESS", help="The Dask scheduler, e.g. tcp://sched:8786 (with --executor dask).")
def plan(**kw) -> int:
    """Dry run: each step, hit or miss, and why.

    \b
    Example:
      modelbuild plan tiny-llama-8da4w-pte --set targets.tiny-llama-8da4w.group_size=64
    """
    from .api import plan as run_plan

    args = _ns(kw)
    result = run_plan(args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir,
                      overrides=args.overrides, require_validation=args.require_validation, refresh=args.refresh,
                      remote_cache=args.remote_cache, executor=args.executor, scheduler=args.scheduler)
    if args.json:
        _print_json(result.to_json())
        return 0
    width = max((len(r.target) for r in result.rows), default=0)
    for r in result.rows:
        extra = f" [run there: {r.command}]" if r.command and r.decision == "unavailable" else ""
        print(f"{r.decision:<11} {r.target:<{width}}  {r.step:<9} {'; '.join(r.reasons)}{extra}")
    return 0


@cli.command()
@COMMON
@CACHE
@_target()
@JSON
def explain(**kw) -> int:
    """Why the last build of TARGET did what it did.

    \b
    Example:
      modelbuild explain tiny-llama-8da4w-pte
    """
    from .api import explain as run_explain

    args = _ns(kw)
    result = run_explain(args.target, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir,
                         overrides=args.overrides)
    if args.json:
        _print_json(result.to_json())
        return 0
    for e in result.entries:
        line = f"{e['target']} ({e['step']}): {e['status']}"
        if e.get("key"):
            line += f"  key {e['key'][:12]}"
        if e.get("worker"):
            line += f"  on worker {e['worker']}"
        print(line)
        own = [e["reason"]] if e.get("reason") and e.get("status") != "failed" else []  # a failure's reason follows
        for reason in e.get("reasons") or own:
            print(f"    {reason}")
        if e.get("status") == "failed" and e.get("reason"):
            print(f"    failed: {e['reason']}" + (f" [log: {e['log']}]" if e.get("log") else ""))
        if e.get("verdict"):
            v = e["verdict"]
            print(f"    verdict: {'pass' if v.get('ok') else 'fail'} {v.get('reason') or ''}".rstrip())
    return 0


@cli.command()
@COMMON
@_target()
@_opt("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "dot", "mermaid", "json"]),
      help="Output format.")
def graph(**kw) -> int:
    """The DAG of TARGET.

    TARGET defaults to the recipes' default target.

    \b
    Example:
      modelbuild graph tiny-llama-8da4w-pte --format mermaid
    """
    from .api import graph as run_graph

    args = _ns(kw)
    print(run_graph(args.target, fmt=args.fmt, project=args.project, recipes=args.recipes, overrides=args.overrides))
    return 0


@cli.command()
@JSON
@VERBOSE
def steps(**kw) -> int:
    """Installed step plugins and their parameters.

    \b
    Example:
      modelbuild steps --json
    """
    from .api import list_steps

    args = _ns(kw)
    found = list_steps()
    if args.json:
        _print_json(found)
        return 0
    for s in found:
        ins = ", ".join(f"{k}: {'|'.join(v['kinds'])}{'?' if v['optional'] else ''}{'[]' if v['many'] else ''}"
                        for k, v in s["inputs"].items())
        print(f"{s['name']} (v{s['version']}): ({ins}) -> {s['output']}  {s['description']}")
        if s["requires"]["platforms"] or s["requires"]["tools"]:
            print(f"    requires: {', '.join(s['requires']['platforms'] + s['requires']['tools'])}")
        for p in s["params"]:
            default = "required" if p["required"] else f"default {json.dumps(p['default'], default=str)}"
            judge = " (judge only: not keyed)" if p["judge"] else ""
            print(f"    {p['name']}: {p['type']} = {default}{judge}  {p['description']}".rstrip())
    return 0


@cli.command()
@VERBOSE
def schema() -> int:
    """JSON Schema of the recipe format, for editors.

    \b
    Example:
      modelbuild schema > recipe.schema.json
    """
    from .api import schema as run_schema

    _print_json(run_schema())
    return 0


@cli.command()
@click.argument("action", type=click.Choice(["stats", "verify", "gc", "clear", "push", "pull"]))
@_targets()
@PROJECT
@RECIPES
@SET
@CACHE
@REMOTE_CACHE
@JSON
@VERBOSE
def cache(**kw) -> int:
    """Inspect and maintain the cache; share it through the remote cache.

    ACTION is stats, verify, gc, clear, push or pull.
    verify exits 1 when it finds a problem. push TARGETS uploads the cached
    results of TARGETS' chains to the remote cache; pull TARGETS downloads
    them into this cache (verified), for `build` to restore. Both exit 1 when
    a result fails.

    \b
    Examples:
      modelbuild cache stats --json
      modelbuild cache verify
      modelbuild cache push tiny-llama --remote-cache s3://team-bucket/modelbuild
      modelbuild cache pull tiny-llama
    """
    from . import api

    args = _ns(kw)
    if args.action in ("push", "pull"):
        return _transfer(args)
    if args.targets or args.overrides or args.remote_cache or args.recipes:
        raise click.UsageError(f"cache {args.action} takes no targets, --set, --recipes or --remote-cache")
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
        _err(f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.action == "gc":
        result = api.cache_gc(project=args.project, cache_dir=args.cache_dir)
        _print_json(result) if args.json else print(", ".join(f"{k}: {v}" for k, v in result.items()))
        return 0
    api.cache_clear(project=args.project, cache_dir=args.cache_dir)
    _err("cache cleared")
    return 0


def _transfer(args) -> int:
    """`cache push` / `cache pull`: one line per target of the chains, then a summary."""
    from . import api

    run = api.cache_push if args.action == "push" else api.cache_pull
    done = run(args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir,
               overrides=args.overrides, remote_cache=args.remote_cache)
    if args.json:
        _print_json(done.to_json())
    else:
        width = max((len(n) for n in done.rows), default=0)
        for name, (state, detail) in done.rows.items():
            print(f"{state:<23} {name:<{width}}  {detail}".rstrip())
    for warning in done.warnings:
        _err(f"warning: {warning}")
    verb = "uploaded to" if args.action == "push" else "downloaded from"
    _err(f"{done.blobs} blob(s), {done.bytes / 1e6:.1f} MB {verb} {done.remote}")
    return 0 if done.ok else EXIT_FAILED


@cli.command()
@PROJECT
@RECIPES
@VERBOSE
@COLOR
@OUT_DIR
@_targets()
def clean(**kw) -> int:
    """Remove materialized outputs, not the cache.

    Removes <out-dir>/TARGET for each of TARGETS (all when none).

    --set is not accepted: overrides change what would be built, never where
    a target's outputs are, so clean removes out/TARGET whatever they are.

    \b
    Examples:
      modelbuild clean tiny-llama-8da4w-pte
      modelbuild clean --out-dir /tmp/out
    """
    from .api import clean as run_clean

    args = _ns(kw)
    removed = run_clean(args.targets, project=args.project, recipes=args.recipes, out_dir=args.out_dir)
    _err(f"removed {len(removed)} output(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0


@cli.command()
@COMMON
@CACHE
@OUT_DIR
@_targets(required=True)
@_opt("--format", "fmt", type=click.Choice(["table", "md", "json"]), default=None,
      help="table (rich, for a terminal), md (a Markdown table) or json; default: table on a terminal, md otherwise.")
@_opt("--json", is_flag=True, help="Same as --format json.")
@_opt("--html", metavar="FILE", type=click.Path(dir_okay=False),
      help="Also write the variants report as one self-contained HTML page.")
def report(**kw) -> int:
    """Validation reports of TARGETS side by side.

    Piped to a file or a CI log it prints a Markdown table with every value
    in full (never an ellipsis).

    \b
    Examples:
      modelbuild report tiny-llama-pte-validate tiny-llama-8da4w-pte-validate
      modelbuild report tiny-llama-pte-validate --html report.html --format md > report.md
    """
    from .api import report as run_report

    args = _ns(kw)
    table = run_report(args.targets, project=args.project, recipes=args.recipes, cache_dir=args.cache_dir,
                       out_dir=args.out_dir, overrides=args.overrides, html=args.html)
    if args.html:
        _err(f"wrote {args.html}")
    fmt = "json" if args.json else args.fmt or ("table" if sys.stdout.isatty() else "md")
    if fmt == "json":
        _print_json(table.rows)
    elif fmt == "md":
        print(table.markdown())
    else:
        from rich.console import Console

        color = _color()
        tty = sys.stdout.isatty()
        # Off a terminal there is no width to squeeze into: every value in full.
        console = Console(no_color=None if color is None else not color, force_terminal=color or None,
                          width=None if tty else 10_000)
        console.print(table.render())
        if table.profiles_markdown():  # profile targets: their operators side by side
            console.print("\n" + table.profiles_markdown(), markup=False, highlight=False)
    return 0


@cli.command()
@COMMON
@CACHE
@_targets()
@_opt("--update", multiple=True, metavar="NAME", shell_complete=_complete_targets,
      help="Re-resolve only this fetch target (repeatable).")
@JSON
def lock(**kw) -> int:
    """Write modelbuild.lock for TARGETS' fetches.

    The lock records what every fetch of TARGETS' chains resolved to.

    \b
    Examples:
      modelbuild lock tiny-llama-8da4w-pte
      modelbuild lock --update tiny-llama-ckpt
    """
    from .api import lock as run_lock

    args = _ns(kw)
    result = run_lock(args.targets, update=args.update, project=args.project, recipes=args.recipes,
                      cache_dir=args.cache_dir, overrides=args.overrides)
    if args.json:
        _print_json(result.to_json())
    _err(f"{result.path}: {'written' if result.changed else 'unchanged'} "
         f"({len(result.lock.fetch)} fetch(es) locked for {', '.join(result.lock.targets)})")
    return 0


def _print_differences(report) -> None:
    for name, state in report.targets.items():
        print(f"{state:<10} {name}" if state in ("identical", "differs") else f"{name}: {state}")
    for d in report.differences:
        print(d.line())
    for n in report.not_compared:
        print(n.line())
    culprits = report.culprits
    if culprits:
        named = ", ".join(f"{c} ({report.steps.get(c, 'unknown step')})" for c in culprits)
        _err(f"not reproducible: {named}")


@cli.command()
@COMMON
@CACHE
@_target()
@_opt("--rebuild", is_flag=True, help="Rebuild the whole chain in a scratch cache and compare every file.")
@_opt("--against", metavar="DIR", type=click.Path(), help="Compare with a release bundle, an extracted release or an out/ dir.")
@_opt("--keep-scratch", metavar="DIR", type=click.Path(file_okay=False), help="Keep the scratch cache and out dir in DIR.")
@JOBS
@JSON
def verify(**kw) -> int:
    """Check that TARGET rebuilds byte for byte.

    Rebuilds TARGET's chain in a scratch cache (--rebuild) or compares with a
    bundle (--against). Exits 1 when a file differs.

    \b
    Examples:
      modelbuild verify tiny-llama-8da4w-pte --rebuild
      modelbuild verify tiny-llama-8da4w-pte --against dist/tiny-llama-8da4w-pte
    """
    from .api import verify as run_verify

    args = _ns(kw)
    result = run_verify(args.target, rebuild=args.rebuild, against=args.against, project=args.project,
                        recipes=args.recipes, cache_dir=args.cache_dir, overrides=args.overrides, jobs=args.jobs,
                        scratch=args.keep_scratch)
    if args.json:
        _print_json(result.to_json())
    else:
        _print_differences(result)
    _err(f"{'identical' if result.ok else 'NOT identical'} ({result.duration_s:.1f} s)")
    return 0 if result.ok else 1


@cli.command()
@COMMON
@CACHE
@_targets()
@_opt("-o", "--output", default="dist", show_default=True, type=click.Path(file_okay=False),
      help="Where the bundle directory goes.")
@_opt("--name", help="The bundle's name (default: the first target).")
@_opt("--allow-nondeterministic", multiple=True, metavar="STEP",
      help="Release this target (or step) even though it does not rebuild identically (repeatable).")
@_opt("--no-rebuild-check", is_flag=True, help="Do not rebuild unverified steps in a scratch cache.")
@_opt("--sign", metavar="KEY", type=click.Path(dir_okay=False), help="Sign the provenance with this OpenSSH private key.")
@_opt("--allowed-signers", metavar="FILE", type=click.Path(dir_okay=False),
      help="release verify: the signer must be in this file.")
@_opt("--identity", help="release verify: the signer's principal in --allowed-signers.")
@JOBS
@JSON
def release(**kw) -> int:
    """A reproducible bundle of TARGETS.

    `modelbuild release verify BUNDLE` checks a bundle instead.

    \b
    Examples:
      modelbuild release tiny-llama-8da4w-pte -o dist --sign ~/.ssh/id_ed25519
      modelbuild release verify dist/tiny-llama-8da4w-pte
    """
    from . import api

    args = _ns(kw)
    if args.targets[:1] == ["verify"]:
        if len(args.targets) != 2:
            raise click.UsageError("usage: modelbuild release verify BUNDLE")
        check = api.release_verify(args.targets[1], allowed_signers=args.allowed_signers, identity=args.identity)
        if args.json:
            _print_json(check.to_json())
        for line in check.problems:
            print(line)
        for line in check.notes:
            _err(line)
        return 0 if check.ok else 1
    made = api.release(args.targets, output=args.output, name=args.name, project=args.project, recipes=args.recipes,
                       cache_dir=args.cache_dir, overrides=args.overrides, jobs=args.jobs,
                       allow_nondeterministic=args.allow_nondeterministic,
                       check_rebuild=not args.no_rebuild_check, sign_key=args.sign)
    if args.json:
        _print_json(made.to_json())
    else:
        print(f"{made.bundle.archive}  sha256 {made.bundle.archive_sha256}")
    return 0


@cli.command()
@click.argument("file", type=click.Path())
@PROJECT
@CACHE
@JSON
@VERBOSE
def whence(**kw) -> int:
    """What made FILE (or a b3: digest).

    Prints the target, step, inputs and toolchain. Exits 1 when the cache does not know it.

    \b
    Examples:
      modelbuild whence out/tiny-llama-8da4w-pte/model.pte
      modelbuild whence b3:3ebe8da10d8c...
    """
    from .api import whence as run_whence
    from .origins import render

    args = _ns(kw)
    origins = run_whence(args.file, project=args.project, cache_dir=args.cache_dir)
    if args.json:
        _print_json([o.to_json() for o in origins])
    for o in origins if not args.json else []:
        print("\n".join(render(o)))
    if not origins:
        _err(f"{args.file}: not in the cache")
        return 1
    return 0


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> int:
    """Print the completion script for SHELL.

    SHELL is bash, zsh or fish.
    Completes verbs, options, target names from the project's recipes,
    --set keys and paths.

    \b
    Examples:
      eval "$(modelbuild completion bash)"     # in ~/.bashrc
      eval "$(modelbuild completion zsh)"      # in ~/.zshrc
      modelbuild completion fish > ~/.config/fish/completions/modelbuild.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)(cli, {}, "modelbuild", "_MODELBUILD_COMPLETE")
    click.echo(complete.source())
    return 0
