"""File-tree helpers of the fetch step: list, select, place, describe, and tell the layout.

Standard library only. Names are relative POSIX paths (``"original/params.json"``).

Example::

    >>> detect_format(["config.json", "model.safetensors", "tokenizer.json"])
    'hf'
    >>> matches("original/params.json", ["original/"])
    True
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "list_files",
    "matches",
    "place",
    "describe",
    "detect_format",
    "has_layout",
    "suggest_subdir",
    "preview",
    "human_size",
]

#: The file a declared format cannot do without (a lighter test than
#: detection, so that e.g. an hf checkpoint with pytorch_model.bin can be
#: declared by hand).
REQUIRED = {"hf": "config.json", "meta": "params.json", "gguf": "*.gguf"}


def list_files(
    root: Path,
    *,
    hidden_dirs: bool = True,
    skip: tuple[str, ...] = (),
    follow: Callable[[Path], Path] | None = None,
) -> list[str]:
    """Relative POSIX paths of the files under ``root``, sorted.

    ``hidden_dirs=False`` skips ``.git/``, ``.cache/`` (``hf download
    --local-dir`` metadata) and other dot-directories; ``skip`` names files
    to leave out (e.g. ``checkpoint.json``). Each symbolic link met is passed
    to ``follow`` (``modelbuild.links.follower(root)``: the in-tree rule of a
    source, which raises naming a link that leads out); without it, links
    are followed wherever they lead.
    """
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if not hidden_dirs:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if follow is not None:
            for name in dirnames + filenames:
                if os.path.islink(os.path.join(dirpath, name)):
                    follow(Path(dirpath) / name)
        for fname in filenames:
            rel = (Path(dirpath) / fname).relative_to(root).as_posix()
            if rel not in skip:
                names.append(rel)
    return sorted(names)


def matches(name: str, patterns: list[str]) -> bool:
    """Glob match as huggingface_hub does it: ``*`` crosses ``/``; ``"dir/"`` means everything below."""
    return any(
        fnmatch.fnmatch(name, pat) or (pat.endswith("/") and fnmatch.fnmatch(name, pat + "*")) for pat in patterns
    )


def place(src: Path, dst: Path, *, link: bool = True) -> str:
    """Put ``src`` (symlinks resolved) at ``dst`` without copying its bytes where possible.

    A reflink (copy-on-write clone) where the filesystem has them, else a
    hardlink if ``link``, else a copy; ``MODELBUILD_MATERIALIZE=copy`` asks for
    copies. The decision is :func:`modelbuild.materialize.place_file`'s, the
    same as for ``out/``. Returns the method used.
    """
    from modelbuild.materialize import place_file, preferred_method

    src = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    return place_file(src, dst, preferred_method(), hardlink=link)


def describe(path: Path) -> dict[str, Any]:
    """``{"sha256": ..., "size": ...}`` of a file."""
    from .download import file_sha256  # the one streamed sha256 of a file (download's checks use it too)

    return {"sha256": file_sha256(path), "size": path.stat().st_size}


def detect_format(names: list[str]) -> str | None:
    """The checkpoint layout at the root of a file list, or None.

    Only top-level files count, as the checkpoint loader reads them there.

    >>> detect_format(["params.json", "consolidated.00.pth", "tokenizer.model"])
    'meta'
    >>> detect_format(["smollm2-135m-q8_0.gguf"])
    'gguf'
    >>> detect_format(["original/params.json", "original/consolidated.00.pth"]) is None
    True
    """
    top = {n for n in names if "/" not in n}
    if "config.json" in top and any(n.endswith(".safetensors") for n in top):
        return "hf"
    if "params.json" in top and any(n.endswith((".pth", ".pt")) for n in top):
        return "meta"  # consolidated*.pth, or one *.pt (llama2.c's stories110M.pt)
    if any(n.endswith(".gguf") for n in top):
        return "gguf"
    return None


def has_layout(fmt: str, names: list[str]) -> bool:
    """Whether the top level holds the file ``fmt`` cannot do without."""
    return any(fnmatch.fnmatch(n, REQUIRED[fmt]) for n in names if "/" not in n)


def suggest_subdir(names: list[str]) -> tuple[str, str] | None:
    """``(directory, format)`` of the first subdirectory holding a checkpoint layout.

    >>> suggest_subdir(["config.json", "original/params.json", "original/consolidated.00.pth"])
    ('original', 'meta')
    """
    dirs = sorted({n.split("/", 1)[0] for n in names if "/" in n})
    for d in dirs:
        inner = [n[len(d) + 1 :] for n in names if n.startswith(d + "/")]
        fmt = detect_format(inner)
        if fmt is not None:
            return d, fmt
    return None


def preview(names: list[str], n: int = 6) -> str:
    """The first ``n`` names, comma-separated, with a count of the rest."""
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
