"""What the last build of each target did, for typed reasons and ``explain``.

One small JSON file per target under ``<cache>/history/``, written atomically
(scratch file + rename). It is a record of decisions, never a source of
artifacts: deleting it only loses the "what changed since last time" detail.

Example::

    h = History(cache_dir)
    h.save("tiny-llama", {"key": "...", "record": {...}, "status": "built", "reasons": [...]})
    h.load("tiny-llama")["status"]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["History", "HISTORY_VERSION"]

HISTORY_VERSION = 1


class History:
    def __init__(self, cache_dir: Path):
        self.dir = Path(cache_dir) / "history"
        self._dir = str(self.dir)  # paths as strings: a build looks each entry up several times
        # target -> (file identity, parsed entry): a build reads each entry
        # several times (schedule, decision, reason, record). Every save is a
        # new file (rename), so its inode tells a rewrite by anyone apart.
        self._read: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def _path(self, target: str) -> str:
        return os.path.join(self._dir, f"{target}.json")

    def load(self, target: str) -> dict[str, Any] | None:
        """The last entry saved for ``target`` (a shared dict: do not modify it)."""
        path = self._path(target)
        try:
            st = os.stat(path)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            known = self._read.get(target)
            if known is not None and known[0] == ident:
                return known[1]
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != HISTORY_VERSION:
            return None
        self._read[target] = (ident, data)
        return data

    def known(self, target: str) -> dict[str, Any] | None:
        """The entry as this process last read it (no stat), else as :meth:`load` finds it.

        For what only words depend on ("up to date" or "cached: built
        before"), read several times per target in one build: a concurrent
        build's rewrite in between changes a reason's wording, never a decision.
        """
        known = self._read.get(target)
        return known[1] if known is not None else self.load(target)

    def save(self, target: str, entry: dict[str, Any]) -> None:
        """Write the entry, unless the stored one says the same but for its ``when``:
        a no-op build then writes nothing (a rename over an existing file makes
        ext4 flush the new file first, milliseconds per target)."""
        data = {"version": HISTORY_VERSION, **entry}
        previous = self.load(target)  # stat'ed again: a concurrent build may have rewritten it
        # The stored entry with this one's `when`, compared as values (no JSON
        # text made unless it is written): values that differ only as JSON
        # would (a tuple for a list) count as a change, and are written.
        if previous is not None and {**previous, "when": data.get("when")} == data:
            return
        text = json.dumps(data, sort_keys=True)
        import tempfile  # only when something changed: a no-op build writes no entry

        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{target}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self._path(target))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(self, target: str, result: Any, key: str | None = None, record: dict[str, Any] | None = None) -> None:
        """Save what a build did to ``target`` (a :class:`~modelbuild.outcome.TargetResult`).

        A result that was not even keyed this time (skipped, unavailable, an
        unreadable source) keeps the last key and record, so the next real
        build still explains what changed since then.
        """
        entry: dict[str, Any] = {
            "status": str(result.status),
            "reason": result.reason,
            "reasons": result.reasons,
            "duration_s": result.duration_s,
            "summary": result.summary,
            "log": str(result.log) if result.log else None,
            "digest": result.digest,
            "verdict": result.verdict,
            "command": result.command,
            "blocked_by": asdict(result.blocked_by) if result.blocked_by else None,
            "worker": getattr(result, "worker", None),  # the Dask worker that ran it (docs/distributed.md)
            "remote_hit": getattr(result, "remote_hit", False),  # from the remote cache (docs/remote.md)
            "remote_only": getattr(result, "remote_only", False),  # ... and left there (not downloaded)
            "when": time.time(),
        }
        if key is not None:
            entry.update(key=key, record=record)
        else:
            previous = self.load(target) or {}
            entry["key"] = previous.get("key")
            if previous.get("record") is not None:
                entry["record"] = previous["record"]
        self.save(target, entry)

    def keys(self) -> set[str]:
        """Action keys referenced by any target's last build (roots for cache gc)."""
        found = set()
        if self.dir.is_dir():
            for path in self.dir.glob("*.json"):
                try:
                    key = json.loads(path.read_text()).get("key")
                except (OSError, ValueError):
                    continue
                if key:
                    found.add(key)
        return found

    def clear(self) -> None:
        if self.dir.is_dir():
            for path in self.dir.glob("*.json"):
                path.unlink(missing_ok=True)
