"""Hashing: digests, manifests (canonical form), the stat cache and its racy-file rule."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelbuild import hashing
from modelbuild.errors import StoreError
from modelbuild.hashing import (
    Entry, Manifest, StatCache, digest_path, hash_bytes, hash_file, manifest_of,
)


def test_hash_bytes_is_blake3_with_prefix():
    assert hash_bytes(b"") == "b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert hash_bytes(b"abc") == "b3:" + blake3.blake3(b"abc").hexdigest()


@pytest.mark.parametrize("size", [0, 1, hashing.MMAP_THRESHOLD - 1, hashing.MMAP_THRESHOLD, 3 * hashing.MMAP_THRESHOLD + 7])
def test_hash_file_matches_hash_bytes_on_both_paths(tmp_path, size):
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hash_file(p) == hash_bytes(data)


def test_hash_file_falls_back_to_reading_when_mmap_fails(tmp_path, monkeypatch):
    real = blake3.blake3

    class NoMmap:
        AUTO = real.AUTO

        def __init__(self, *a, **k):
            self.h = real(*a, **k)

        def update_mmap(self, path):
            raise OSError(19, "No such device")  # what mmap says on e.g. some FUSE mounts

        def __getattr__(self, name):
            return getattr(self.h, name)

    data = os.urandom(hashing.MMAP_THRESHOLD * 2 + 3)
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(hashing.blake3, "blake3", NoMmap)
    monkeypatch.setattr(hashing, "READ_CHUNK", 1 << 20)
    assert hash_file(tmp_path / "f") == "b3:" + real(data).hexdigest()
    monkeypatch.undo()
    assert hash_file(tmp_path / "f") == hash_bytes(data)


def test_hash_file_missing_names_the_path(tmp_path):
    with pytest.raises(StoreError, match="nope"):
        hash_file(tmp_path / "nope")


def E(path, data=b"x", exe=False):
    return Entry(path, exe, hash_bytes(data), len(data))


def test_manifest_sorts_and_round_trips():
    m = Manifest([E("b/c.bin"), E("a.txt", b"aa", True), E("b/a")])
    assert [e.path for e in m.entries] == ["a.txt", "b/a", "b/c.bin"]
    assert m.size == 4
    again = Manifest.from_json(m.to_json())
    assert again == m and again.digest == m.digest


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "./a", "a//b", "a/"])
def test_entry_rejects_unnormalized_paths(bad):
    with pytest.raises(ValueError):
        E(bad)


def test_manifest_rejects_duplicates_and_file_dir_clash():
    with pytest.raises(ValueError, match="duplicate"):
        Manifest([E("a"), E("a", b"y")])
    with pytest.raises(ValueError, match="both a file and a directory"):
        Manifest([E("a"), E("a/b")])


def test_manifest_from_json_rejects_other_formats():
    with pytest.raises(ValueError):
        Manifest.from_json({"format": 99, "entries": []})
    with pytest.raises(ValueError):
        Manifest.from_json({"format": 1, "entries": [{"path": "a"}]})


names = st.text(alphabet="abcxyz._-é", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
entries = st.lists(
    st.tuples(paths, st.booleans(), st.binary(max_size=8)), min_size=1, max_size=6,
    unique_by=lambda t: t[0],
).filter(lambda es: not any(a != b and b.startswith(a + "/") for a, *_ in es for b, *_ in es))


@settings(max_examples=150, deadline=None)
@given(entries, st.randoms(use_true_random=False))
def test_manifest_digest_is_independent_of_listing_order(es, rnd):
    listed = [Entry(p, x, hash_bytes(d), len(d)) for p, x, d in es]
    shuffled = listed[:]
    rnd.shuffle(shuffled)
    assert Manifest(listed).digest == Manifest(shuffled).digest
    assert Manifest(listed) == Manifest(shuffled)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(entries, st.data())
def test_any_change_of_path_mode_or_content_changes_the_digest(es, data):
    listed = [Entry(p, x, hash_bytes(d), len(d)) for p, x, d in es]
    base = Manifest(listed).digest
    i = data.draw(st.integers(0, len(listed) - 1))
    e = listed[i]
    what = data.draw(st.sampled_from(["path", "mode", "content"]))
    if what == "path":
        changed = Entry(e.path + "~", e.executable, e.digest, e.size)
    elif what == "mode":
        changed = Entry(e.path, not e.executable, e.digest, e.size)
    else:
        old = dict((p, d) for p, _, d in es)[e.path]
        new = data.draw(st.binary(max_size=8).filter(lambda b: b != old))
        changed = Entry(e.path, e.executable, hash_bytes(new), len(new))
    others = listed[:i] + listed[i + 1:]
    if any(o.path == changed.path or o.path.startswith(changed.path + "/") for o in others):
        return  # the renamed path would collide; not a valid manifest
    assert Manifest(others + [changed]).digest != base


def make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "sub" / "run.sh", 0o755)
    (root / "sub" / "deep" / "w.bin").write_bytes(os.urandom(2 * hashing.MMAP_THRESHOLD))


def test_manifest_of_lists_files_with_mode_and_digest(tmp_path):
    make_tree(tmp_path)
    m = manifest_of(tmp_path)
    assert [(e.path, e.executable) for e in m.entries] == [
        ("a.txt", False), ("sub/deep/w.bin", False), ("sub/run.sh", True)]
    assert m.entries[0].digest == hash_bytes(b"alpha")
    assert digest_path(tmp_path) == m.digest
    assert digest_path(tmp_path / "a.txt") == hash_bytes(b"alpha")
    os.chmod(tmp_path / "a.txt", 0o755)
    assert manifest_of(tmp_path).digest != m.digest


def test_manifest_of_refuses_symlinks_and_special_files(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "sub" / "link").symlink_to("/etc/passwd")
    with pytest.raises(StoreError, match="sub/link: symbolic links"):
        manifest_of(tmp_path)
    (tmp_path / "sub" / "link").unlink()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StoreError, match="fifo: special files"):
        manifest_of(tmp_path)


def old(path: Path, seconds: float = 10) -> None:
    """Give a file an mtime safely outside the racy window."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def test_stat_cache_hit_skips_hashing_and_change_rehashes(tmp_path, count_hashes):
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"one")
    old(f)
    assert sc.digest(f) == hash_bytes(b"one")
    assert sc.digest(f) == hash_bytes(b"one")
    assert len(count_hashes) == 1
    f.write_bytes(b"two!")
    assert sc.digest(f) == hash_bytes(b"two!")
    assert len(count_hashes) == 2


