"""The no-op fast path: prove "nothing changed" with a few stats, before loading anything.

After a fully successful build, :func:`record_noop` writes a small state file
listing the stat signature (device, inode, size, mtime_ns, ctime_ns) of
everything the build's action keys and outputs were derived from:

- every recipe file and recipe directory (a new or removed file shows up in
  the directory's mtime),
- the code of the steps used (their fingerprint's import closure, see
  fingerprint.py) and every module of modelbuild itself,
- every file and directory the steps declared as a source (e.g. a local
  checkpoint),
- every directory on ``sys.path`` (installing, upgrading or removing a
  package there adds or removes its ``.dist-info`` and so changes the
  directory: that is how a declared toolchain version changes; a
  ``PYTHONPATH`` directory counts as much as site-packages, and ``sys.path``
  itself, but for its first entry, is part of the state's identity),
- every materialized output file under out/ (outputs are hard links to
  read-only blobs, so a change to either shows in the ctime), and the blob
  of each output file that is not its link (a reflink or a copy, or a file
  kept in place after ``cache clear``: engine._unlinked_blobs).

For sources and step code the signature is the one the engine took *before
it read the file* (``BuildResult.watched``), not a fresh stat: a file edited
after it was hashed, while other steps still ran, has another signature now,
so the next build takes the full path and sees the edit. Everything is also
subject to the racy rule against the build's *start*: a file whose mtime or
ctime is within :data:`_RACY_NS` of it (or later) may have changed in the same
timestamp tick as it was read, so it is never trusted.

``cache clear`` and ``cache gc`` drop these state files (:func:`forget_all`),
so a no-op is never claimed against records that are gone.

:func:`try_noop` re-stats that list. If every signature matches, and the
command line options, Python and the relevant environment are the same, the
build is a no-op and says so without importing pydantic, networkx, the step
plugins or torch. Any difference, or any doubt (unreadable state, a racy
file, a time-bound resolution past its validity), falls back to the full
build, which is always correct.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

__all__ = ["try_noop", "record_noop", "forget_all", "import_path", "process_start_ns", "FORMAT"]

FORMAT = 3
_ENV = ("MODELBUILD_HOST_PLATFORM", "MODELBUILD_CACHE_DIR", "PATH")
#: A file modified this close to the build's start (or later) is not trusted
#: (the racy rule; the same 2 s as hashing.RACY_MARGIN_NS, for the same reasons).
_RACY_NS = 2_000_000_000
#: When this module was loaded (see process_start_ns).
_LOADED_NS = time.time_ns()
#: Indices of mtime_ns and ctime_ns in a signature.
_MTIME, _CTIME = 3, 4


def _signature(path: str) -> list[int] | None:
    # The fields and order of hashing.stat_signature (not imported: this
    # module must stay light); tests/test_fastpath.py checks they agree.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def process_start_ns() -> int:
    """When this process started, or when this module was loaded if earlier
    or if the system cannot say: a bound from below of when the build began
    reading recipes and sources. Earlier is safe (more files count as racy);
    later would not be, whatever order the CLI imports things in.

    The process's age is measured on the clock its start time is kept in
    (clock ticks since boot, CLOCK_BOOTTIME) and taken from the wall clock
    now. Adding the start to /proc/stat's ``btime`` instead would be off by
    up to a second, since btime is whole seconds: enough to make a file
    written just before this process started look older than it is.
    """
    try:
        with open("/proc/self/stat", "rb") as fh:
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
        hz = os.sysconf("SC_CLK_TCK")
        # (ticks + 1): the start is truncated to a whole tick; round the age up.
        age_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 10**9 // hz + 10**9 // hz
        started = time.time_ns() - age_ns
    except (OSError, ValueError, IndexError, AttributeError):
        return _LOADED_NS
    return min(started, _LOADED_NS)


def import_path() -> list[str]:
    """``sys.path`` as it names a cached state (this file's no-op states, the
    bound graphs of graph_cache.py): all but its first entry.

    The first entry is the script's directory, the working directory or ""
    according to how Python was started (``modelbuild``, ``python -m
    modelbuild.cli``, ``python -c``), so keying on it would make each way
    of starting the same build miss the state the other wrote. What that
    entry holds still counts: a no-op watches it as a directory
    (:func:`record_noop`), and the bound graph's key lists the distributions
    found on every entry and re-checks the step code where it is imported from.
    """
    return sys.path[1:]


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
        "sys_path": import_path(),
    }


def try_noop(*, project: str | None, recipes: str | None, cache_dir: str | None, options: dict[str, Any]) -> str | None:
    """A one-line summary if the last build proves this one a no-op, else None."""
    try:
        root, recipes_dir, cache = _locate(project, recipes, cache_dir)
        identity = _identity(root, recipes_dir, cache, options)
        state = json.loads(_state_path(cache, identity).read_text())
        if state.get("identity") != identity:
            return None
        started = state["started_ns"]
        valid_until = state.get("valid_until_ns")
        if valid_until is not None and time.time_ns() >= valid_until:
            return None
        for path, sig in state["watch"]:
            now = _signature(path)
            if now != sig:
                return None
            if now is not None and max(now[_MTIME], now[_CTIME]) >= started - _RACY_NS:
                return None  # changed around or after the build's start: maybe not what was read
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


def record_noop(result, *, project: str | None, recipes: str | None, cache_dir: str | None, options: dict[str, Any],
                started_ns: int | None = None) -> None:
    """Remember what a fully successful build depended on (see the module docstring).

    ``started_ns``: ``time.time_ns()`` from before the build read anything
    (default: when this process started).
    """
    if not result.ok or any(r.status not in ("built", "cached") for r in result.targets.values()):
        return
    root, recipes_dir, cache = _locate(project, recipes, cache_dir)
    identity = _identity(root, recipes_dir, cache, options)
    # path -> the signature from before the engine read it, or None (stat now).
    watched: dict[str, Any] = {p: None for p in _walk_files(recipes_dir)}
    for dirpath, _dirs, filenames in os.walk(os.path.dirname(__file__)):  # every module of modelbuild
        watched.update((os.path.join(dirpath, f), None) for f in filenames if f.endswith(".py"))
    # Not only "-packages" directories: a toolchain distribution found on a
    # PYTHONPATH directory is upgraded by replacing its dist-info there.
    watched.update((os.path.abspath(p), None) for p in sys.path if p)
    read = result.watched if isinstance(result.watched, dict) else dict.fromkeys(result.watched)
    for r in result.targets.values():
        # An output the engine's restore found in place comes with its tree's signatures (engine._out_seen).
        if r.out is not None and read.get(os.path.abspath(r.out)) is None:
            watched.update((p, None) for p in _walk_files(Path(r.out)))
    for path, sig in read.items():
        watched[path] = list(sig) if sig is not None else watched.get(path)
    state = {
        "identity": identity,
        "targets": len(result.targets),
        "started_ns": process_start_ns() if started_ns is None else started_ns,
        "valid_until_ns": getattr(result, "valid_until_ns", None),
        "watch": sorted([p, sig if sig is not None else _signature(p)] for p, sig in watched.items()),
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
