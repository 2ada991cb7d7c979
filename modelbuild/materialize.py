"""Materialization: turning a manifest of blobs into a directory ``out/<target>/``.

The tree is built beside the destination and swapped in atomically (Linux
``renameat2(RENAME_EXCHANGE)``; two renames elsewhere), so a reader never sees
a half-written output. Each file is placed by the cheapest safe method:

- ``reflink``: a copy-on-write clone (btrfs, XFS, APFS-like filesystems); edits
  to the output cannot reach the store.
- ``hardlink``: the blob's own inode. Blobs are read-only, so an edit fails
  instead of corrupting the store (root can still force one; the stat check
  below then reports the blob as corrupt).
- ``copy``: the last resort (another filesystem, link limits).

Whatever the method, output files are read-only (``0444``, ``0555`` if
executable) with the blob's fixed mtime: an output is the cache's answer, not
a scratch file, and a hard-linked one could not be written anyway. A reflink
or copy that is changed all the same (``chmod`` then a write) no longer
matches its digest or mode, so the next build's restore replaces it.

``MODELBUILD_MATERIALIZE=reflink|hardlink|copy`` (default ``reflink``) picks
the first method tried; a weaker one is still used where it fails (a forced
``reflink`` on ext4 gives hard links). It applies when files are placed: an
output already holding the right content is left as it is.

Every blob is verified against its digest through the stat cache first, and a
corrupt or missing blob raises :class:`~modelbuild.errors.CacheCorrupt` naming
it. Linking and unlinking change a blob's ctime; because that is our own
doing, the stat records of blobs verified just before are carried over
(see :class:`CtimeGuard`), so the next restore does not re-hash them. A
restore right after the build's decision checked the same blobs, of an
``out/<target>/`` that holds links of them, stats each output file once and
checks nothing twice (:func:`_held_as_verified`); any change to those inodes
since the decision moves their ctime and brings the full check back.

Example::

    method = materialize(manifest, project / "out" / "tiny",
                         blob_path=store.blob_path, stat_cache=store.stat_cache,
                         lock_dir=store.locks)
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat as statmod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import CacheCorrupt, StoreError
from .hashing import Entry, Manifest, StatCache, hash_bytes, iter_files, stat_signature

__all__ = ["materialize", "holds", "remove_materialized", "remove_tree", "preferred_method", "place_file", "CtimeGuard",
           "CANONICAL_MTIME_NS", "METHODS", "MODE_ENV"]

#: Every blob (and every copy made from one) carries this mtime:
#: 2000-01-01T00:00:00Z. A fixed mtime makes a blob's stat record immune to
#: the racy-file rule (any later write moves the mtime to "now") and makes
#: restored trees identical on every machine. 2000, not 1970, so that zip
#: (which cannot store dates before 1980) accepts the files.
CANONICAL_MTIME_NS = 946_684_800 * 1_000_000_000

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EBADF, errno.ENOSYS}
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES}
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

BlobPath = Callable[[str, bool], Path]

#: The placement methods, strongest first.
METHODS = ("reflink", "hardlink", "copy")
#: The environment variable that picks the first method tried.
MODE_ENV = "MODELBUILD_MATERIALIZE"


def preferred_method() -> str:
    """The first method to try: ``$MODELBUILD_MATERIALIZE``, else ``"reflink"``.

    Example: ``MODELBUILD_MATERIALIZE=copy modelbuild build`` gives outputs
    that share nothing with the cache (read-only copies), e.g. to delete the
    cache afterwards. Raises StoreError for a value that is no method.
    """
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if not value:
        return "reflink"
    if value not in METHODS:
        raise StoreError(f"{MODE_ENV}={value!r}: expected one of {', '.join(METHODS)}")
    return value


def remove_tree(path: Path) -> None:
    """Remove a file or tree, including read-only directories a step left."""

    def onerror(func, p, exc_info):  # make the parent writable once, then retry
        if isinstance(exc_info[1], FileNotFoundError):
            return
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o755)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o755)
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)  # onexc needs 3.12


class CtimeGuard:
    """Carries blob stat records across our own link/unlink operations.

    A link or unlink changes the inode's ctime, which invalidates its stat
    record. Around an operation of ours, remember which blobs had a valid
    record; afterwards, re-record those whose (dev, ino, size, mtime) are
    unchanged. Only the ctime moved, and only we moved it.
    """

    def __init__(self, stat_cache: StatCache, blob_path: BlobPath):
        self.stat_cache = stat_cache
        self.blob_path = blob_path
        self.items: dict[Path, tuple[os.stat_result, str]] = {}

    def add_blob(self, path: Path, st: os.stat_result, digest: str) -> None:
        """A blob verified just now."""
        self.items[path] = (st, digest)

    def add_tree(self, root: Path) -> None:
        """Files of a tree about to be removed that are links to blobs."""
        try:
            files = list(iter_files(root))
        except StoreError:
            return
        for _rel, item in files:
            st = item.stat(follow_symlinks=False)
            if st.st_nlink < 2:
                continue
            digest = self.stat_cache.lookup(st)
            if digest is None:
                continue
            try:
                blob = self.blob_path(digest, bool(st.st_mode & statmod.S_IXUSR))
            except CacheCorrupt:
                continue
            self.items.setdefault(blob, (st, digest))

    def refresh(self) -> None:
        """Re-record blobs whose content-relevant stat is unchanged."""
        with self.stat_cache.cache.transact():
            for path, (st, digest) in self.items.items():
                try:
                    now = os.stat(path)
                except OSError:
                    continue
                same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if same and now.st_ctime_ns != st.st_ctime_ns:
                    self.stat_cache.remember(now, digest)


def _verify_blobs(manifest: Manifest, blob_path: BlobPath, stat_cache: StatCache,
                  guard: CtimeGuard) -> dict[str, tuple[Path, os.stat_result]]:
    blobs: dict[str, tuple[Path, os.stat_result]] = {}
    for e in manifest.entries:
        path = blob_path(e.digest, e.executable)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CacheCorrupt(f"blob {path.name} ({e.path}) is missing from the store") from None
        except OSError as err:
            raise StoreError(f"cannot read blob {path}: {err.strerror}") from err
        if st.st_size != e.size:
            found = f"a file of {st.st_size} bytes"
        else:  # the stat just taken: hashed only if its record does not match
            found = stat_cache.digest(path, st=st)
        if found != e.digest:
            raise CacheCorrupt(
                f"blob {path.parent.name}/{path.name} ({e.path}) is corrupt: "
                f"expected {e.digest}, found {found}")
        blobs[e.path] = (path, st)
        guard.add_blob(path, st, e.digest)
    return blobs


def holds(dest: Path, manifest: Manifest, stat_cache: StatCache,
          blobs: dict[str, tuple[Path, os.stat_result]] | None = None) -> bool:
    """Does ``dest`` already hold exactly this manifest (no more, no less)?

    With ``blobs`` (the verified store blobs of the manifest), a file that is
    the blob itself (same inode) needs no further look. Without (a result whose
    blobs are not in the store, left on the remote cache by a lazy build), the
    files are judged by themselves: an ``out/<target>/`` from an earlier build
    is kept if it is this result, read-only as placed, and removed otherwise.
    Digests come through the stat cache (hashed once when unknown). A file made
    writable (a reflink or copy someone edited) is never "held": it is placed
    again, read-only.
    """
    found = _listed(Path(dest), manifest)
    if found is None:
        return False
    for e in manifest.entries:
        st = found[e.path]
        if blobs is not None:
            blob_st = blobs[e.path][1]
            if (st.st_dev, st.st_ino) == (blob_st.st_dev, blob_st.st_ino):
                continue  # the verified blob itself
        if st.st_mode & _WRITABLE:
            return False
        try:  # the stat just taken (a regular file: lstat is stat), hashed only if unknown
            if stat_cache.digest(Path(dest) / e.path, st=st) != e.digest:
                return False
        except (OSError, StoreError):
            return False
    return True


def _listed(dest: Path, manifest: Manifest, keep: object = None) -> dict[str, os.stat_result] | None:
    """The lstat of each file of ``dest`` if it is a directory (not a link) holding
    exactly the manifest's paths, each of the entry's size and executable bit; else None.
    With ``keep``, the directory's own lstat is kept too, under ``""``."""
    try:
        top = os.lstat(dest)
        if not statmod.S_ISDIR(top.st_mode):
            return None
        found = {rel: item.stat(follow_symlinks=False) for rel, item in iter_files(dest)}
    except (OSError, StoreError):
        return None
    if len(found) != len(manifest.entries):
        return None
    for e in manifest.entries:
        st = found.get(e.path)
        if st is None or bool(st.st_mode & statmod.S_IXUSR) != e.executable or st.st_size != e.size:
            return None
    if keep is not None:
        found[""] = top
    return found