def test_racy_record_is_never_trusted(tmp_path, count_hashes):
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"aaaa")
    st0 = os.stat(f)
    assert sc.digest(f) == hash_bytes(b"aaaa")  # recorded within the racy window
    # Even with an identical stat signature (a write in the same timestamp
    # granule), the racy record must not be returned.
    assert sc.lookup(st0) is None
    # Rewrite within the granularity, same size, old mtime restored.
    f.write_bytes(b"bbbb")
    os.utime(f, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    assert sc.digest(f) == hash_bytes(b"bbbb")
    assert len(count_hashes) == 2


def test_non_racy_record_is_trusted_and_ctime_catches_restored_mtime(tmp_path):
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"aaaa")
    old(f)
    st0 = os.stat(f)
    assert sc.digest(f) == hash_bytes(b"aaaa")
    assert sc.lookup(st0) == hash_bytes(b"aaaa")  # the control: old files are trusted
    time.sleep(0.01)  # let the coarse kernel clock move on, so ctime differs
    f.write_bytes(b"bbbb")
    os.utime(f, ns=(st0.st_atime_ns, st0.st_mtime_ns))  # same size, same mtime
    assert sc.digest(f) == hash_bytes(b"bbbb")


def test_racy_file_becomes_trusted_once_old(tmp_path, count_hashes):
    sc = StatCache(tmp_path / "db", margin_ns=50_000_000)  # 50 ms window for the test
    f = tmp_path / "f"
    f.write_bytes(b"x")
    sc.digest(f)
    time.sleep(0.12)
    sc.digest(f)  # racy at record time: hashed again, now recorded as old
    sc.digest(f)
    assert len(count_hashes) == 2


