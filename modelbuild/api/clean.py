"""``clean``: remove materialized outputs under out/ (never the cache).

Example::

    clean(["tiny-llama"])   # removes out/tiny-llama/
    clean()                 # removes every out/<target>/
"""

from __future__ import annotations

from pathlib import Path

from .workspace import Workspace

__all__ = ["clean"]


def clean(targets: list[str] | None = None, *, project: Path | str | None = None, recipes: Path | str | None = None) -> list[str]:
    """Remove ``out/<target>/`` for the given targets (all when empty); returns what was removed."""
    ws = Workspace.locate(project, recipes=recipes)
    if targets:
        graph = ws.graph()
        names = graph.resolve_names(list(targets))
    else:
        names = sorted(p.name for p in ws.out_dir.iterdir()) if ws.out_dir.is_dir() else []
    removed = []
    store = ws.store()
    for name in names:
        path = ws.out_dir / name
        if path.is_dir() and not path.is_symlink():
            store.remove_output(path)  # keeps the blobs' stat records valid
            removed.append(name)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed
