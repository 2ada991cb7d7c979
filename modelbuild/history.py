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
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["History", "HISTORY_VERSION"]

HISTORY_VERSION = 1


class History:
    def __init__(self, cache_dir: Path):
        self.dir = Path(cache_dir) / "history"

    def _path(self, target: str) -> Path:
        return self.dir / f"{target}.json"

    def load(self, target: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(target).read_text())
        except (OSError, ValueError):
            return None
        if data.get("version") != HISTORY_VERSION:
            return None
        return data

    def save(self, target: str, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {"version": HISTORY_VERSION, **entry}
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{target}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, sort_keys=True)
            os.replace(tmp, self._path(target))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