def _held_as_verified(dest: Path, manifest: Manifest, stat_cache: StatCache,
                      seen: dict[str, tuple[int, ...]] | None = None) -> bool:
    """Does ``dest`` hold the manifest as files this process has verified, unmoved since?

    A restore right after the decision: the decision checked each blob (a
    stat and its stat record), and ``out/<target>/`` holds hard links of those
    very inodes. Each file's full stat signature (inode, size, mtime, ctime)
    matching the one trusted a moment ago means it is still that verified
    content, so the blobs need not be checked again. Any write or ``chmod``
    (to the blob or the link: one inode) moves the ctime, and then the full
    check (:func:`_verify_blobs`, then :func:`holds`) runs and names a corrupt
    blob. Memory only: a file not verified in this process takes the full check.
    """
    found = _listed(dest, manifest, seen)
    if found is None:
        return False
    for e in manifest.entries:
        st = found[e.path]
        if st.st_mode & _WRITABLE or stat_cache.trusted(st) != e.digest:
            return False
    if seen is not None and all("/" not in e.path for e in manifest.entries):
        # What was just checked, for the no-op fast path's record (fastpath.py),
        # which then need not walk and stat this tree again; not for nested
        # trees, whose directories _listed does not stat.
        seen[os.fspath(dest)] = stat_signature(found[""])
        seen.update((os.path.join(dest, e.path), stat_signature(found[e.path])) for e in manifest.entries)
    return True


