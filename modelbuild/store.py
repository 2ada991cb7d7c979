"""The two-tier store: content-addressed blobs plus an action cache.

Layout of a cache directory::

    blobs/ab/cdef...      one read-only file per (content digest, executable bit);
                          "-x" suffix for executables; mtime fixed to 2000-01-01
    db/                   diskcache (SQLite): action records and stat records,
                          as JSON text; eviction off; pickle protocol pinned
    tmp/<session>/        scratch space of one live Store (same filesystem as
                          blobs/, so ingest is a rename); a session whose owner
                          died (kill -9) is removed by the next Store or gc
    locks/                per-action-key locks, per-output locks, session locks
    logs/<target>.log     step logs
    downloads/            the fetch step's download cache

A shared remote tier (remote.py, ``--remote-cache``) may sit behind it:
``store.remote`` is asked for the records this store lacks, their blobs are
pulled (verified) when materialized, and ``put_action`` uploads with
``--remote-upload``.

Crash safety: a blob is fsynced, then renamed into place (and its directory
fsynced); the action record is written last. A kill at any moment leaves
either a complete record with durable blobs, or no record (a miss), plus
perhaps some unreferenced blobs and scratch that gc removes.

Example::

    store = Store(project / "cache")
    out = store.scratch_dir("tiny")          # the step writes here
    ...
    manifest = store.ingest(out)              # blobs first
    store.put_action(ActionRecord(key, "export", "tiny", manifest, record,
                                  "1 file, 4 MB", 12.5, time.time()))
    store.materialize(store.get_action(key).manifest, project / "out" / "tiny")
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import stat as statmod
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from . import materialize as _mat
from .errors import CacheCorrupt, ModelbuildError, StoreError
from .hashing import PREFIX, Entry, Manifest, StatCache, hash_bytes, hash_file, iter_files
from .store_maintenance import StoreMaintenance

__all__ = ["Store", "ActionRecord", "RECORD_FORMAT"]

#: Version of the persisted action record; a record of another version is a miss.
RECORD_FORMAT = 1

_DIGEST = re.compile(r"^b3:[0-9a-f]{64}$")
#: The database key of an action record is this prefix + the action key.
ACTION_PREFIX = "action:"
_SESSION = re.compile(r"^s-\d+-[0-9a-f]{8}$")


@dataclass(frozen=True)
class ActionRecord:
    """What a finished action produced, stored under its key.

    ``key_record`` is the canonical record the key was hashed from (for
    ``explain``); ``created`` is informational and never part of a key.
    """

    key: str
    step: str
    target: str
    manifest: Manifest
    key_record: dict = field(default_factory=dict)
    summary: str = ""
    duration_s: float = 0.0
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict carrying :data:`RECORD_FORMAT`."""
        return {
            "format": RECORD_FORMAT,
            "key": self.key,
            "step": self.step,
            "target": self.target,
            "manifest": self.manifest.to_json(),
            "key_record": self.key_record,
            "summary": self.summary,
            "duration_s": self.duration_s,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ActionRecord":
        """Inverse of :meth:`to_json`; raises ValueError/KeyError/TypeError if malformed."""
        return cls(
            key=str(d["key"]), step=str(d["step"]), target=str(d["target"]),
            manifest=Manifest.from_json(d["manifest"]), key_record=dict(d["key_record"]),
            summary=str(d["summary"]), duration_s=float(d["duration_s"]),
            created=float(d["created"]),
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store(StoreMaintenance):
    """A cache directory: blobs, action records, stat records, scratch, locks, logs."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.blobs = self.root / "blobs"
        self.db = self.root / "db"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.logs = self.root / "logs"
        self.downloads = self.root / "downloads"
        try:
            for d in (self.blobs, self.db, self.tmp, self.locks, self.logs, self.downloads):
                d.mkdir(parents=True, exist_ok=True)
            # Small records only: JSON text stays inside SQLite (below 1 MiB);
            # no eviction ever drops a record; pickle (unused for str) is pinned.
            self.cache = diskcache.Cache(
                os.fspath(self.db), eviction_policy="none", statistics=False,
                disk_pickle_protocol=4, disk_min_file_size=1 << 20, cull_limit=0)
        except (OSError, diskcache.Timeout) as err:
            raise StoreError(f"cannot open the cache at {self.root}: {err}") from err
        self.stat_cache = StatCache(self.cache)
        #: key -> action record read ahead by :meth:`prefetch` (each used once)
        self._early: dict[str, ActionRecord] = {}
        self._blob_paths: dict[tuple[str, bool], Path] = {}
        self._session: Path | None = None
        self._session_fd: int | None = None
        self._session_pid: int | None = None
        self._session_guard = threading.Lock()  # engines may ask from several threads
        self._dev = os.stat(self.tmp).st_dev
        #: The shared remote tier (remote.RemoteCache), asked when this store has no record for a key;
        #: None: local only. Set by api.build / plan / cache_pull from --remote-cache or the project config.
        self.remote: Any = None
        self._clean_stale_tmp()

    # -- scratch ---------------------------------------------------------

    def _session_dir(self) -> Path:
        with self._session_guard:
            return self._open_session()

    def _open_session(self) -> Path:
        if self._session is None or self._session_pid != os.getpid():
            sid = f"s-{os.getpid()}-{os.urandom(4).hex()}"
            # Lock first, then create: a cleaner only looks at existing dirs,
            # so it can never see ours unlocked.
            fd = os.open(self.locks / f"{sid}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            (self.tmp / sid).mkdir()
            self._session, self._session_fd, self._session_pid = self.tmp / sid, fd, os.getpid()
        return self._session

    def _clean_stale_tmp(self) -> int:
        """Remove scratch sessions whose owner is gone; return how many."""
        removed = 0
        try:
            names = os.listdir(self.tmp)
        except OSError:
            return 0
        for name in names:
            path = self.tmp / name
            if path == self._session:
                continue
            if not _SESSION.match(name):
                _mat.remove_tree(path)  # nothing but sessions belongs in tmp/
                removed += 1
                continue
            lock = self.locks / f"{name}.lock"
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live process owns it
            try:
                _mat.remove_tree(path)
                lock.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        return removed

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh empty directory under tmp/, on the same filesystem as blobs/."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix)[:80] or "scratch"
        try:
            path = self._session_dir() / f"{safe}-{os.urandom(4).hex()}"
            path.mkdir()
        except OSError as err:
            raise StoreError(f"cannot create scratch space in {self.tmp}: {err.strerror}") from err
        return path

    # -- blobs -----------------------------------------------------------

    def blob_path(self, digest: str, executable: bool = False) -> Path:
        """Where the blob of this content and mode lives."""
        known = self._blob_paths.get((digest, executable))
        if known is not None:  # a build asks for each blob several times (prefetch, decision, restore)
            return known
        if not _DIGEST.match(digest):
            raise CacheCorrupt(f"not a valid blob digest: {digest!r}")
        hexd = digest[len(PREFIX):]
        path = self._blob_paths[(digest, executable)] = self.blobs / hexd[:2] / (hexd[2:] + ("-x" if executable else ""))
        return path

    def ingest(self, directory: Path, *, hashed: dict[str, str] | None = None) -> Manifest:
        """Move a finished step output into the store; return its manifest.

        Each file is made read-only, given the canonical mtime, hashed,
        fsynced and renamed into blobs/ (or dropped if an identical, verified
        blob is already there). ``directory`` is removed on success. On a
        write error (disk full, ...) raises StoreError; blobs already moved are
        complete and fsynced, and no action record refers to them.
        ``hashed`` maps relative paths to digests the caller has just computed
        of files only it can write (remote.py's verified downloads): not hashed twice.
        """
        directory = Path(directory)
        entries: list[Entry] = []
        dirs: set[Path] = set()
        try:
            # A step may leave read-only directories; moving files out needs
            # write permission on them (root does not, everyone else does).
            for here, _sub, _files in os.walk(directory):
                mode = stat.S_IMODE(os.lstat(here).st_mode)
                if mode & 0o700 != 0o700:
                    os.chmod(here, mode | 0o700)
        except OSError as err:
            raise StoreError(f"cannot store {directory}: {err.strerror or err}") from err
        for rel, item in iter_files(directory):
            try:
                entries.append(self._ingest_file(Path(item.path), rel, dirs, (hashed or {}).get(rel)))
            except OSError as err:
                raise StoreError(f"cannot store {rel}: {err.strerror or err}") from err
        try:
            for d in sorted(dirs):
                _fsync_dir(d)
            _mat.remove_tree(directory)
        except OSError as err:
            raise StoreError(f"cannot store {directory}: {err.strerror or err}") from err
        return Manifest(entries)

    def _ingest_file(self, src: Path, rel: str, dirs: set[Path], known: str | None = None) -> Entry:
        st0 = os.lstat(src)
        exe = bool(st0.st_mode & statmod.S_IXUSR)
        if st0.st_dev != self._dev:
            src = self._copy_in(src)  # rename cannot cross filesystems
        os.chmod(src, 0o555 if exe else 0o444)
        # The canonical mtime makes every later write visible in the stat.
        os.utime(src, ns=(_mat.CANONICAL_MTIME_NS, _mat.CANONICAL_MTIME_NS))
        fd = os.open(src, os.O_RDONLY)
        try:
            st1 = os.fstat(fd)
            digest = known or hash_file(src)
            os.fsync(fd)
        finally:
            os.close(fd)
        blob = self.blob_path(digest, exe)
        if not blob.parent.is_dir():
            blob.parent.mkdir(exist_ok=True)
            dirs.add(self.blobs)
        try:
            have = os.stat(blob)
        except FileNotFoundError:
            have = None
        if have is not None and self.stat_cache.lookup(have) == digest:
            os.unlink(src)  # dedupe: an identical, verified blob is in place
        else:
            # Replacing is atomic and safe even if another process is storing
            # the same content right now: both files hold the same bytes.
            os.replace(src, blob)
            dirs.add(blob.parent)
            now = os.stat(blob)
            if now.st_ino != st1.st_ino:
                # Another process stored the same content in the meantime and
                # its rename won; accept its file only if it hashes the same.
                if hash_file(blob) != digest:
                    raise StoreError(f"blob {blob.name} was replaced by different content while {rel} was being stored")
                now = os.stat(blob)
            elif (now.st_size, now.st_mtime_ns) != (st1.st_size, _mat.CANONICAL_MTIME_NS):
                raise StoreError(f"{rel} changed while it was being stored")
            self.stat_cache.remember(now, digest)
        return Entry(rel, exe, digest, st1.st_size)

    def _copy_in(self, src: Path) -> Path:
        import shutil

        dst = self._session_dir() / f"in-{os.urandom(8).hex()}"
        shutil.copyfile(src, dst)
        os.chmod(dst, os.stat(src).st_mode & 0o777)
        os.unlink(src)
        return dst

    # -- action records --------------------------------------------------

    def put_action(self, record: ActionRecord, *, upload: bool = True) -> None:
        """Store an action record; its blobs must already be in the store.

        With a remote tier that uploads (``--remote-upload``) and ``upload``,
        the result is then pushed there too, blobs first; a failed upload is a
        warning on the remote (the result stays here), not an error.
        """
        for e in record.manifest.entries:
            if not self.blob_path(e.digest, e.executable).is_file():
                raise StoreError(f"{record.target}: blob for {e.path} is not in the store")
        text = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))
        try:
            self.cache.set(ACTION_PREFIX + record.key, text)
        except Exception as err:  # OSError, sqlite3 errors, diskcache.Timeout
            raise StoreError(f"cannot write the action record of {record.target}: {err}") from err
        if upload and self.remote is not None and self.remote.upload:
            self._upload(record)

    def _upload(self, record: ActionRecord) -> None:
        from .remote import RemoteUnavailable

        if self.remote.down is not None and not self.remote.required:
            return  # already warned once: "remote cache ... unreachable ...; building locally"
        try:
            self.remote.push(record, self)
        except RemoteUnavailable as err:
            if self.remote.required:
                raise
            self.remote._warn(f"not uploaded: {record.target}: {err}")
        except ModelbuildError as err:
            self.remote._warn(f"not uploaded: {record.target}: {err}")

    def remote_action(self, key: str) -> ActionRecord | None:
        """The remote tier's record for ``key`` when this store has none (None: no remote, or not there).

        Its blobs are fetched, verified, when it is materialized (:meth:`materialize`).
        """
        return self.remote.find(key) if self.remote is not None else None

    def lacks(self, manifest: Manifest) -> int:
        """Bytes of ``manifest``'s blobs that this store does not hold intact (0: all here)."""
        from .remote import _have

        return sum(e.size for e in {(e.digest, e.executable): e for e in manifest.entries}.values() if not _have(self, e))

    def from_remote(self, key: str) -> str | None:
        """The (redacted) URL of the remote that ``key``'s result came from in this process, else None."""
        if self.remote is not None and self.remote.found(key):
            return self.remote.shown
        return None

    def prefetch(self, keys: list[str]) -> None:
        """Read ahead the action records of ``keys`` and their blobs' stat records (store_readahead.py)."""
        from .store_readahead import prefetch

        self._early.update(prefetch(self, keys))

    def get_action(self, key: str) -> ActionRecord | None:
        """The record stored under ``key``; None if absent or of an older format.

        Raises CacheCorrupt if the stored record cannot be read. A record
        read ahead by :meth:`prefetch` answers once, without a query.
        """
        if self._early:
            early = self._early.pop(key, None)
            if early is not None:
                return early
        text = self.cache.get(ACTION_PREFIX + key)
        if text is None:
            return None
        try:
            d = json.loads(text)
            if d.get("format") != RECORD_FORMAT:
                return None
            return ActionRecord.from_json(d)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CacheCorrupt(f"action record {key} is unreadable: {err}") from err

    def drop_action(self, key: str) -> None:
        """Delete the action record of ``key`` (its blobs stay until gc finds them unused)."""
        self.cache.delete(ACTION_PREFIX + key)

    def action_keys(self) -> list[str]:
        """Keys of all stored action records."""
        return [k[len(ACTION_PREFIX):] for k in self.cache.iterkeys() if isinstance(k, str) and k.startswith(ACTION_PREFIX)]

    def missing_or_corrupt(self, manifest: Manifest) -> list[str]:
        """Problems with the blobs of ``manifest``, one line each (empty: all good).

        Existence and size first, then the digest through the stat cache (a
        stat and a record read per blob in the steady state; the record is
        then trusted in memory, so the restore of ``out/`` that follows checks
        the same inodes without reading it again: materialize.py).
        """
        problems = []
        for e in manifest.entries:
            path = self.blob_path(e.digest, e.executable)
            try:
                st = os.stat(path)
            except OSError:
                problems.append(f"{e.path}: blob {_short(path)} is missing")
                continue
            if st.st_size != e.size:
                problems.append(f"{e.path}: blob {_short(path)} is corrupt (size {st.st_size}, expected {e.size})")
            elif self.stat_cache.digest(path, st=st) != e.digest:
                problems.append(f"{e.path}: blob {_short(path)} is corrupt (digest mismatch)")
        return problems

    # -- outputs ---------------------------------------------------------

    def materialize(self, manifest: Manifest, dest: Path, seen: dict[str, tuple[int, ...]] | None = None) -> str:
        """Make ``dest`` hold exactly ``manifest`` (see :mod:`modelbuild.materialize`).

        Returns "reflink", "hardlink" or "copy"; "unchanged" when ``dest``
        already held it; "empty" for a manifest without files. A manifest found
        on the remote tier is first pulled into this store (each blob verified;
        CacheCorrupt if one is missing or corrupt there).
        """
        if self.remote is not None:
            self.remote.settle(manifest, self)
        return _mat.materialize(manifest, dest, blob_path=self.blob_path,
                                stat_cache=self.stat_cache, lock_dir=self.locks, seen=seen)

    def sweep_scratch(self, parent: Path) -> int:
        """Remove what killed restores left in ``parent`` (out/): materialize.sweep_scratch."""
        return _mat.sweep_scratch(parent, self.locks)

    def remove_output(self, dest: Path) -> None:
        """Remove a materialized ``out/<target>/`` (for ``clean``) without
        invalidating the stat records of its blobs."""
        _mat.remove_materialized(dest, blob_path=self.blob_path, stat_cache=self.stat_cache)

    def lock(self, key: str):
        """An inter-process exclusive lock for one action key (a context manager).

        The second builder to reach a key waits here, then finds the record.
        A plain ``flock`` on the key's lock file, released by the kernel if the
        process dies (every target of every build takes one, so it must cost
        microseconds: the filelock package took milliseconds per target).
        """
        return _mat._locked(self.locks / f"key-{hash_bytes(key.encode())[3:35]}.lock")

    def log_path(self, target: str) -> Path:
        """logs/<target>.log (path separators in the name are replaced)."""
        return self.logs / (target.replace("/", "_").replace(os.sep, "_") + ".log")

    def _blob_digest(self, path: Path) -> tuple[str, bool] | None:
        name = path.name
        exe = name.endswith("-x")
        digest = PREFIX + path.parent.name + (name[:-2] if exe else name)
        return (digest, exe) if _DIGEST.match(digest) else None

    def close(self) -> None:
        """Close the database and release the scratch session (its directory, lock file and descriptor).

        Idempotent. The api closes every store it opens (``with ws.store() as
        store:``), so a process making many calls leaves nothing behind. The
        database connections of other threads (an engine's pool) close when
        those threads end.
        """
        with self._session_guard:
            try:
                self.cache.close()
            finally:
                fd, session = self._session_fd, self._session
                self._session, self._session_fd = None, None
                if fd is not None and self._session_pid == os.getpid():
                    try:
                        _mat.remove_tree(session)
                        (self.locks / f"{session.name}.lock").unlink(missing_ok=True)
                    finally:
                        os.close(fd)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(blob: Path) -> str:
    """A blob's name in messages: its fan-out folder and file name."""
    return f"{blob.parent.name}/{blob.name}"
