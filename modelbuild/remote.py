"""The shared remote tier of the store, through fsspec (``s3://``, ``gs://``, ``file://``, ...).

A team's CI uploads what it builds; a laptop with a fresh clone then gets the
artifacts by content instead of rebuilding them. The remote holds the same
two tiers as the local store, under a versioned prefix::

    <url>/v1/blobs/ab/cdef...[-x]     one object per (content digest, executable bit)
    <url>/v1/ac/ab/<key>.json         the action record stored under its key (store.ActionRecord)

Reading (``--remote-cache URL``): the engine asks the local store first; when
it has no record for a key, :meth:`RemoteCache.find` fetches the remote's. A
record is only accepted if its ``key_record`` hashes to the key it is stored
under, so a record copied to the wrong name, or one whose key fields were
edited, is rejected. Its blobs are fetched only when the result is restored
(``Store.materialize``), each one hashed on arrival: a blob whose digest or
size does not match is deleted, reported and never used (the step is rebuilt).
Then the record is written to the local store, and the next build is a local
hit.

Writing (``--remote-upload``): :meth:`RemoteCache.push` uploads the blobs
first and the record last, so a reader never sees a record whose blobs are
missing. It is idempotent (a blob of the right size, or a record, that is
already there is not sent again) and atomic where the filesystem allows: an
object store's PUT makes an object appear whole or not at all; elsewhere
(``file://``, sftp, ...) each file is written under a temporary name and
renamed into place.

What the remote is, honestly: a record uploaded by one machine is used by
another only if the action key matches, and the key holds the step's code,
parameters, input digests and toolchain versions. A laptop with another
torch than CI's computes other keys and rebuilds. Integrity is checked
(digests); authenticity is the bucket's access control: whoever can write the
bucket decides what a key produced.

Faults: a remote that cannot be reached or answers with errors degrades to a
miss with a warning (:attr:`RemoteCache.warnings`; after the first such error
the remote is not asked again in this process, so a dead endpoint costs one
timeout, not one per target). ``required=True`` makes it an error
(:class:`RemoteUnavailable`). URLs are shown without user info or query
strings, and storage options (where credentials could be) are never shown;
nothing of the remote goes into keys or records.

Example::

    remote = RemoteCache("s3://team-bucket/modelbuild", upload=True)
    with Store(root / "cache") as store:
        store.remote = remote                  # the engine now falls back to it
        ...
    remote.push(record, store)                 # what `modelbuild cache push` does per target
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import CacheCorrupt, ModelbuildError, one_line

if TYPE_CHECKING:
    from .hashing import Entry, Manifest
    from .store import ActionRecord, Store

__all__ = ["RemoteCache", "RemoteUnavailable", "RemoteStats", "LAYOUT", "open_remote", "redact"]

#: The remote layout's version: a new layout goes under a new prefix, never over the old one.
LAYOUT = "v1"

#: Filesystems whose single PUT is atomic (an object appears whole or not at all).
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
_DIGEST = re.compile(r"^b3:[0-9a-f]{64}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")


class RemoteUnavailable(ModelbuildError):
    """The remote cache could not be reached, or refused a request (``--remote-required``, ``cache push/pull``)."""


def redact(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials can hide).

    >>> redact("https://user:pw@host/cache?sig=abc")
    'https://host/cache'
    >>> redact("s3://bucket/prefix")
    's3://bucket/prefix'
    """
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or C:\\)
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class RemoteStats:
    """What this process did with the remote (for reports and benchmarks)."""

    records_found: int = 0
    blobs_pulled: int = 0
    bytes_pulled: int = 0
    blobs_pushed: int = 0
    bytes_pushed: int = 0
    records_pushed: int = 0
    rejected: list[str] = field(default_factory=list)


