"""Which symbolic links a *source* tree may hold, and where they lead.

An artifact never holds a link (hashing and the store refuse them). A source
(a project file or directory named in a recipe: a ``fetch`` from a local
path, a ``command``'s ``deps``) may, as long as every link stays inside the
tree's *link roots*:

- the tree itself, for any directory;
- for a snapshot of a Hugging Face cache
  (``.../hub/models--ORG--NAME/snapshots/SHA``, made of relative links like
  ``../../blobs/<etag>``): the repo directory ``models--ORG--NAME``, and the
  cache-wide shared blob store ``.../hub/blobs`` when huggingface_hub marks
  it as one (its Xet deduplication links ``blobs/<etag>`` on into it).

A link is followed for its content, exactly as the step reads it, so the
digest of a snapshot equals the digest of a plain copy of its files. A link
leading anywhere else, or nowhere, is an error naming the link. Hashing
(``modelbuild.hashing.digest_path``) and the fetch step apply the same rule.

Example::

    >>> hub_snapshot(Path("/c/hub/models--org--tiny/snapshots/0123abc/sub/f.json"))
    (PosixPath('/c/hub/models--org--tiny'), '0123abc')
    >>> hub_snapshot(Path("/proj/ckpts/tiny")) is None
    True
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from .errors import StoreError

__all__ = ["hub_snapshot", "link_roots", "follow", "follower"]

#: The directory of one repo in a Hub cache (huggingface_hub's ``repo_folder_name``).
HUB_REPO_DIR = re.compile(r"(models|datasets|spaces)--.+")
#: The marker file huggingface_hub writes into its cache-wide shared blob store.
SHARED_BLOBS_MARKER = ".huggingface-shared-blobs"


def hub_snapshot(path: Path) -> tuple[Path, str] | None:
    """``(repo directory, commit)`` if ``path`` is at or under ``snapshots/<commit>`` of a Hub cache repo."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 2, 1, -1):
        if parts[i] == "snapshots" and HUB_REPO_DIR.fullmatch(parts[i - 1]):
            return Path(*parts[:i]), parts[i + 1]
    return None


def link_roots(tree: Path) -> tuple[Path, ...]:
    """The real directories that links under ``tree`` may lead into (see the module docstring)."""
    real = Path(tree).resolve()
    snap = hub_snapshot(real)
    if snap is None:
        return (real,)
    repo = snap[0]
    shared = repo.parent / "blobs"
    if (shared / SHARED_BLOBS_MARKER).is_file() and not (shared / SHARED_BLOBS_MARKER).is_symlink():
        return (repo, shared)
    return (repo,)


def follow(link: Path, roots: tuple[Path, ...]) -> Path:
    """The real path ``link`` leads to; :class:`StoreError` naming the link if outside ``roots`` or broken."""
    try:
        target = Path(link).resolve(strict=True)
    except (OSError, RuntimeError):
        try:
            dest = os.readlink(link)
        except OSError:
            dest = "?"
        raise StoreError(f"{link}: broken symbolic link (-> {dest})") from None
    if not any(target == root or target.is_relative_to(root) for root in roots):
        raise StoreError(f"{link}: symbolic link leads outside {roots[0]} (-> {target})")
    if target.is_dir() and Path(link).parent.resolve().is_relative_to(target):
        raise StoreError(f"{link}: symbolic link to a directory that contains it (a cycle)")
    return target


def follower(tree: Path) -> Callable[[Path], Path]:
    """``follow`` bound to the link roots of ``tree``, for walking it."""
    roots = link_roots(tree)
    return lambda link: follow(link, roots)
