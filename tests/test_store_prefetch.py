"""Reading ahead and checking once (issue 11): what a full-check no-op no longer
reads twice must still be caught when it changes.

The engine reads the action records of the keys its targets had last time, and
their blobs' stat records, in one query each (Store.prefetch); a restore right
after the decision does not check the decision's blobs again
(materialize._held_as_verified). Each test here changes something between the
read-ahead (or the decision) and its use, as a concurrent build or a stray
write would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelbuild.errors import CacheCorrupt
from modelbuild.materialize import CANONICAL_MTIME_NS
from modelbuild.store import ActionRecord, Store


def stored(s: Store, data: bytes = b"the output\n"):
    out = s.scratch_dir("t")
    (out / "o").write_bytes(data)
    manifest = s.ingest(out)
    return ActionRecord("b3:" + "ab" * 32, "command", "t", manifest, {"params": {}}, "ok", 0.1, 1000.0)


@pytest.fixture
def two(tmp_path):
    """Two stores on one cache directory: this build, and a concurrent one."""
    mine, theirs = Store(tmp_path / "cache"), Store(tmp_path / "cache")
    yield mine, theirs
    mine.close()
    theirs.close()


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Change a read-only blob's bytes, keeping its size, mode and mtime (only the ctime tells)."""
    mode = os.stat(path).st_mode
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.chmod(path, mode & 0o777)
    os.utime(path, ns=(CANONICAL_MTIME_NS, CANONICAL_MTIME_NS))


def test_a_record_written_by_a_concurrent_build_after_the_read_ahead_is_found(two):
    mine, theirs = two
    rec = stored(theirs)
    mine.prefetch([rec.key])  # nothing there yet: absence is not remembered
    theirs.put_action(rec)
    found = mine.get_action(rec.key)
    assert found is not None and found.manifest.digest == rec.manifest.digest


def test_a_record_read_ahead_answers_one_lookup_and_the_next_one_reads_the_database(two):
    mine, theirs = two
    rec = stored(theirs)
    theirs.put_action(rec)
    mine.prefetch([rec.key])
    theirs.cache.delete("action:" + rec.key)  # e.g. a concurrent `cache gc`
    assert mine.get_action(rec.key) is not None  # the decision: its blobs are checked next
    assert mine.get_action(rec.key) is None  # the second lookup, under the key's lock, asks again


def test_a_blob_changed_after_its_stat_record_was_read_ahead_is_corrupt(two):
    mine, theirs = two
    rec = stored(theirs, b"AAAA")
    theirs.put_action(rec)
    mine.prefetch([rec.key])
    blob = mine.blob_path(rec.manifest.entries[0].digest, False)
    overwrite_in_place(blob, b"BBBB")
    problems = mine.missing_or_corrupt(mine.get_action(rec.key).manifest)
    assert problems and "corrupt" in problems[0]


def test_a_blob_corrupted_after_the_decision_is_caught_before_out_is_trusted(tmp_path, two):
    mine, theirs = two
    rec = stored(theirs, b"AAAA")
    theirs.put_action(rec)
    dest = tmp_path / "out" / "t"
    theirs.materialize(rec.manifest, dest)  # an earlier build: out/t/o is a hard link of the blob
    assert mine.missing_or_corrupt(rec.manifest) == []  # this build's decision: a hit
    assert mine.materialize(rec.manifest, dest) == "unchanged"  # checked once, not twice
    overwrite_in_place(dest / "o", b"BBBB")  # the same inode as the blob
    with pytest.raises(CacheCorrupt, match="corrupt"):
        mine.materialize(rec.manifest, dest)


def test_the_read_ahead_finds_what_the_database_holds_and_answers_without_reading_again(two):
    """read_many asks diskcache's table through a private method; if a diskcache release changed that
    table, the read-ahead would silently fall back to one read per key. This fails instead."""
    from modelbuild import store_readahead
    from modelbuild.store import ACTION_PREFIX

    mine, theirs = two
    record = stored(theirs)
    theirs.put_action(record)
    db_key = ACTION_PREFIX + record.key
    assert store_readahead.read_many(mine.cache, [db_key, ACTION_PREFIX + "nothing"]) == {db_key: mine.cache.get(db_key)}

    mine.prefetch([record.key, "b3:" + "cd" * 32])

    def no_read(*args, **kw):
        raise AssertionError(f"read {args} again")

    mine.cache.get = no_read  # both lookups below are answered by what was read ahead
    assert mine.get_action(record.key).manifest == record.manifest
    entry = record.manifest.entries[0]
    assert mine.stat_cache.lookup(os.stat(mine.blob_path(entry.digest, entry.executable))) == entry.digest