def place_file(src: Path, dst: Path, method: str = "reflink", *, hardlink: bool = True) -> str:
    """Put ``src``'s content at ``dst`` (which must not exist) by ``method`` or a weaker one.

    The one place that decides how a file is placed without copying its bytes,
    used for ``out/`` and by steps that pass a file on (``fetch`` of a local
    directory, ``package``). Order: ``reflink`` (a copy-on-write clone: a
    private inode, so later edits of either side cannot reach the other),
    ``hardlink`` (the same inode: only for a file nobody edits in place, such
    as a read-only blob; ``hardlink=False`` skips it), ``copy``. Returns the
    method that worked. Modes and mtimes are left as the method gives them.

    Example: ``place_file(user_file, out / "model.safetensors", hardlink=False)``
    clones on btrfs/XFS and copies on ext4.
    """
    if method not in METHODS:
        raise StoreError(f"unknown placement method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "reflink":
        try:
            with open(src, "rb") as source, open(dst, "wb") as out:
                fcntl.ioctl(out.fileno(), FICLONE, source.fileno())
        except OSError as err:
            dst.unlink(missing_ok=True)
            if err.errno not in _NO_REFLINK:
                raise
            method = "hardlink"
        else:
            return "reflink"
    if method == "hardlink" and hardlink:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as err:
            if err.errno not in _NO_LINK:
                raise
    shutil.copyfile(src, dst)
    return "copy"


def _place(blob: Path, dst: Path, e: Entry, method: str, stat_cache: StatCache) -> str:
    """Put one blob at ``dst`` by ``method`` or a weaker one; return what worked."""
    got = place_file(blob, dst, method)
    if got != "hardlink":
        _finish_copy(dst, e, stat_cache)
    return got


_WRITABLE = statmod.S_IWUSR | statmod.S_IWGRP | statmod.S_IWOTH


def _finish_copy(dst: Path, e: Entry, stat_cache: StatCache) -> None:
    # Read-only like a hard-linked blob, so all three methods give the same
    # tree; the blob's mtime keeps the copy's stat record from being racy.
    os.utime(dst, ns=(CANONICAL_MTIME_NS, CANONICAL_MTIME_NS))
    os.chmod(dst, 0o555 if e.executable else 0o444)
    stat_cache.remember(os.stat(dst), e.digest)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False if unsupported."""
    import ctypes  # only when an existing out/<target>/ is replaced: not on a no-op's path

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _locked(path: Path):
    """An exclusive flock held for the block (released by the kernel on a kill)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_RANK = {"reflink": 0, "hardlink": 1, "copy": 2}

#: directory -> (its mtime_ns, names of the scratch trees in it), so that
#: restoring N targets into out/ lists out/ once, not N times (N^2 entries).
_SCRATCH: dict[str, tuple[int, list[str]]] = {}
#: A scratch tree's name: ``.<dest>.mb-<pid>-<8 hex>`` (a restore being written) or
#: ``.<dest>.mb-old-<8 hex>`` (the tree it replaced, being removed).
_SCRATCH_NAME = re.compile(r"\.(?P<dest>.+)\.mb-(?:\d+|old)-[0-9a-f]{8}")


def _scratch_names(parent: str) -> list[str]:
    """Names in ``parent`` that may be scratch trees.

    Creating or removing an entry moves the directory's mtime, so a listing is
    reused while the mtime is unchanged. (A tree that appeared within the same
    clock tick as the listing is found once the directory changes again; until
    then it is a harmless hidden directory.)
    """
    mtime = os.stat(parent).st_mtime_ns
    known = _SCRATCH.get(parent)
    if known is None or known[0] != mtime:
        with os.scandir(parent) as entries:
            known = _SCRATCH[parent] = (mtime, [e.name for e in entries if ".mb-" in e.name])
    return known[1]


def _scratch_siblings(dest: Path) -> list[Path]:
    """Scratch trees (``.<name>.mb-*``) of ``dest`` left in its directory by a kill."""
    prefix = f".{dest.name}.mb-"
    return [dest.parent / name for name in _scratch_names(os.fspath(dest.parent)) if name.startswith(prefix)]


def _out_lock(lock_dir: Path, dest: Path) -> Path:
    """The lock file held while ``dest`` (absolute) is written or its scratch trees removed."""
    return Path(lock_dir) / f"out-{hash_bytes(os.fsencode(dest))[3:35]}.lock"


def sweep_scratch(parent: Path, lock_dir: Path) -> int:
    """Remove the scratch trees that killed builds left in ``parent`` (out/); how many were removed.

    :func:`materialize` removes the scratch of the tree it writes; this is for
    the trees a build does not write (a target skipped after a failure keeps
    its old output, and must not keep a half-written sibling beside it). Each
    is removed under its destination's lock, so a restore that a concurrent
    build is writing is never touched: a scratch tree still there once its
    lock is held is a leftover. One that cannot be removed is left to the next
    restore of its target.
    """
    parent = Path(os.path.abspath(parent))
    try:
        names = _scratch_names(os.fspath(parent))
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise StoreError(f"cannot list {parent}: {err.strerror}") from err
    removed = 0
    for name in list(names):
        match = _SCRATCH_NAME.fullmatch(name)
        if match is None:
            continue
        with _locked(_out_lock(lock_dir, parent / match["dest"])):
            path = parent / name
            if not os.path.lexists(path):
                continue  # renamed into place or removed by its own restore
            try:
                remove_tree(path)
            except OSError:
                continue
            removed += 1
    return removed


def materialize(manifest: Manifest, dest: Path, *, blob_path: BlobPath, stat_cache: StatCache,
                lock_dir: Path, prefer: str | None = None, seen: dict[str, tuple[int, ...]] | None = None) -> str:
    """Make ``dest`` hold exactly ``manifest``; return the method used.

    ``prefer`` is the first method tried (default: :func:`preferred_method`).
    Returns ``"reflink"``, ``"hardlink"`` or ``"copy"`` (the weakest method any
    file needed), ``"unchanged"`` if ``dest`` already held this manifest, or
    ``"empty"`` for a manifest without files. Raises CacheCorrupt naming a
    missing or corrupt blob, StoreError if the tree cannot be written (nothing
    half-built is left behind) or ``prefer`` is no method. ``seen``, when
    given and the tree was already in place, receives the stat signature of
    ``dest`` and of each of its files as checked (see :func:`_held_as_verified`).
    """
    prefer = preferred_method() if prefer is None else prefer
    if prefer not in METHODS:
        raise StoreError(f"unknown materialization method {prefer!r}: expected one of {', '.join(METHODS)}")
    dest = Path(os.path.abspath(dest))
    with _locked(_out_lock(lock_dir, dest)):
        # Under the lock, any sibling scratch tree is left over from a kill.
        try:
            stale = _scratch_siblings(dest)
        except FileNotFoundError:  # no out/ yet (created here, not stat'ed on every restore)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create {dest.parent}: {err.strerror}") from err
            stale = []
        except OSError as err:
            raise StoreError(f"cannot list {dest.parent}: {err.strerror}") from err
        for path in stale:
            remove_tree(path)
        if not stale and _held_as_verified(dest, manifest, stat_cache, seen):
            return "unchanged"
        guard = CtimeGuard(stat_cache, blob_path)
        blobs = _verify_blobs(manifest, blob_path, stat_cache, guard)
        if holds(dest, manifest, stat_cache, blobs):
            return "unchanged"
        tmp = dest.parent / f".{dest.name}.mb-{os.getpid()}-{os.urandom(4).hex()}"
        used = "empty"
        try:
            tmp.mkdir()
            method = prefer
            for e in manifest.entries:
                target = tmp / e.path
                target.parent.mkdir(parents=True, exist_ok=True)
                got = _place(blobs[e.path][0], target, e, method, stat_cache)
                method = got if _RANK[got] > _RANK[method] else method
                used = got if used == "empty" or _RANK[got] > _RANK[used] else used
            if dest.exists() or dest.is_symlink():
                guard.add_tree(dest)
                if not _exchange(tmp, dest):
                    old = dest.parent / f".{dest.name}.mb-old-{os.urandom(4).hex()}"
                    os.rename(dest, old)
                    os.rename(tmp, dest)
                    tmp = old
                try:
                    remove_tree(tmp)  # the old tree; dest is already complete
                except OSError:
                    pass  # a leftover sibling is removed by the next restore
            else:
                os.rename(tmp, dest)
        except OSError as err:
            remove_tree(tmp)
            raise StoreError(f"cannot materialize {dest}: {err.strerror or err}") from err
        finally:
            guard.refresh()
        return used


def remove_materialized(dest: Path, *, blob_path: BlobPath, stat_cache: StatCache) -> None:
    """Remove a materialized tree, keeping its blobs' stat records valid
    (``modelbuild clean`` uses this; a plain ``rm -rf`` costs one re-hash)."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    guard = CtimeGuard(stat_cache, blob_path)
    if dest.is_dir() and not dest.is_symlink():
        guard.add_tree(dest)
    try:
        remove_tree(dest)
    except OSError as err:
        raise StoreError(f"cannot remove {dest}: {err.strerror or err}") from err
    finally:
        guard.refresh()
