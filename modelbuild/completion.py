"""Shell completion answers that need the project: target names and ``--set`` keys.

click's own machinery (``modelbuild completion bash|zsh|fish`` prints the
script; the shell then calls ``modelbuild`` with ``_MODELBUILD_COMPLETE`` set)
completes verbs, options, choices and paths. This module adds what only the
recipes know, read straight from the recipe TOML files (tomllib only: no
pydantic, no step plugins, no networkx): an answer must come back within
0.15 s (docs/benchmarks.md). A broken or missing project completes nothing
rather than printing an error into the user's prompt.

Example::

    >>> [c.value for c in _matching(["vars.", "targets."], "t")]
    ['targets.']
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from click.shell_completion import CompletionItem

__all__ = ["complete_targets", "complete_overrides", "project_names"]


def _root(params: dict[str, Any]) -> tuple[Path, Path]:
    """(project root, recipes dir) as the verbs find them (see api/workspace.py)."""
    if params.get("project"):
        root = Path(params["project"]).resolve()
    elif params.get("recipes"):
        root = Path(params["recipes"]).resolve().parent
    else:
        root = Path.cwd()
        for candidate in (root, *root.parents):
            if (candidate / "recipes").is_dir():
                root = candidate
                break
    recipes = Path(params["recipes"]).resolve() if params.get("recipes") else root / "recipes"
    return root, recipes


class _Entry:
    """What completion needs of a target: its step, description and the parameters its recipe sets."""

    def __init__(self, table: dict[str, Any]):
        self.step = str(table.get("step") or "")
        self.description = str(table.get("description") or "")
        self.params = {k: v for k, v in table.items() if k not in ("step", "inputs", "extends", "description")}


def project_names(params: dict[str, Any]) -> tuple[dict[str, _Entry], dict[str, Any]]:
    """(target name -> entry, var name -> value) of the project ``params`` point at; empty on any error.

    Reads the recipe TOML files directly, the way :func:`modelbuild.recipe.load_recipes`
    finds them (every ``*.toml`` under the recipes directory), without
    validating them: load_recipes imports pydantic, which alone takes longer
    than the 0.15 s a completion may. ``extends`` is followed for the
    parameters a target inherits.
    """
    try:
        _, recipes_dir = _root(params)
        tables: dict[str, dict[str, Any]] = {}
        variables: dict[str, Any] = {}
        for path in sorted(recipes_dir.rglob("*.toml")):
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
            variables.update(data.get("vars") or {})
            for name, table in (data.get("targets") or {}).items():
                if isinstance(table, dict):
                    tables.setdefault(name, table)

        def merged(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
            table = tables.get(name) or {}
            parent = table.get("extends")
            if isinstance(parent, str) and parent in tables and parent not in seen:
                return {**merged(parent, seen + (name,)), **table}
            return table

        return {name: _Entry(merged(name)) for name in tables}, variables
    except Exception:  # noqa: BLE001 - completion must never print a traceback into a prompt
        return {}, {}


def _matching(values, incomplete: str, helps: dict[str, str] | None = None) -> list[CompletionItem]:
    helps = helps or {}
    return [CompletionItem(v, help=helps.get(v) or None) for v in values if v.startswith(incomplete)]


def complete_targets(ctx, incomplete: str) -> list[CompletionItem]:
    """Target names starting with ``incomplete``, each with its step and description as help."""
    targets, _ = project_names(ctx.params)
    helps = {name: f"{t.step}: {t.description}".rstrip(": ") for name, t in targets.items()}
    return _matching(sorted(targets), incomplete, helps)


def complete_overrides(ctx, incomplete: str) -> list[CompletionItem]:
    """``--set`` keys: ``targets.``/``vars.``, then ``targets.NAME.``, then ``targets.NAME.PARAM=`` or ``vars.NAME=``."""
    if "=" in incomplete:
        return []
    if not incomplete.startswith(("targets.", "vars.")):
        return _matching(["targets.", "vars."], incomplete)
    targets, variables = project_names(ctx.params)
    if incomplete.startswith("vars."):
        return _matching([f"vars.{name}=" for name in sorted(variables)], incomplete)
    rest = incomplete[len("targets."):]
    # Names may hold dots: the longest name followed by a dot is the one being set.
    named = [n for n in targets if rest.startswith(n + ".")]
    if not named:  # still typing the target's name
        return _matching([f"targets.{n}." for n in sorted(targets)], incomplete)
    name = max(named, key=len)
    # The parameters the recipe sets (the step's other parameters need the plugins: too slow here).
    return _matching([f"targets.{name}.{p}=" for p in sorted(targets[name].params)], incomplete)
