"""The cache's housekeeping: counts, a full re-hash, garbage collection, clearing.

Mixed into :class:`~modelbuild.store.Store` (``modelbuild cache stats |
verify | gc | clear``); nothing here runs during a build. The methods use the
store's directories, its records (``action_keys``, ``get_action``,
``drop_action``) and its blob naming (``blob_path``, ``_blob_digest``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .errors import CacheCorrupt
from .hashing import hash_file
from .materialize import remove_tree

__all__ = ["StoreMaintenance"]


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


class StoreMaintenance:
    """``stats``, ``verify``, ``gc`` and ``clear`` of a Store."""

    def _blob_files(self):
        for sub in sorted(os.listdir(self.blobs)):
            d = self.blobs / sub
            if d.is_dir():
                for name in sorted(os.listdir(d)):
                    yield d / name

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: action records, blobs, bytes, scratch sessions."""
        blobs = size = 0
        for p in self._blob_files():
            blobs += 1
            size += p.stat().st_size
        return {
            "root": str(self.root),
            "actions": len(self.action_keys()),
            "blobs": blobs,
            "blob_bytes": size,
            "scratch_sessions": len(os.listdir(self.tmp)),
        }

    def verify(self) -> list[str]:
        """Re-hash every blob and check every record; return the problems."""
        problems = []
        for p in self._blob_files():
            parsed = self._blob_digest(p)
            if parsed is None:
                problems.append(f"blobs/{p.parent.name}/{p.name}: not a blob name")
                continue
            started = time.time_ns()
            st = os.stat(p)
            digest = hash_file(p)
            if digest != parsed[0]:
                problems.append(f"blobs/{p.parent.name}/{p.name}: corrupt (content hashes to {digest})")
            elif _same(os.stat(p), st):
                self.stat_cache.remember(st, digest, recorded_ns=started)
        for key in self.action_keys():
            try:
                rec = self.get_action(key)
            except CacheCorrupt as err:
                problems.append(str(err))
                continue
            if rec is None:
                continue
            for e in rec.manifest.entries:
                p = self.blob_path(e.digest, e.executable)
                if not p.is_file():
                    problems.append(f"{rec.target} ({key}): blob {p.parent.name}/{p.name} for {e.path} is missing")
        return problems

    def gc(self, keep_keys: set[str], grace_s: float = 3600.0) -> dict[str, int]:
        """Drop action records not in ``keep_keys`` and blobs no kept record uses.

        Blobs touched (stored or linked) within ``grace_s`` seconds are kept:
        they may belong to a step that a concurrent build is storing right now.
        """
        removed_actions = 0
        referenced: set[Path] = set()
        for key in self.action_keys():
            rec = None
            if key in keep_keys:
                try:
                    rec = self.get_action(key)
                except CacheCorrupt:
                    rec = None
            if rec is None:
                self.drop_action(key)
                removed_actions += 1
                continue
            referenced.update(self.blob_path(e.digest, e.executable) for e in rec.manifest.entries)
        cutoff = time.time_ns() - int(grace_s * 1e9)
        removed_blobs = freed = kept = 0
        for p in self._blob_files():
            st = os.stat(p)
            if p in referenced or st.st_ctime_ns > cutoff:
                kept += 1
                continue
            self.stat_cache.forget(st)
            p.unlink()
            removed_blobs += 1
            freed += st.st_size
        for sub in os.listdir(self.blobs):
            try:
                (self.blobs / sub).rmdir()  # only succeeds when empty
            except OSError:
                pass
        return {
            "actions_removed": removed_actions,
            "actions_kept": len(self.action_keys()),
            "blobs_removed": removed_blobs,
            "blobs_kept": kept,
            "bytes_freed": freed,
            "scratch_removed": self._clean_stale_tmp(),
        }

    def clear(self) -> None:
        """Remove every record, blob, log and stale scratch session."""
        self.cache.clear()
        for d in (self.blobs, self.logs, self.downloads):
            remove_tree(d)
            d.mkdir()
        self._clean_stale_tmp()

