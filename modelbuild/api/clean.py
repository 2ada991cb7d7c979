"""``clean``: remove materialized outputs under out/ (never the cache).

Example::

    clean(["tiny-llama"])   # removes out/tiny-llama/
    clean()                 # removes every out/<target>/
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from .workspace import Workspace

__all__ = ["clean"]


def _make_writable(func, path, _exc):
    # Materialized files are read-only; their directory must be writable to unlink.
    os.chmod(os.path.dirname(path), stat.S_IRWXU)
    func(path)


def clean(targets: list[str] | None = None, *, project: Path | str | None = None, recipes: Path | str | None = None) -> list[str]:
    """Remove ``out/<target>/`` for the given targets (all when empty); returns what was removed."""
    ws = Workspace.locate(project, recipes=recipes)
    if targets:
        graph = ws.graph()
        names = graph.resolve_names(list(targets))
    else:
        names = sorted(p.name for p in ws.out_dir.iterdir()) if ws.out_dir.is_dir() else []
    removed = []
    for name in names:
        path = ws.out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=_make_writable)
            removed.append(name)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed
