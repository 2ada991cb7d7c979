"""Benchmark of the storage layer: hashing a 2 GB file and restoring it into out/.

Run from the project root::

    nice -n 5 .venv/bin/python bench/bench_store.py [--size-gb 2] [--runs 7] [--keep]

It stores a 2 GB artifact in bench/_work/cache (reused between runs), then
prints one table:

- BLAKE3 ``hash_file`` of the 2 GB file, cold (page cache dropped for that file
  with ``posix_fadvise(DONTNEED)``) and warm, beside ``sha256sum`` and
  ``md5sum`` on the same file in the same run;
- the stat-cache-gated digest of the same file (what a no-op build pays);
- ``Store.materialize`` of the cached artifact into a fresh ``out/`` directory
  (median of ``--runs``) and the no-op restore into an up-to-date one.

``--keep`` keeps the 2 GB cache for the next run; by default it is deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelbuild.hashing import hash_file  # noqa: E402
from modelbuild.store import ActionRecord, Store  # noqa: E402

WORK = ROOT / "bench" / "_work"
KEY = "bench-store-2g"


def drop_page_cache(path: Path) -> None:
    """Evict one file's pages (clean pages only, which a read-only blob has)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache (mmap + mincore, Linux)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        try:
            if libc.mincore(addr, size, vec) != 0:
                return float("nan")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / pages


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and reaped children.

    On a shared, loaded machine wall time says little; CPU time per GB shows
    what each hash costs regardless of the neighbours.
    """
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_tool(tool: str, path: Path) -> None:
    subprocess.run([tool, str(path)], check=True, stdout=subprocess.DEVNULL)


def prepare(store: Store, size: int) -> ActionRecord:
    rec = store.get_action(KEY)
    if rec is not None and not store.missing_or_corrupt(rec.manifest) and rec.manifest.size == size:
        return rec
    scratch = store.scratch_dir("bench")
    chunk = os.urandom(64 << 20)
    with open(scratch / "model.bin", "wb") as f:
        for i in range(size // len(chunk)):
            # Vary each chunk a little so nothing downstream could dedupe it.
            f.write(i.to_bytes(8, "little") + chunk[8:])
        f.write(os.urandom(size % len(chunk)))
    t = time.perf_counter()
    manifest = store.ingest(scratch)
    ingest_s = time.perf_counter() - t
    rec = ActionRecord(KEY, "bench", "bench", manifest, {}, f"ingest {ingest_s:.2f}s", ingest_s, 0.0)
    store.put_action(rec)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the 2 GB cache for the next run")
    args = ap.parse_args()
    size = int(args.size_gb * (1 << 30))

    store = Store(WORK / "cache")
    rec = prepare(store, size)
    entry = rec.manifest.entries[0]
    blob = store.blob_path(entry.digest, entry.executable)
    gb = size / 1e9
    rows: list[tuple[str, str, float, str]] = []

    def hash_row(label: str, fn, cold: bool) -> None:
        if cold:
            drop_page_cache(blob)
        before = cached_fraction(blob)
        cpu0 = cpu_seconds()
        secs = timed(fn)
        cpu = cpu_seconds() - cpu0
        state = f"{'cold' if cold else 'warm'} ({before:.0%} cached)"
        rows.append((label, state, secs, f"{gb / secs:.2f} GB/s  ({cpu:.2f} CPU-s, {gb / cpu:.2f} GB/CPU-s)"))

    for cold in (True, False):
        if not cold:
            hash_file(blob)  # warm the page cache
        hash_row("hash_file (BLAKE3, mmap, all cores)", lambda: hash_file(blob), cold)
        hash_row("sha256sum", lambda: run_tool("sha256sum", blob), cold)
        hash_row("md5sum", lambda: run_tool("md5sum", blob), cold)
    assert hash_file(blob) == entry.digest

    gated = [timed(lambda: store.stat_cache.digest(blob)) for _ in range(args.runs)]
    rows.append(("stat-cache digest (no-op build)", "record valid", statistics.median(gated), "-"))

    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    restores, methods = [], set()
    for i in range(args.runs):
        dest = out / f"run{i}" / "bench"
        secs = timed(lambda: methods.add(store.materialize(rec.manifest, dest)))
        restores.append(secs)
        if i:
            store.remove_output(out / f"run{i - 1}" / "bench")
    rows.append((f"materialize 2 GB into fresh out/ ({'/'.join(sorted(methods))})",
                 f"median of {args.runs}", statistics.median(restores), f"max {max(restores) * 1e3:.1f} ms"))
    dest = out / f"run{args.runs - 1}" / "bench"
    noop = [timed(lambda: store.materialize(rec.manifest, dest)) for _ in range(args.runs)]
    rows.append(("materialize, output already up to date", f"median of {args.runs}", statistics.median(noop), "-"))
    shutil.rmtree(out, ignore_errors=True)

    fs = subprocess.run(["df", "--output=fstype", str(WORK)], capture_output=True, text=True)
    fstype = fs.stdout.split()[-1] if fs.returncode == 0 else "?"
    print(f"file: {size / (1 << 30):.2f} GiB ({gb:.2f} GB); cores: {os.cpu_count()}; "
          f"filesystem: {fstype}; load average: {os.getloadavg()[0]:.2f}")
    w = max(len(r[0]) for r in rows)
    print(f"{'operation':<{w}}  {'page cache / runs':<22}  {'time':>10}  rate")
    print("-" * (w + 50))
    for label, state, secs, rate in rows:
        t = f"{secs * 1e6:.0f} us" if secs < 1e-3 else f"{secs * 1e3:.1f} ms" if secs < 1 else f"{secs:.2f} s"
        print(f"{label:<{w}}  {state:<22}  {t:>10}  {rate}")

    store.close()
    if not args.keep:
        shutil.rmtree(WORK / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
