"""Materialization: methods, atomic replacement, no-op detection, corruption, faults."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from modelbuild import materialize as mat
from modelbuild.errors import CacheCorrupt, StoreError
from modelbuild.hashing import Manifest, manifest_of
from modelbuild.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cache")
    yield s
    s.close()


def ingest(store: Store, files: dict[str, bytes], exe=()) -> Manifest:
    d = store.scratch_dir("t")
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if rel in exe:
            os.chmod(p, 0o755)
    return store.ingest(d)


FILES = {"model.pte": os.urandom(2 << 20), "meta/info.json": b"{}", "bin/tool": b"#!/bin/sh\n"}


def test_hardlinks_read_only_blobs_and_matches_the_manifest(store, tmp_path):
    m = ingest(store, FILES, exe={"bin/tool"})
    dest = tmp_path / "out" / "t"
    assert store.materialize(m, dest) == "hardlink"  # ext4: no reflink
    assert manifest_of(dest) == m
    for e in m.entries:
        st, blob = os.stat(dest / e.path), os.stat(store.blob_path(e.digest, e.executable))
        assert (st.st_dev, st.st_ino) == (blob.st_dev, blob.st_ino)
        assert not st.st_mode & stat.S_IWUSR
    assert store.materialize(m, dest) == "unchanged"
    assert [p.name for p in dest.parent.iterdir()] == ["t"]  # no scratch left beside


def test_replacing_an_output_leaves_exactly_the_new_manifest(store, tmp_path):
    dest = tmp_path / "out" / "t"
    store.materialize(ingest(store, {"old.bin": b"old", "keep": b"k"}), dest)
    m2 = ingest(store, {"new.bin": b"new", "keep": b"k2"})
    assert store.materialize(m2, dest) == "hardlink"
    assert manifest_of(dest) == m2
    assert sorted(p.name for p in dest.parent.iterdir()) == ["t"]


@pytest.mark.parametrize("edit", ["extra", "missing", "replaced", "mode"])
def test_an_edited_output_is_restored(store, tmp_path, edit):
    m = ingest(store, {"a": b"aaaa", "b": b"bbbb"})
    dest = tmp_path / "out"
    store.materialize(m, dest)
    if edit == "extra":
        (dest / "c").write_bytes(b"junk")
    elif edit == "missing":
        (dest / "a").unlink()
    elif edit == "replaced":  # a new file in place of the link: the store is untouched
        (dest / "a").unlink()
        (dest / "a").write_bytes(b"AAAA")
    else:
        (dest / "a").unlink()
        (dest / "a").write_bytes(b"aaaa")
        os.chmod(dest / "a", 0o755)
    assert store.materialize(m, dest) == "hardlink"
    assert manifest_of(dest) == m
    assert store.verify() == []


def test_corrupt_blob_raises_naming_it_and_keeps_the_old_output(store, tmp_path):
    dest = tmp_path / "out"
    old = ingest(store, {"x": b"previous"})
    store.materialize(old, dest)
    m = ingest(store, {"a": b"aaaa", "b": b"bbbb"})
    blob = store.blob_path(m.entries[1].digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"BBBB")  # same size: only the digest can tell
    with pytest.raises(CacheCorrupt, match=f"{blob.name} \\(b\\) is corrupt"):
        store.materialize(m, dest)
    assert manifest_of(dest) == old


def test_missing_blob_raises(store, tmp_path):
    m = ingest(store, {"a": b"aaaa"})
    store.blob_path(m.entries[0].digest).unlink()
    with pytest.raises(CacheCorrupt, match="missing"):
        store.materialize(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_copy_fallback_gives_private_writable_files(store, tmp_path, monkeypatch):
    def no_link(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(mat.os, "link", no_link)
    m = ingest(store, FILES, exe={"bin/tool"})
    dest = tmp_path / "out"
    assert store.materialize(m, dest) == "copy"
    assert manifest_of(dest) == m
    st = os.stat(dest / "model.pte")
    assert st.st_mtime_ns == mat.CANONICAL_MTIME_NS and st.st_mode & stat.S_IWUSR
    assert store.materialize(m, dest) == "unchanged"
    (dest / "model.pte").write_bytes(b"edited")  # editing a copy cannot hurt the store
    assert store.verify() == []
    assert store.materialize(m, dest) == "copy"
    assert manifest_of(dest) == m


def test_write_error_raises_store_error_and_keeps_the_old_output(store, tmp_path, monkeypatch):
    dest = tmp_path / "out"
    old = ingest(store, {"x": b"previous"})
    store.materialize(old, dest)
    m = ingest(store, {"a": b"aaaa", "b": b"bbbb"})
    real, calls = os.link, []

    def full(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(mat.os, "link", full)
    with pytest.raises(StoreError, match="No space left"):
        store.materialize(m, dest)
    assert manifest_of(dest) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]


def test_stale_scratch_from_a_killed_restore_is_removed(store, tmp_path):
    m = ingest(store, {"a": b"aaaa"})
    stale = tmp_path / ".out.mb-999999-deadbeef"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half").write_bytes(b"x")
    os.chmod(stale / "sub", 0o555)
    store.materialize(m, tmp_path / "out")
    assert not stale.exists()


def test_empty_manifest(store, tmp_path):
    assert store.materialize(Manifest(), tmp_path / "out") == "empty"
    assert list((tmp_path / "out").iterdir()) == []


def test_restores_do_not_rehash_blobs(store, tmp_path, count_hashes):
    m = ingest(store, FILES, exe={"bin/tool"})
    assert count_hashes == []  # ingest records the digests it computed
    for name in ("a", "b", "c"):
        store.materialize(m, tmp_path / name)
    store.materialize(ingest(store, {"other": b"o"}), tmp_path / "a")  # replace a
    store.remove_output(tmp_path / "b")
    store.materialize(m, tmp_path / "d")
    assert store.missing_or_corrupt(m) == []
    assert count_hashes == []
    assert not (tmp_path / "b").exists()


def test_removal_behind_our_back_costs_one_rehash_not_a_wrong_answer(store, tmp_path, count_hashes):
    m = ingest(store, {"a": b"aaaa"})
    store.materialize(m, tmp_path / "a")
    time.sleep(0.01)  # a later ctime for the unlink below
    mat.remove_tree(tmp_path / "a")  # like a user's rm -rf: ctime of the blob moves
    assert store.materialize(m, tmp_path / "a") == "hardlink"
    assert len(count_hashes) == 1
    assert store.materialize(m, tmp_path / "b") == "hardlink"
    assert len(count_hashes) == 1


def test_edit_through_a_hard_link_is_detected_as_corruption(store, tmp_path):
    # Read-only blobs stop ordinary users; root can still write through a link.
    m = ingest(store, {"a": b"aaaa"})
    dest = tmp_path / "out"
    store.materialize(m, dest)
    os.chmod(dest / "a", 0o644)
    (dest / "a").write_bytes(b"AAAA")
    with pytest.raises(CacheCorrupt):
        store.materialize(m, dest)
    assert store.missing_or_corrupt(m)


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_names = st.sampled_from(["a", "b", "model.pte", "w.bin", "sub", "x.json"])
_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=3).map("/".join),
    st.tuples(st.binary(max_size=64), st.booleans()),
    min_size=0, max_size=6,
).filter(lambda t: not any(a != b and b.startswith(a + "/") for a in t for b in t))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_trees)
def test_ingest_then_materialize_reproduces_any_tree(tmp_path, tree):
    import uuid

    with Store(tmp_path / "cache") as s:
        files = {rel: data for rel, (data, _) in tree.items()}
        m = ingest(s, files, exe={rel for rel, (_, x) in tree.items() if x})
        dest = tmp_path / "out" / uuid.uuid4().hex
        s.materialize(m, dest)
        assert manifest_of(dest) == m
        for rel, (data, exe) in tree.items():
            assert (dest / rel).read_bytes() == data
            assert bool(os.stat(dest / rel).st_mode & stat.S_IXUSR) == exe


SWAPPER = """
import sys
from modelbuild.store import Store
from modelbuild.hashing import Manifest
import json
s = Store(sys.argv[1])
ms = [Manifest.from_json(json.loads(x)) for x in sys.argv[3:5]]
i = 0
print("ready", flush=True)
while True:
    s.materialize(ms[i % 2], sys.argv[2])
    i += 1
    if len(sys.argv) > 5 and i >= int(sys.argv[5]):
        break
