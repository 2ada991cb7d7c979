"""The no-op fast path: prove "nothing changed" with a few stats, before loading anything.

After a fully successful build, :func:`record_noop` writes a small state file
listing the stat signature (size, mtime_ns, ctime_ns, inode) of everything the
build's action keys and outputs were derived from:

- every recipe file and recipe directory (a new or removed file shows up in
  the directory's mtime),
- the source files of the steps used (their fingerprint) and modelbuild's own
  core modules,
- every file the steps declared as a source (e.g. a local checkpoint),
- the site-packages directories (installing or upgrading a toolchain package
  changes them),
- every materialized output file under out/ (outputs are hard links to
  read-only blobs, so a change to either shows in the ctime).

``cache clear`` and ``cache gc`` drop these state files (:func:`forget_all`),
so a no-op is never claimed against records that are gone.

:func:`try_noop` re-stats that list. If every signature matches, and the
command line options, Python and the relevant environment are the same, the
build is a no-op and says so without importing pydantic, networkx, the step
plugins or torch. Any difference, or any doubt (unreadable state, a file whose
mtime is too close to when the state was written: the racy-git rule), falls
back to the full build, which is always correct.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

__all__ = ["try_noop", "record_noop", "forget_all", "FORMAT"]

FORMAT = 1
_ENV = ("MODELBUILD_HOST_PLATFORM", "MODELBUILD_CACHE_DIR", "PATH")
#: A file modified this close to the state's own write time is not trusted (racy rule).
_RACY_NS = 2_000_000_000


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _locate(project: str | None, recipes: str | None, cache_dir: str | None) -> tuple[Path, Path, Path]:
    if project is not None:
        root = Path(project).resolve()
    elif recipes is not None:
        root = Path(recipes).resolve().parent
    else:
        root = Path.cwd()
        for candidate in (root, *root.parents):
            if (candidate / "recipes").is_dir():
                root = candidate
                break
    recipes_dir = Path(recipes).resolve() if recipes is not None else root / "recipes"
    env_cache = os.environ.get("MODELBUILD_CACHE_DIR")
    cache = (Path(cache_dir) if cache_dir else Path(env_cache) if env_cache else root / "cache").resolve()
    return root, recipes_dir, cache


def _state_path(cache: Path, identity: dict[str, Any]) -> Path:
    # Only names the state file (the full identity is stored and compared);
    # zlib avoids loading OpenSSL's hashlib on the fast path.
    digest = zlib.crc32(json.dumps(identity, sort_keys=True).encode())
    return cache / "noop" / f"{digest:08x}.json"


def _identity(root: Path, recipes_dir: Path, cache: Path, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "root": str(root),
        "recipes": str(recipes_dir),
        "cache": str(cache),
        "options": options,
        "python": [sys.executable, sys.version],
        "env": {k: os.environ.get(k) for k in _ENV},
    }


def try_noop(*, project: str | None, recipes: str | None, cache_dir: str | None, options: dict[str, Any]) -> str | None:
    """A one-line summary if the last build proves this one a no-op, else None."""
    try:
        root, recipes_dir, cache = _locate(project, recipes, cache_dir)
        identity = _identity(root, recipes_dir, cache, options)
        state = json.loads(_state_path(cache, identity).read_text())
        if state.get("identity") != identity:
            return None
        written = state["written_ns"]
        for path, sig in state["watch"]:
            now = _signature(path)
            if now != sig:
                return None
            if now is not None and written - max(now[1], now[2]) < _RACY_NS:
                return None
        count = state["targets"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"{count} target(s) up to date (nothing changed since the last build)"


def _walk_files(path: Path) -> list[str]:
    if path.is_dir() and not path.is_symlink():
        found = [str(path)]
        for dirpath, dirnames, filenames in os.walk(path):
            found.extend(os.path.join(dirpath, d) for d in dirnames)
            found.extend(os.path.join(dirpath, f) for f in filenames)
        return found
    return [str(path)]


def record_noop(result, *, project: str | None, recipes: str | None, cache_dir: str | None, options: dict[str, Any]) -> None:
    """Remember what a fully successful build depended on (see the module docstring)."""
    if not result.ok or any(r.status not in ("built", "cached") for r in result.targets.values()):
        return
    root, recipes_dir, cache = _locate(project, recipes, cache_dir)
    identity = _identity(root, recipes_dir, cache, options)
    watched: set[str] = set(result.watched)
    watched.update(_walk_files(recipes_dir))
    core = Path(__file__).parent
    watched.update(str(p) for p in core.glob("*.py"))
    watched.update(p for p in sys.path if p.endswith("-packages") and os.path.isdir(p))
    for r in result.targets.values():
        if r.out is not None:
            watched.update(_walk_files(Path(r.out)))
    state = {
        "identity": identity,
        "targets": len(result.targets),
        "written_ns": time.time_ns(),
        "watch": sorted([p, _signature(p)] for p in watched),
    }
    path = _state_path(cache, identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def forget_all(cache_dir: Path) -> None:
    """Drop every no-op state file of a cache (after cache clear or gc)."""
    folder = Path(cache_dir) / "noop"
    if folder.is_dir():
        for path in folder.glob("*.json"):
            path.unlink(missing_ok=True)
