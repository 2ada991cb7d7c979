"""``general.architecture`` of a GGUF file, read with the standard library only (for planning).

Planning checks a recipe's declared ``family`` against a local checkpoint
before anything runs. For a GGUF file only the architecture is needed, and
llama.cpp's converter writes it as the very first key; the ``gguf`` package's
reader would import numpy and parse every key (a 150k-entry vocabulary takes
a noticeable part of a second), so this reads the key/value section in order
and stops at the architecture.

Example::

    gguf_architecture(Path("ckpts/model.gguf"))   # "phi3"
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["gguf_architecture"]

# GGUF value types -> fixed size in bytes (8 = string and 9 = array are variable).
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_KEY = "general.architecture"


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("truncated GGUF header")
    return data


def _skip(f: BinaryIO, vtype: int, order: str, count: int = 1) -> None:
    if vtype in _SIZES:
        f.seek(_SIZES[vtype] * count, 1)
        return
    if vtype == 8:
        for _ in range(count):
            (length,) = struct.unpack(order + "Q", _read(f, 8))
            f.seek(length, 1)
        return
    if vtype == 9:
        for _ in range(count):
            item, n = struct.unpack(order + "IQ", _read(f, 12))
            _skip(f, item, order, n)
        return
    raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_architecture(path: Path) -> str | None:
    """The file's ``general.architecture`` (None if it has none); ValueError if it is not GGUF v2/v3."""
    with open(path, "rb") as f:
        if _read(f, 4) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        raw = _read(f, 4)
        order = "<" if struct.unpack("<I", raw)[0] < 65536 else ">"  # big-endian files exist
        (version,) = struct.unpack(order + "I", raw)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        _, n_kv = struct.unpack(order + "QQ", _read(f, 16))
        for _ in range(n_kv):
            (length,) = struct.unpack(order + "Q", _read(f, 8))
            key = _read(f, length).decode("utf-8", "replace")
            (vtype,) = struct.unpack(order + "I", _read(f, 4))
            if key == _KEY and vtype == 8:
                (size,) = struct.unpack(order + "Q", _read(f, 8))
                return _read(f, size).decode("utf-8")
            _skip(f, vtype, order)
    return None