def test_stat_cache_shares_records_between_hard_links(tmp_path, count_hashes):
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"shared")
    old(f)
    os.link(f, tmp_path / "g")
    sc.digest(f)
    assert sc.digest(tmp_path / "g") == hash_bytes(b"shared")  # same inode, same record
    assert len(count_hashes) == 1
    time.sleep(0.01)
    os.link(f, tmp_path / "h")  # link() moves the ctime: the record is stale
    assert sc.digest(tmp_path / "g") == hash_bytes(b"shared")
    assert sc.digest(f) == hash_bytes(b"shared")  # re-recorded once for all names
    assert len(count_hashes) == 2


def test_stat_cache_on_a_shared_cache_ignores_unreadable_records(tmp_path):
    import diskcache

    with diskcache.Cache(str(tmp_path / "db"), eviction_policy="none") as cache:
        sc = StatCache(cache)
        f = tmp_path / "f"
        f.write_bytes(b"data")
        old(f)
        st = os.stat(f)
        cache.set(sc.record_key(st), "{garbage")
        assert sc.lookup(st) is None
        assert sc.digest(f) == hash_bytes(b"data")
        assert sc.lookup(os.stat(f)) == hash_bytes(b"data")
        sc.forget(st)
        assert sc.lookup(st) is None


def test_a_file_changed_while_hashed_is_hashed_again(tmp_path, monkeypatch):
    """The digest returned, the one remembered and the signature reported
    (``seen``) all belong to the same content: never a digest of "one"
    against the signature of "two!" (issue 11, hole 1)."""
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"one")
    old(f)
    real, reads = hashing.hash_file, []

    def racing(path):
        digest = real(path)
        reads.append(digest)
        if len(reads) == 1:
            f.write_bytes(b"two!")  # an editor saves just after the first read
        return digest

    monkeypatch.setattr(hashing, "hash_file", racing)
    seen: dict = {}
    assert sc.digest(f, seen) == hash_bytes(b"two!")
    assert reads == [hash_bytes(b"one"), hash_bytes(b"two!")]
    assert seen == {str(f): hashing.stat_signature(os.stat(f))}


def test_a_file_that_never_settles_is_reported_as_changed(tmp_path, monkeypatch):
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"0")
    real, n = hashing.hash_file, []

    def always_racing(path):
        digest = real(path)
        n.append(1)
        f.write_bytes(str(len(n)).encode() * (len(n) + 1))
        return digest

    monkeypatch.setattr(hashing, "hash_file", always_racing)
    seen: dict = {}
    sc.digest(f, seen)
    assert len(n) == hashing._HASH_ATTEMPTS
    # What was read is not what is there: whoever checks the signature sees a change.
    assert seen[str(f)] != hashing.stat_signature(os.stat(f))
    assert sc.lookup(os.stat(f)) is None


def test_digest_path_reports_what_it_read(tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    seen: dict = {}
    digest_path(root, StatCache(tmp_path / "db"), seen)
    assert set(seen) == {str(root), str(root / "sub"), str(root / "a.txt"), str(root / "sub" / "b.txt")}
    assert all(sig == hashing.stat_signature(os.stat(p)) for p, sig in seen.items())
    time.sleep(0.01)
    (root / "sub" / "new.txt").write_text("n")  # a file added later moves its directory's signature
    assert seen[str(root / "sub")] != hashing.stat_signature(os.stat(root / "sub"))


def test_a_trusted_record_is_not_read_again_until_the_file_changes(tmp_path, count_hashes):
    """A build looks each blob up several times: one database read is enough,
    and a changed file is never answered from what was trusted before."""
    sc = StatCache(tmp_path / "db")
    f = tmp_path / "f"
    f.write_bytes(b"one")
    old(f)
    sc.digest(f)
    reads = []
    real_get = sc.cache.get
    sc.cache.get = lambda key, *a, **k: reads.append(key) or real_get(key, *a, **k)
    assert sc.lookup(os.stat(f)) == hash_bytes(b"one")
    assert sc.lookup(os.stat(f)) == hash_bytes(b"one")
    assert len(reads) == 1
    f.write_bytes(b"two")  # same size
    old(f, 20)
    assert sc.lookup(os.stat(f)) is None
    assert sc.digest(f) == hash_bytes(b"two")
    sc.forget(os.stat(f))
    assert sc.lookup(os.stat(f)) is None
