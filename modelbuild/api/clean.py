"""``clean``: remove materialized outputs under out/ (never the cache).

Example::

    clean(["tiny-llama"])   # removes out/tiny-llama/
    clean()                 # removes every out/<target>/
"""

from __future__ import annotations

from pathlib import Path

from .workspace import Workspace

__all__ = ["clean"]


def clean(targets: list[str] | None = None, *, project: Path | str | None = None, recipes: Path | str | None = None,
          out_dir: Path | str | None = None) -> list[str]:
    """Remove ``<out_dir>/<target>/`` (default out/) for the given targets (all when empty); returns what was removed.

    Recipe overrides are not taken: they change what a target builds, never where its outputs are.
    """
    ws = Workspace.locate(project, recipes=recipes, out_dir=out_dir)
    if targets:
        graph = ws.graph()
        names = graph.resolve_names(list(targets))
    else:
        names = sorted(p.name for p in ws.out_dir.iterdir()) if ws.out_dir.is_dir() else []
    removed = []
    with ws.store() as store:
        for name in names:
            path = ws.out_dir / name
            if path.is_dir() and not path.is_symlink():
                store.remove_output(path)  # keeps the blobs' stat records valid
                removed.append(name)
            elif path.exists() or path.is_symlink():
                path.unlink()
                removed.append(name)
    return removed
