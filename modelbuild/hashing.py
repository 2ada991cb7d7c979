"""Content hashing: BLAKE3 digests of bytes, files and directory trees.

Digests are strings ``"b3:<64 hex>"``. A directory tree hashes as a
:class:`Manifest`: the sorted list of its files with their relative path,
executable bit, size and content digest; the manifest's digest is the hash of
a canonical JSON form of that list. Empty directories are not recorded (as in
git): an artifact is the set of its files.

A :class:`StatCache` remembers a file's digest against its stat signature so a
no-op build costs a stat and a database read per file instead of a re-hash.

Example::

    >>> hash_bytes(b"")
    'b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'
    >>> m = Manifest([Entry("b.txt", False, hash_bytes(b"b"), 1),
    ...               Entry("a.txt", False, hash_bytes(b"a"), 1)])
    >>> [e.path for e in m.entries]
    ['a.txt', 'b.txt']
    >>> Manifest.from_json(m.to_json()) == m
    True
"""

from __future__ import annotations

import json
import os
import stat as statmod
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import blake3

from .errors import StoreError

if TYPE_CHECKING:  # diskcache is imported lazily; a StatCache may open its own
    import diskcache

__all__ = [
    "PREFIX",
    "hash_bytes",
    "hash_file",
    "Entry",
    "Manifest",
    "StatCache",
    "manifest_of",
    "digest_path",
    "stat_signature",
    "RACY_MARGIN_NS",
]

#: Every digest starts with the algorithm's name, so a later change of
#: algorithm can never be mistaken for a content change.
PREFIX = "b3:"

#: Files at least this big are hashed through mmap on all cores; below it a
#: plain read on one thread is faster (no mapping or thread start-up cost).
MMAP_THRESHOLD = 1 << 20

#: Chunk size of the read fallback when a file cannot be memory-mapped.
READ_CHUNK = 16 << 20

#: The racy-file margin. A record whose file's mtime is within this much of
#: the moment hashing started may hide a later write that landed in the same
#: timestamp granule, so such files are hashed again. 2 s covers the coarsest
#: timestamps in common use (FAT: 2 s; ext3, HFS+: 1 s; ext4/XFS/btrfs stamp
#: with the kernel's coarse clock, a few ms) plus small NFS clock skew. The cost
#: is one extra hash of a file written less than 2 s before it was recorded.
RACY_MARGIN_NS = 2_000_000_000

#: Version of the manifest's canonical form; part of every manifest digest.
MANIFEST_FORMAT = 1

#: Version of a stat record; a record of another version is ignored (re-hash).
STAT_FORMAT = 1


def hash_bytes(data: bytes) -> str:
    """BLAKE3 digest of ``data`` as ``"b3:<64 hex>"``."""
    return PREFIX + blake3.blake3(data).hexdigest()


def hash_file(path: Path) -> str:
    """BLAKE3 digest of a file's content.

    Large files are memory-mapped and hashed on all cores (BLAKE3's tree
    mode), so the page cache and the disk are the limit, not one core.
    Raises :class:`StoreError` naming the path if it cannot be read.
    """
    try:
        size = os.stat(path).st_size
        if size < MMAP_THRESHOLD:
            with open(path, "rb") as f:
                return PREFIX + blake3.blake3(f.read()).hexdigest()
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        try:
            hasher.update_mmap(os.fspath(path))
        except OSError:
            # Some filesystems (FUSE, procfs-like) refuse mmap: read in chunks.
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    hasher.update(chunk)
        return PREFIX + hasher.hexdigest()
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror or err}") from err


def _check_rel_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a normalized relative posix path: {path!r}")


@dataclass(frozen=True)
class Entry:
    """One file of a manifest: posix path relative to the tree's root."""

    path: str
    executable: bool
    digest: str
    size: int

    def __post_init__(self) -> None:
        _check_rel_path(self.path)
        if not self.digest.startswith(PREFIX):
            raise ValueError(f"{self.path}: digest {self.digest!r} is not a {PREFIX} digest")
        if self.size < 0:
            raise ValueError(f"{self.path}: negative size")


