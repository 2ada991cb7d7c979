"""The RSS of a process tree, without counting a not-yet-exec'd vfork child twice.

Used by ``bench_pairs.measure`` (every ``export_llm`` comparison and
``bench_fused.py``) for the "tree sum" peak.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """``(ppid, vsize, rss bytes)`` of ``pid`` from one read of ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[20]), int(fields[21]) * PAGE


def tree_rss(root) -> tuple[int, int]:
    """``(rss, raw)`` of the ``psutil.Process`` ``root``'s tree, in bytes.

    ``raw`` sums every process's RSS. ``rss`` leaves out a child whose virtual
    size and RSS both equal its parent's: a vfork child that has not exec'd
    yet. Python's subprocess starts programs with vfork, so until exec the
    child shares its parent's address space and reports the parent's whole
    RSS; counting it would count the same pages twice. ExecuTorch starts
    ``flatc`` this way once per XNNPACK partition, from a process holding
    gigabytes. A plain ``fork`` child (copied page tables) differs by a few
    pages and is still counted, so the figure errs high, never low.
    """
    import psutil

    try:
        pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return 0, 0
    stats = {pid: st for pid in pids if (st := _stat(pid)) is not None}
    rss = raw = 0
    for ppid, vsize, size in stats.values():
        raw += size
        parent = stats.get(ppid)
        if parent is None or (parent[1], parent[2]) != (vsize, size):
            rss += size
    return rss, raw
