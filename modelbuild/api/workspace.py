"""Where a project's recipes, cache and outputs are, and loading them.

The project root is the directory holding ``recipes/``: given explicitly, or
found by walking up from the current directory. The cache defaults to
``<root>/cache`` and is overridden by ``--cache-dir`` or
``MODELBUILD_CACHE_DIR``; outputs go to ``<root>/out``.

Example::

    ws = Workspace.locate()
    graph = ws.graph(overrides=["targets.tiny-llama-8da4w.group_size=64"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Workspace"]


@dataclass(frozen=True)
class Workspace:
    root: Path
    recipes_dir: Path
    cache_dir: Path
    out_dir: Path

    @classmethod
    def locate(
        cls,
        project: Path | str | None = None,
        *,
        recipes: Path | str | None = None,
        cache_dir: Path | str | None = None,
        out_dir: Path | str | None = None,
    ) -> "Workspace":
        if project is not None:
            root = Path(project).resolve()
        elif recipes is not None:
            root = Path(recipes).resolve().parent
        else:
            root = _find_root(Path.cwd())
        recipes_dir = Path(recipes).resolve() if recipes is not None else root / "recipes"
        env_cache = os.environ.get("MODELBUILD_CACHE_DIR")
        cache = Path(cache_dir) if cache_dir is not None else Path(env_cache) if env_cache else root / "cache"
        out = Path(out_dir) if out_dir is not None else root / "out"
        return cls(root=root, recipes_dir=recipes_dir, cache_dir=cache.resolve(), out_dir=out.resolve())

    def recipes(self, overrides: list[str] | None = None):
        from ..recipe import load_recipes

        return load_recipes(self.recipes_dir, overrides=overrides, root=self.root)

    def graph(self, overrides: list[str] | None = None):
        """The bound graph; from the cache's bound-graph entries when nothing it came from changed (graph_cache.py)."""
        from ..graph_cache import load_graph

        return load_graph(self.root, self.recipes_dir, self.cache_dir, overrides)

    def store(self):
        from ..store import Store

        return Store(self.cache_dir)


def _find_root(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding recipes/ (else ``start``;
    loading recipes then reports the missing directory)."""
    for candidate in (start, *start.parents):
        if (candidate / "recipes").is_dir():
            return candidate
    return start
