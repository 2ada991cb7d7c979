"""Reading ahead what a full-check build will ask the store: action records and blob stat records.

A full-check no-op otherwise makes two database reads per target (its
record, then its blob's stat record), each costing more than the rest of
the target's check. The engine passes the keys each target had at its last
build (history.py) to ``Store.prefetch`` before the first decision, and this
module reads them in two queries.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import diskcache

from .errors import CacheCorrupt

if TYPE_CHECKING:
    from .store import ActionRecord, Store

__all__ = ["prefetch", "read_many"]


def prefetch(store: "Store", keys: list[str]) -> dict[str, "ActionRecord"]:
    """The action records of ``keys`` that ``store`` holds, read in one query; their blobs' stat records primed.

    What is read ahead only stands in for a read that finds something: a key
    with no record here is asked again when it is looked up (a concurrent
    build may have written it since), each record read ahead serves one
    lookup (the engine's second lookup, under the key's lock, reads the
    database), and a stat record serves only a blob whose stat still matches
    it (:meth:`StatCache.prime`). The blobs themselves are checked as always.
    """
    from .store import ACTION_PREFIX, RECORD_FORMAT, ActionRecord

    texts = read_many(store.cache, [ACTION_PREFIX + k for k in dict.fromkeys(keys)])
    early: dict[str, ActionRecord] = {}
    inodes: dict[str, tuple[int, int]] = {}
    for text in texts.values():
        try:
            d = json.loads(text)
            if d.get("format") != RECORD_FORMAT:
                continue
            record = ActionRecord.from_json(d)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # left for get_action, which names the unreadable record
        early[record.key] = record
        for e in record.manifest.entries:
            try:
                st = os.stat(store.blob_path(e.digest, e.executable))
            except (OSError, CacheCorrupt):
                continue
            inodes[store.stat_cache.record_key(st)] = (st.st_dev, st.st_ino)
    found = read_many(store.cache, list(inodes))
    store.stat_cache.prime({inodes[k]: text for k, text in found.items()})
    return early


def read_many(cache: diskcache.Cache, db_keys: list[str]) -> dict[str, str]:
    """The text values of ``db_keys`` that ``cache`` holds, read in one query per 500 keys.

    diskcache has no multi-key read, so this asks its ``Cache`` table through
    its private ``_sql`` (diskcache is pinned below 6;
    tests/test_store_prefetch.py fails if this reads nothing from a table
    that holds the keys). Only plain text values are taken (all our records
    are JSON text below ``disk_min_file_size``); any other value, or a table
    this does not understand, leaves the key to the usual ``get``.
    """
    found: dict[str, str] = {}
    try:
        for i in range(0, len(db_keys), 500):
            chunk = db_keys[i:i + 500]
            rows = cache._sql(
                "SELECT key, mode, value FROM Cache WHERE raw = 1 AND (expire_time IS NULL OR expire_time > ?)"
                f" AND key IN ({','.join('?' * len(chunk))})", (time.time(), *chunk)).fetchall()
            found.update((k, v) for k, mode, v in rows if mode == diskcache.core.MODE_RAW and isinstance(v, str))
    except Exception:  # noqa: BLE001 - an optimisation only: fall back to one get per key
        return {}
    return found