@dataclass(frozen=True)
class Manifest:
    """The files of a directory tree, sorted by path; a frozen value.

    ``Manifest(entries)`` accepts entries in any order and sorts them, so two
    listings of the same tree are equal and have the same :attr:`digest`.
    """

    entries: tuple[Entry, ...]

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        ordered = tuple(sorted(entries, key=lambda e: e.path))
        for a, b in zip(ordered, ordered[1:]):
            if a.path == b.path:
                raise ValueError(f"duplicate path in manifest: {a.path}")
        # A path that is both a file and a directory cannot be materialized.
        files = {e.path for e in ordered}
        for e in ordered:
            head = e.path.rpartition("/")[0]
            while head:
                if head in files:
                    raise ValueError(f"{head} is both a file and a directory in the manifest")
                head = head.rpartition("/")[0]
        object.__setattr__(self, "entries", ordered)

    def canonical(self) -> bytes:
        """The exact bytes :attr:`digest` hashes (versioned, compact, sorted)."""
        rows = [[e.path, "x" if e.executable else "-", e.size, e.digest] for e in self.entries]
        doc = {"entries": rows, "manifest": MANIFEST_FORMAT}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @cached_property
    def digest(self) -> str:
        """Digest of the whole tree: hash of :meth:`canonical`."""
        return hash_bytes(self.canonical())

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_json` reads it back."""
        return {
            "format": MANIFEST_FORMAT,
            "entries": [
                {"path": e.path, "executable": e.executable, "digest": e.digest, "size": e.size}
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        """Inverse of :meth:`to_json`; raises ValueError on anything malformed."""
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format: {d.get('format') if isinstance(d, dict) else d!r}")
        try:
            return cls(
                Entry(str(e["path"]), bool(e["executable"]), str(e["digest"]), int(e["size"]))
                for e in d["entries"]
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed manifest: {err}") from err


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """A file's stat signature: (device, inode, size, mtime_ns, ctime_ns).

    The no-op fast path (fastpath.py) and the code fingerprint
    (fingerprint.py) use the same fields in the same order.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: A collector of what a build read: path -> the stat signature taken *before*
#: its content was read (for a directory: before it was listed).
Seen = dict[str, tuple[int, ...]]

#: How many times a file that changes while it is hashed is hashed again
#: before its digest is returned without being remembered.
_HASH_ATTEMPTS = 3


class StatCache:
    """File digests remembered against (dev, ino, size, mtime_ns, ctime_ns).

    Records are keyed by (device, inode), so every hard link of a file (a blob
    and its materialized copies in ``out/``) shares one record. A record is
    trusted only if the whole signature matches and the file is not *racy*:
    its mtime is older than the moment hashing started minus
    :data:`RACY_MARGIN_NS`. A racy file is hashed again (and re-recorded, so
    it stops being racy once it is old enough).

    A digest is remembered only for the signature of the content that was
    hashed: the file is stat'ed before and after hashing, and a file that
    changed meanwhile is hashed again (its digest is never recorded against a
    signature it did not have when read).

    ``cache`` is a ``diskcache.Cache`` (the store passes its own, so the stat
    cache shares the store's SQLite database) or a directory path, for which a
    Cache is opened with eviction off. Values are JSON text.

    Example::

        sc = StatCache(tmp_path / "stat")
        d = sc.digest(Path("model.bin"))   # hashes
        d = sc.digest(Path("model.bin"))   # one stat + one read (if not racy)
    """

    KEY_PREFIX = "stat:"

    def __init__(self, cache: "diskcache.Cache | Path | str", margin_ns: int = RACY_MARGIN_NS):
        if isinstance(cache, (str, os.PathLike)):
            import diskcache

            cache = diskcache.Cache(os.fspath(cache), eviction_policy="none", statistics=False)
        self.cache = cache
        self.margin_ns = margin_ns
        # (dev, ino) -> (signature, digest) of records this process found
        # trusted: a build looks each blob up several times (the action
        # lookup, then the restore). A trusted record stays trusted while the
        # signature matches (the racy rule only gets easier with time).
        self._trusted: dict[tuple[int, int], tuple[list[int], str]] = {}
        # (dev, ino) -> record text read ahead in one query (:meth:`prime`),
        # used once; checked exactly like a record read now.
        self._primed: dict[tuple[int, int], str] = {}

    def record_key(self, st: os.stat_result) -> str:
        """The cache key of the stat record of the file whose stat is ``st``."""
        return f"{self.KEY_PREFIX}{st.st_dev}:{st.st_ino}"

    def lookup(self, st: os.stat_result) -> str | None:
        """The remembered digest if the record matches ``st`` and is not racy."""
        sig = _signature(st)
        known = self._trusted.get((st.st_dev, st.st_ino))
        if known is not None and known[0] == sig:
            return known[1]
        raw = self._primed.pop((st.st_dev, st.st_ino), None) if self._primed else None
        if raw is not None:
            found = self._check(raw, st)
            if found is not None:
                return found
            # A record read ahead that does not fit the file now (it changed,
            # or someone re-recorded it since): read the current record.
        raw = self.cache.get(self.record_key(st))
        if raw is None:
            return None
        return self._check(raw, st)

    def _check(self, raw: str, st: os.stat_result) -> str | None:
        try:
            rec = json.loads(raw)
            if rec.get("v") != STAT_FORMAT:
                return None
            sig, recorded_ns, digest = rec["sig"], rec["t"], rec["digest"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if sig != _signature(st):
            return None
        if st.st_mtime_ns >= recorded_ns - self.margin_ns:
            return None  # racy: a same-granule write after hashing would be invisible
        self._trusted[(st.st_dev, st.st_ino)] = (sig, digest)
        return digest

    def prime(self, records: dict[tuple[int, int], str]) -> None:
        """Records read ahead for these inodes (store.py reads those of the blobs
        a build will check in one query). Each is used at most once, and only
        if it matches the file's stat when looked up, as a record read then
        would have to; otherwise the database is asked as usual."""
        self._primed.update(records)

    def trusted(self, st: os.stat_result) -> str | None:
        """The digest this process already trusted for exactly this signature, else None.

        Memory only (no database read): a file (or a hard link of it) whose
        record was checked earlier in this build and whose stat has not moved
        since (materialize.py's restore of a blob verified by the decision).
        """
        known = self._trusted.get((st.st_dev, st.st_ino))
        return known[1] if known is not None and known[0] == _signature(st) else None

    def remember(self, st: os.stat_result, digest: str, recorded_ns: int | None = None) -> None:
        """Record ``digest`` for the file whose stat is ``st``.

        ``recorded_ns`` must be a time taken *before* the content was read
        (default: now, right for a file whose content is known not to have
        changed since ``st``, e.g. a blob with a fixed mtime).
        """
        rec = {"v": STAT_FORMAT, "sig": _signature(st), "t": time.time_ns() if recorded_ns is None else recorded_ns,
               "digest": digest}
        self._trusted.pop((st.st_dev, st.st_ino), None)  # the next lookup applies the racy rule to it
        self._primed.pop((st.st_dev, st.st_ino), None)
        self.cache.set(self.record_key(st), json.dumps(rec, separators=(",", ":")))

    def forget(self, st: os.stat_result) -> None:
        """Drop any record for this file's inode."""
        self._trusted.pop((st.st_dev, st.st_ino), None)
        self._primed.pop((st.st_dev, st.st_ino), None)
        self.cache.delete(self.record_key(st))

    def digest(self, path: Path, seen: Seen | None = None, st: os.stat_result | None = None) -> str:
        """Digest of the file at ``path``, re-hashed only when needed.

        ``seen`` (if given) receives the stat signature of the content the
        digest is of, taken before it was read. ``st``: a stat of ``path``
        the caller has just taken (not taken again; a hash still compares it
        with a stat taken after reading).
        """
        return self.digest_stat(path, seen, st)[0]

    def digest_stat(self, path: Path, seen: Seen | None = None,
                    st: os.stat_result | None = None) -> tuple[str, os.stat_result]:
        """``(digest, stat)``: the digest, and the stat taken just before the
        content it is the digest of was read (see :meth:`digest`)."""
        if st is None:
            st = _stat(path)
        found = self.lookup(st)
        if found is None:
            for attempt in range(_HASH_ATTEMPTS):
                started = time.time_ns()
                found = hash_file(path)
                after = _stat(path)
                if _signature(after) == _signature(st):
                    # Only the signature the hashed content had is remembered.
                    self.remember(st, found, recorded_ns=started)
                    break
                if attempt + 1 < _HASH_ATTEMPTS:
                    st = after  # changed while hashed: hash what is there now
                # else: keep the signature from before the last read, which the
                # file no longer has, so whoever checks ``seen`` sees a change.
        if seen is not None:
            seen[os.fspath(path)] = stat_signature(st)
        return found, st


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror or err}") from err


def _walk(root: Path, rel: str = "", follow: Callable[[Path], Path] | None = None,
          seen: Seen | None = None) -> Iterable[tuple[str, os.DirEntry]]:
    folder = root / rel if rel else root
    try:
        if seen is not None:  # before listing: a file added later moves the directory's mtime
            seen[os.fspath(folder)] = stat_signature(os.stat(folder))
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda d: d.name)
    except OSError as err:
        raise StoreError(f"cannot list {folder}: {err.strerror or err}") from err
    for item in items:
        path = f"{rel}/{item.name}" if rel else item.name
        if item.is_symlink():
            if follow is None:
                raise StoreError(f"{root / path}: symbolic links are not allowed in an artifact")
            # A source tree's in-tree link (links.py): counted by its content.
            if follow(root / path).is_dir():
                yield from _walk(root, path, follow, seen)
                continue
        if item.is_dir(follow_symlinks=follow is not None):
            yield from _walk(root, path, follow, seen)
        elif item.is_file(follow_symlinks=follow is not None):
            yield path, item
        else:
            raise StoreError(f"{root / path}: special files (fifo, socket, device) are not allowed in an artifact")


def iter_files(root: Path) -> Iterable[tuple[str, os.DirEntry]]:
    """Yield ``(relative posix path, DirEntry)`` of every regular file under
    ``root``; raises :class:`StoreError` naming a symlink or special file."""
    return _walk(Path(root))


def _file_digest(path: Path, stat_cache: StatCache | None, seen: Seen | None) -> tuple[str, os.stat_result]:
    if stat_cache is not None:
        return stat_cache.digest_stat(path, seen)
    st = _stat(path)
    digest = hash_file(path)
    if seen is not None:
        seen[os.fspath(path)] = stat_signature(st)
    return digest, st


def manifest_of(root: Path, stat_cache: StatCache | None = None, follow: Callable[[Path], Path] | None = None,
                seen: Seen | None = None) -> Manifest:
    """The manifest of the directory tree at ``root``.

    Symlinks and special files are refused with a :class:`StoreError` naming
    the path: an artifact must be self-contained regular files. ``seen``
    receives the signature of every directory listed and file read.
    """
    entries = []
    for rel, item in _walk(Path(root), "", follow, seen):
        # Size and mode from the stat the digest's content had, not a later one.
        digest, st = _file_digest(Path(item.path), stat_cache, seen)
        entries.append(Entry(rel, bool(st.st_mode & statmod.S_IXUSR), digest, st.st_size))
    return Manifest(entries)


def digest_path(path: Path, stat_cache: StatCache | None = None, seen: Seen | None = None) -> str:
    """A file's content digest, or a directory's manifest digest.

    ``seen`` (path -> stat signature) receives the signature of everything
    read, taken before it was read: the engine compares them after the step
    ran, and the no-op fast path records them, so a file changed after it was
    hashed is never taken for what was hashed.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror or err}") from err
    from .links import follower  # sources may hold in-tree links (a Hub cache snapshot)

    if statmod.S_ISDIR(st.st_mode):
        return manifest_of(path, stat_cache, follower(path), seen).digest
    if statmod.S_ISLNK(st.st_mode):
        # A source named in a recipe may be a link; what counts is its content.
        path = path.resolve()
        if path.is_dir():
            return manifest_of(path, stat_cache, follower(path), seen).digest
    return _file_digest(path, stat_cache, seen)[0]