class RemoteCache:
    """One remote cache URL: look records up, pull blobs into a local store, push results."""

    def __init__(self, url: str, *, options: dict[str, Any] | None = None, upload: bool = False,
                 required: bool = False) -> None:
        self.url = url
        self.shown = redact(url)
        self.upload = upload
        self.required = required
        self._options = dict(options or {})
        self._fs: Any = None
        self._root = ""
        self._atomic_put = False
        self._guard = threading.Lock()
        #: Warnings for people (one line each): remote unreachable, record or blob rejected, upload failed.
        self.warnings: list[str] = []
        self.stats = RemoteStats()
        self._down: str | None = None
        #: manifest digest -> records found on the remote whose blobs are not local yet.
        self._pending: dict[str, list["ActionRecord"]] = {}
        #: keys whose result this process took from the remote.
        self._served: set[str] = set()
        #: remote blob paths found corrupt: a push overwrites them.
        self._rejected: set[str] = set()

    def __repr__(self) -> str:
        return f"RemoteCache({self.shown!r}, upload={self.upload})"

    # -- plumbing -----------------------------------------------------------

    def _filesystem(self) -> tuple[Any, str]:
        with self._guard:
            if self._fs is None:
                try:
                    import fsspec
                    from fsspec.core import url_to_fs
                except ImportError as err:  # pragma: no cover - fsspec is a dependency
                    raise RemoteUnavailable(f"remote cache {self.shown}: fsspec is not installed") from err
                protocol = fsspec.core.split_protocol(self.url)[0] or "file"
                options = dict(self._options)
                quick = protocol in ("s3", "s3a") and "config_kwargs" not in options
                if quick:
                    # A dead endpoint should cost a second or two, not botocore's and s3fs's
                    # retries stacked (about 5 s on loopback); one retry each is kept.
                    options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                                                "retries": {"max_attempts": 2, "mode": "standard"}}
                try:
                    fs, root = url_to_fs(self.url, **options)
                except ImportError as err:
                    raise RemoteUnavailable(f"remote cache {self.shown}: {one_line(err)} "
                                            f"(install the fsspec backend for {protocol}://, e.g. s3fs)") from err
                except Exception as err:  # noqa: BLE001 - a bad URL or option of any backend
                    raise RemoteUnavailable(f"remote cache {self.shown}: {one_line(err)}") from err
                if quick and hasattr(fs, "retries"):
                    fs.retries = 2
                protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
                self._atomic_put = any(p in _OBJECT_STORES for p in protocols)
                self._root = f"{root.rstrip('/')}/{LAYOUT}"
                self._fs = fs
            return self._fs, self._root

    def blob_path(self, digest: str, executable: bool = False) -> str:
        if not _DIGEST.match(digest):
            raise CacheCorrupt(f"not a valid blob digest: {digest!r}")
        _, root = self._filesystem()
        hexd = digest[3:]
        return f"{root}/blobs/{hexd[:2]}/{hexd[2:]}{'-x' if executable else ''}"

    def record_path(self, key: str) -> str:
        if not _KEY.match(key):
            raise CacheCorrupt(f"not a valid action key: {key!r}")
        _, root = self._filesystem()
        return f"{root}/ac/{key[:2]}/{key}.json"

    def _warn(self, text: str) -> None:
        with self._guard:
            if text not in self.warnings:
                self.warnings.append(text)

    def _unreachable(self, doing: str, err: BaseException) -> RemoteUnavailable:
        """Note the remote as down for this process and return the error to raise (or warn about)."""
        text = f"remote cache {self.shown} unreachable while {doing}: {_describe(err)}"
        with self._guard:
            first = self._down is None
            if first:
                self._down = text
        if first and not self.required:
            self._warn(text + "; building locally")
        return RemoteUnavailable(text)

    @property
    def down(self) -> str | None:
        """Why the remote was given up on in this process (None: it answers)."""
        return self._down

    def check(self) -> None:
        """Raise :class:`RemoteUnavailable` unless the remote answers (one listing)."""
        fs, root = self._filesystem()
        try:
            fs.exists(root)
        except Exception as err:  # noqa: BLE001 - any backend's transport error
            raise self._unreachable("connecting", err) from err

    # -- reading ------------------------------------------------------------

    def find(self, key: str) -> "ActionRecord | None":
        """The remote's record for ``key`` (its blobs not fetched yet), or None.

        None also when the remote is down (a warning, or :class:`RemoteUnavailable`
        when required) or holds a record that fails its checks (a warning).
        """
        from .keys import action_key
        from .store import RECORD_FORMAT, ActionRecord

        if self._down is not None:
            if self.required:
                raise RemoteUnavailable(self._down)
            return None
        try:
            fs, _ = self._filesystem()
            path = self.record_path(key)
        except RemoteUnavailable as err:
            self._down = str(err)
            if self.required:
                raise
            self._warn(f"{err}; building locally")
            return None
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001 - a network error of any backend
            failure = self._unreachable("looking up a record", err)
            if self.required:
                raise failure from err
            return None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
                return None  # another record format: a miss, like the local store's
            record = ActionRecord.from_json(doc)
            if record.key != key or action_key(record.key_record) != key:
                raise ValueError("its key record does not hash to the key it is stored under")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self._warn(f"remote record {key[:12]} rejected: {one_line(err)}")
            return None
        with self._guard:
            self.stats.records_found += 1
            pending = self._pending.setdefault(record.manifest.digest, [])
            if all(r.key != key for r in pending):
                pending.append(record)
        return record

    def served(self, key: str) -> bool:
        """Whether this process took the result of ``key`` from the remote (found it there and restored it)."""
        return key in self._served

    def found(self, key: str) -> bool:
        """Whether ``key``'s record came from the remote in this process (restored or not yet)."""
        if key in self._served:
            return True
        with self._guard:
            return any(r.key == key for recs in self._pending.values() for r in recs)

    def settle(self, manifest: "Manifest", store: "Store") -> None:
        """Before ``store`` restores ``manifest``: if it came from the remote, pull its
        missing blobs (verified) and write its record(s) to the local store.

        Raises :class:`~modelbuild.errors.CacheCorrupt` when a blob is missing
        on the remote, corrupt, or cannot be fetched: the caller treats the
        result as a miss and rebuilds.
        """
        with self._guard:
            records = self._pending.get(manifest.digest)
        if not records:
            return
        try:
            self.pull(manifest, store)
        except BaseException:
            with self._guard:  # not from the remote after all: the step runs (and its own record counts)
                self._pending.pop(manifest.digest, None)
            raise
        with self._guard:
            records = self._pending.pop(manifest.digest, [])
        for record in records:
            store.put_action(record, upload=False)
            self._served.add(record.key)

    def pull(self, manifest: "Manifest", store: "Store") -> int:
        """Fetch the blobs of ``manifest`` that ``store`` lacks; return how many were fetched.

        Each blob is written to the store's scratch space, hashed as it
        arrives (remote_transfer.py: while the kernel writes it back; several
        blobs at once), and only stored if its digest and size are the
        manifest's. On any failure the scratch space, with whatever had come
        down, is removed: nothing partial reaches the store.
        """
        missing = [e for e in _unique(manifest.entries) if not _have(store, e)]
        if not missing:
            return 0
        if self._down is not None:
            raise CacheCorrupt(f"{self._down}: the result cannot be fetched")
        from .remote_transfer import parallel_blobs

        fs, _ = self._filesystem()
        scratch = store.scratch_dir("remote")
        try:
            incoming = scratch / "in"
            incoming.mkdir()
            parallel = min(parallel_blobs(), len(missing))
            if parallel <= 1:
                for i, e in enumerate(missing):
                    self._fetch_one(fs, e, incoming / f"{i}")
            else:  # several blobs at once: a result of many files from a remote with latency
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(parallel, thread_name_prefix="modelbuild-pull") as pool:
                    futures = [pool.submit(self._fetch_one, fs, e, incoming / f"{i}") for i, e in enumerate(missing)]
                    try:
                        for fut in futures:
                            fut.result()
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
            # The same crash-safe path as a step's output; each file was hashed once, on arrival.
            store.ingest(incoming, hashed={f"{i}": e.digest for i, e in enumerate(missing)})
        finally:
            from .materialize import remove_tree

            remove_tree(scratch)
        return len(missing)

    def _fetch_one(self, fs: Any, e: "Entry", local: Path) -> None:
        from .remote_transfer import TransferError, download

        rpath = self.blob_path(e.digest, e.executable)
        name = f"{e.digest[3:5]}/{e.digest[5:17]}…"
        if self._down is not None:  # another blob of this pull found the remote dead
            raise CacheCorrupt(f"{self._down}: {e.path} cannot be fetched")
        digest = what = None
        try:
            digest = download(fs, rpath, local, e.size)  # hashed on arrival; nothing left behind on error
        except FileNotFoundError as err:
            raise CacheCorrupt(f"{e.path}: remote blob {name} is missing") from err
        except TransferError as err:
            what = str(err)
        except Exception as err:  # noqa: BLE001 - a network error of any backend
            raise CacheCorrupt(str(self._unreachable(f"fetching {e.path}", err))) from err
        size = e.size
        if digest != e.digest:
            local.unlink(missing_ok=True)
            what = what or f"content hashes to {digest[:15]}…"
            text = f"{e.path}: remote blob {name} is corrupt ({what}); rejected"
            with self._guard:
                self._rejected.add(rpath)
                self.stats.rejected.append(text)
            self._warn(text)
            raise CacheCorrupt(text)
        if e.executable:
            os.chmod(local, 0o755)
        with self._guard:
            self.stats.blobs_pulled += 1
            self.stats.bytes_pulled += size

    # -- writing ------------------------------------------------------------

    def push(self, record: "ActionRecord", store: "Store") -> bool:
        """Upload ``record``'s blobs, then the record; False if the record was already there.

        Raises :class:`RemoteUnavailable` (transport) or
        :class:`~modelbuild.errors.CacheCorrupt` (a local blob fails its check:
        never upload bad data).
        """
        if self._down is not None:
            raise RemoteUnavailable(self._down)
        self.push_blobs(record.manifest, store)
        fs, _ = self._filesystem()
        path = self.record_path(record.key)
        try:
            if fs.exists(path):
                return False  # first writer wins: any complete record for a key is as good as another
            text = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))
            self._write(fs, path, data=text.encode())
        except Exception as err:  # noqa: BLE001
            raise self._unreachable(f"uploading the record of {record.target}", err) from err
        with self._guard:
            self.stats.records_pushed += 1
        return True

    def push_blobs(self, manifest: "Manifest", store: "Store") -> int:
        """Upload the blobs of ``manifest`` the remote lacks (after checking them locally); return how many.

        Several at once (remote_transfer.parallel_blobs): a result of many files costs
        the remote's latency once per batch, not once per file.
        """
        from .remote_transfer import parallel_blobs

        fs, _ = self._filesystem()
        entries = _unique(manifest.entries)
        parallel = min(parallel_blobs(), len(entries))
        if parallel <= 1:
            return sum(self._push_one(fs, e, store) for e in entries)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parallel, thread_name_prefix="modelbuild-push") as pool:
            futures = [pool.submit(self._push_one, fs, e, store) for e in entries]
            try:
                return sum(f.result() for f in futures)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _push_one(self, fs: Any, e: "Entry", store: "Store") -> int:
        local = store.blob_path(e.digest, e.executable)
        rpath = self.blob_path(e.digest, e.executable)
        try:
            if rpath not in self._rejected and fs.size(rpath) == e.size:
                return 0
        except FileNotFoundError:
            pass
        except Exception as err:  # noqa: BLE001
            raise self._unreachable(f"uploading {e.path}", err) from err
        if not _have(store, e):
            raise CacheCorrupt(f"{e.path}: local blob {e.digest[3:5]}/{e.digest[5:17]}… is missing or corrupt; not uploaded")
        try:
            self._write(fs, rpath, local=local)
        except Exception as err:  # noqa: BLE001
            raise self._unreachable(f"uploading {e.path}", err) from err
        with self._guard:
            self._rejected.discard(rpath)
            self.stats.blobs_pushed += 1
            self.stats.bytes_pushed += e.size
        return 1

    def _write(self, fs: Any, path: str, *, local: Path | None = None, data: bytes | None = None) -> None:
        """Write one file so that a reader sees it whole or not at all."""
        if self._atomic_put:
            fs.put_file(os.fspath(local), path) if local is not None else fs.pipe_file(path, data)
            return
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            fs.put_file(os.fspath(local), tmp) if local is not None else fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        except BaseException:
            try:
                fs.rm_file(tmp)
            except Exception:  # noqa: BLE001 - best effort; a leftover .tmp- file is never read
                pass
            raise


