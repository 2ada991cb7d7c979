"""Downloading one blob from the remote: the backend's fastest copy, then verified while it reaches the disk.

Where a pull of a large blob spends its time (600 MB from a file:// remote,
bench/bench_remote.py on the 2-core VM): the copy (about 1 s; fsspec's local
backend uses the kernel's copy_file_range), hashing (about 1 s, BLAKE3 on
all cores over the page cache), and the store's fsync (about 1.2 s). So

- the copy is the backend's own ``get_file``: the kernel copy for a
  directory, and for s3fs its parallel ranged GETs (tune them with the
  storage options ``max_concurrency`` and ``default_block_size`` in
  ``remote-options``). Reading the object ourselves in parallel ranges
  (``cat_file(path, start, end)`` from threads, hashed and written as the
  parts arrive) was measured and lost on a directory (5-9 s against 3 s),
  and against moto, whose server reads the whole object for every ranged
  request, a single stream beat s3fs's ranges five times over;
- the hash runs while the kernel writes the file back (``fdatasync`` on a
  helper thread), so the store's own fsync finds little left to do;
- several blobs of one result are fetched at once (:data:`PARALLEL`), which
  is what a step with many files (a checkpoint, a Core ML package) needs
  from a remote with latency.

Nothing is weakened: the caller compares the returned digest with the
record's before the file is stored, an object of another length than the
record's is :class:`TransferError`, and on any error the partial file is
removed.

Example::

    digest = download(fs, "bucket/v1/blobs/ab/cdef...", Path("scratch/0"), size=652_000_000)
    assert digest == entry.digest   # the caller's check; on a mismatch it deletes the file
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .hashing import hash_file

__all__ = ["download", "parallel_blobs", "PARALLEL", "TransferError"]

#: Blobs of one result fetched at once.
PARALLEL = 4
#: From this size on, a blob is hashed while the kernel writes it back (below it, a thread costs more).
OVERLAP_BYTES = 8 << 20


class TransferError(OSError):
    """The object that came down is not as long as its record says."""


def parallel_blobs() -> int:
    """How many blobs :meth:`RemoteCache.pull` fetches at once: :data:`PARALLEL`, or
    ``MODELBUILD_REMOTE_PARALLEL`` from the environment (1: one after the other)."""
    try:
        return max(1, int(os.environ.get("MODELBUILD_REMOTE_PARALLEL") or PARALLEL))
    except ValueError:
        return PARALLEL  # a malformed tuning knob keeps the default


def download(fs: Any, rpath: str, dest: Path, size: int) -> str:
    """Copy the remote object ``rpath`` (``size`` bytes by its record) to the new file
    ``dest`` and return the ``b3:`` digest of what came down.

    Raises what the backend raises (FileNotFoundError, transport errors) or
    :class:`TransferError` when the object's length is not ``size``; ``dest``
    does not exist afterwards when anything is raised.
    """
    try:
        fs.get_file(rpath, os.fspath(dest))
        got = os.stat(dest).st_size
        if got != size:
            raise TransferError(f"size {got}, expected {size}")
        if size < OVERLAP_BYTES:
            return hash_file(dest)
        fd = os.open(dest, os.O_RDONLY)
        try:
            flush = threading.Thread(target=_writeback, args=(fd,), name="modelbuild-writeback", daemon=True)
            flush.start()
            try:
                return hash_file(dest)
            finally:
                flush.join()
        finally:
            os.close(fd)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _writeback(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # the store's own fsync reports a disk that fails