"""


def two_manifests(store):
    m1 = ingest(store, {"model.pte": b"1" * 5000, "meta.json": b"{}", "only1": b"one"})
    m2 = ingest(store, {"model.pte": b"2" * 7000, "meta.json": b"{ }", "sub/only2": b"two"})
    return m1, m2


def test_kill_9_during_restores_leaves_the_old_or_the_new_tree(store, tmp_path):
    import json
    import signal
    import subprocess
    import sys

    m1, m2 = two_manifests(store)
    dest = tmp_path / "out" / "t"
    store.materialize(m1, dest)
    args = [json.dumps(m1.to_json()), json.dumps(m2.to_json())]
    for delay in (0.0, 0.05, 0.1, 0.2, 0.35):
        p = subprocess.Popen([sys.executable, "-c", SWAPPER, str(store.root), str(dest), *args],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert manifest_of(dest) in (m1, m2)  # never a mix, never missing
    assert store.materialize(m2, dest) in ("hardlink", "unchanged")
    assert manifest_of(dest) == m2
    assert sorted(p.name for p in dest.parent.iterdir()) == ["t"]  # stale siblings removed
    assert store.verify() == []


def test_two_processes_restoring_into_one_output(store, tmp_path):
    import json
    import subprocess
    import sys

    m1, m2 = two_manifests(store)
    dest = tmp_path / "out" / "t"
    args = [json.dumps(m1.to_json()), json.dumps(m2.to_json())]
    procs = [subprocess.Popen([sys.executable, "-c", SWAPPER, str(store.root), str(dest), *args, "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert manifest_of(dest) in (m1, m2)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["t"]
    assert store.verify() == []