def _unique(entries) -> list["Entry"]:
    seen, out = set(), []
    for e in entries:
        if (e.digest, e.executable) not in seen:
            seen.add((e.digest, e.executable))
            out.append(e)
    return out


def _have(store: "Store", e: "Entry") -> bool:
    """Whether ``store`` holds an intact blob for ``e`` (a stat and a record read when nothing changed)."""
    path = store.blob_path(e.digest, e.executable)
    try:
        if os.stat(path).st_size != e.size:
            return False
        return store.stat_cache.digest(path) == e.digest
    except (OSError, ModelbuildError):
        return False


def _describe(err: BaseException) -> str:
    """One line for a transport error, naming its type (botocore's messages can be bare),
    with the user info and query strings of any URL in it removed (signed URLs, tokens)."""
    text = one_line(err)
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@\"']+@", r"\1", text)
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://[^\s?\"']*)\?[^\s\"']*", r"\1", text)
    name = type(err).__name__
    return text if name in text else f"{name}: {text}"


def open_remote(project: Path | str, url: str | None = None, *, upload: bool | None = None,
                required: bool | None = None) -> RemoteCache | None:
    """The remote cache a command asked for: its flags (None: not given) over the project
    configuration (config.py); None when neither names one. Checked at once when required.
    """
    from .config import load_config

    cfg = load_config(project).override(remote_cache=url, remote_upload=upload, remote_required=required)
    if not cfg.remote_cache:
        return None
    remote = RemoteCache(cfg.remote_cache, options=cfg.remote_options, upload=cfg.remote_upload,
                         required=cfg.remote_required)
    if remote.required:
        remote.check()
    return remote
