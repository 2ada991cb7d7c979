"""``whence``: which cached artifact holds a file, and the chain that made it.

Example::

    from modelbuild.api import whence
    for origin in whence("out/tiny-llama/model.pte"):
        print(origin.target, origin.step, origin.key)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelbuildError
from ..hashing import hash_file
from ..origins import Origin, normalize_digest
from ..origins import whence as _whence
from .workspace import Workspace

__all__ = ["whence"]


def whence(
    file_or_digest: str,
    *,
    project: Path | str | None = None,
    cache_dir: Path | str | None = None,
) -> list[Origin]:
    """The origins (target, step, params, inputs down to the checkpoint's source,
    toolchain, build time) of a file, given its path or its ``b3:`` digest."""
    if os.path.exists(file_or_digest):
        if os.path.isdir(file_or_digest):
            from ..hashing import manifest_of

            digest = manifest_of(Path(file_or_digest)).digest
        else:
            digest = hash_file(Path(file_or_digest))
    else:
        digest = normalize_digest(file_or_digest)
        if digest is None:
            raise ModelbuildError(f"{file_or_digest}: no such file, and not a b3: digest")
    ws = Workspace.locate(project, cache_dir=cache_dir)
    with ws.store() as store:
        return _whence(store, digest)
