"""The store: ingest, action records, integrity checks, faults, concurrency, gc."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelbuild import store as store_mod
from modelbuild.errors import CacheCorrupt, StoreError
from modelbuild.hashing import hash_bytes
from modelbuild.materialize import CANONICAL_MTIME_NS
from modelbuild.store import ActionRecord, Store


def fill(d: Path, files: dict[str, bytes], exe: set[str] = frozenset()) -> Path:
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if rel in exe:
            os.chmod(p, 0o755)
    return d


def record(key, manifest, target="t"):
    return ActionRecord(key, "command", target, manifest, {"params": {"n": 1}}, "ok", 1.5, 1000.0)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cache")
    yield s
    s.close()


def blob_files(s: Store) -> list[Path]:
    return sorted(p for p in s.blobs.rglob("*") if p.is_file())


def test_layout_is_created(store):
    for d in ("blobs", "db", "tmp", "locks", "logs", "downloads"):
        assert (store.root / d).is_dir()
    assert store.log_path("a/b") == store.root / "logs" / "a_b.log"


def test_ingest_moves_files_into_read_only_blobs(store):
    d = fill(store.scratch_dir("t"), {"a.txt": b"alpha", "bin/run": b"#!", "big": os.urandom(3 << 20)},
             exe={"bin/run"})
    m = store.ingest(d)
    assert not d.exists()
    assert [(e.path, e.executable) for e in m.entries] == [("a.txt", False), ("big", False), ("bin/run", True)]
    assert m.entries[0].digest == hash_bytes(b"alpha")
    for e in m.entries:
        p = store.blob_path(e.digest, e.executable)
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == (0o555 if e.executable else 0o444)
        assert st.st_mtime_ns == CANONICAL_MTIME_NS
        assert hash_bytes(p.read_bytes()) == e.digest
    assert store.missing_or_corrupt(m) == []


def test_ingest_copes_with_read_only_directories(store):
    d = fill(store.scratch_dir("t"), {"ro/a": b"1", "ro/deep/b": b"2"})
    os.chmod(d / "ro" / "deep", 0o555)
    os.chmod(d / "ro", 0o555)
    m = store.ingest(d)
    assert [e.path for e in m.entries] == ["ro/a", "ro/deep/b"]
    assert not d.exists()


def test_same_content_is_stored_once_per_mode(store):
    m1 = store.ingest(fill(store.scratch_dir("a"), {"x": b"same", "y": b"same"}))
    m2 = store.ingest(fill(store.scratch_dir("b"), {"z": b"same"}))
    assert len(blob_files(store)) == 1
    m3 = store.ingest(fill(store.scratch_dir("c"), {"z": b"same"}, exe={"z"}))
    assert len(blob_files(store)) == 2
    assert m1.entries[0].digest == m2.entries[0].digest == m3.entries[0].digest


def test_ingest_refuses_symlinks_and_stores_no_record(store):
    d = fill(store.scratch_dir("t"), {"a": b"1"})
    (d / "link").symlink_to(d / "a")
    with pytest.raises(StoreError, match="link: symbolic links"):
        store.ingest(d)
    assert store.action_keys() == []


def test_action_record_round_trip(store):
    m = store.ingest(fill(store.scratch_dir("t"), {"a": b"1"}))
    store.put_action(record("k1", m))
    got = store.get_action("k1")
    assert got == record("k1", m)
    assert store.get_action("k2") is None
    assert store.action_keys() == ["k1"]


def test_record_of_other_format_is_a_miss_and_garbage_is_corrupt(store):
    m = store.ingest(fill(store.scratch_dir("t"), {"a": b"1"}))
    store.put_action(record("k1", m))
    d = json.loads(store.cache.get("action:k1"))
    d["format"] = 0
    store.cache.set("action:k1", json.dumps(d))
    assert store.get_action("k1") is None
    store.cache.set("action:k1", "{not json")
    with pytest.raises(CacheCorrupt, match="k1"):
        store.get_action("k1")


def test_put_action_refuses_missing_blobs(store):
    m = store.ingest(fill(store.scratch_dir("t"), {"a": b"1"}))
    store.blob_path(m.entries[0].digest).unlink()
    with pytest.raises(StoreError, match="blob for a"):
        store.put_action(record("k", m))
    assert store.get_action("k") is None


def corrupt(path: Path, data: bytes | None = None) -> None:
    os.chmod(path, 0o644)
    raw = path.read_bytes()
    path.write_bytes(data if data is not None else bytes([raw[0] ^ 1]) + raw[1:])


def test_missing_or_corrupt_names_the_bad_blobs(store):
    m = store.ingest(fill(store.scratch_dir("t"), {"a": b"aaaa", "b": b"bbbb", "c": b"cccc"}))
    pa, pb = (store.blob_path(e.digest) for e in m.entries[:2])
    pa.unlink()
    corrupt(pb)
    problems = store.missing_or_corrupt(m)
    assert len(problems) == 2
    assert problems[0].startswith("a: blob") and "missing" in problems[0] and pa.name in problems[0]
    assert problems[1].startswith("b: blob") and "corrupt" in problems[1] and pb.name in problems[1]
    corrupt(pb, b"bb")  # a different size is caught without hashing
    assert "size 2" in store.missing_or_corrupt(m)[1]


def test_reingest_after_corruption_repairs_the_blob(store):
    m = store.ingest(fill(store.scratch_dir("t"), {"a": b"aaaa"}))
    corrupt(store.blob_path(m.entries[0].digest))
    assert store.missing_or_corrupt(m)
    store.ingest(fill(store.scratch_dir("t"), {"a": b"aaaa"}))  # the rebuild
    assert store.missing_or_corrupt(m) == []
    assert store.verify() == []


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_disk_full_raises_store_error_and_leaves_no_broken_blob(store, monkeypatch, fail):
    real = getattr(os, fail)
    calls = []

    def failing(*a, **k):
        calls.append(a)
        if len(calls) == 2:  # the second file hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(store_mod.os, fail, failing)
    d = fill(store.scratch_dir("t"), {"a": b"1" * 100, "b": b"2" * 100, "c": b"3" * 100})
    with pytest.raises(StoreError, match="No space left"):
        store.ingest(d)
    monkeypatch.setattr(store_mod.os, fail, real)
    assert store.action_keys() == []
    assert store.verify() == []  # whatever reached blobs/ is complete
    assert len(blob_files(store)) == 1


def test_scratch_of_a_live_store_is_kept_and_of_a_dead_one_removed(tmp_path):
    a = Store(tmp_path / "c")
    mine = a.scratch_dir("x")
    (mine / "f").write_bytes(b"1")
    b = Store(tmp_path / "c")  # another builder opening the same cache
    assert (mine / "f").exists()
    code = textwrap.dedent(f"""
        import os
        from modelbuild.store import Store
        s = Store({str(tmp_path / 'c')!r})
        d = s.scratch_dir("y")
        (d / "f").write_bytes(b"x")
        print(d, flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    dead = Path(out.stdout.strip())
    assert dead.exists()
    c = Store(tmp_path / "c")
    assert not dead.parent.exists()
    assert (mine / "f").exists()
    for s in (a, b, c):
        s.close()
    assert not mine.exists()


CHURN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from modelbuild.store import Store, ActionRecord
    s = Store(sys.argv[1])
    seed = int(sys.argv[2])
    i = 0
    while True:
        d = s.scratch_dir("t")
        for j in range(3):
            (d / f"f{j}").write_bytes(os.urandom(((seed + i + j) % 4) << 19))
        (d / "same").write_bytes(b"shared content" * 1000)
        m = s.ingest(d)
        s.put_action(ActionRecord(f"k{seed}-{i}", "command", "t", m, {}, "", 0.0, 0.0))
        print(i, flush=True)
        i += 1
""")


def check_consistent(root: Path) -> None:
    s = Store(root)
    try:
        assert s.verify() == []
        for key in s.action_keys():
            rec = s.get_action(key)
            assert s.missing_or_corrupt(rec.manifest) == []
        assert os.listdir(s.tmp) == []  # the dead builder's scratch is gone
    finally:
        s.close()


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_the_store_consistent(tmp_path):
    root = tmp_path / "c"
    for n, delay in enumerate([0.05, 0.3, 0.6, 0.9, 1.3]):
        p = subprocess.Popen([sys.executable, "-c", CHURN, str(root), str(n * 1000)],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        check_consistent(root)
    s = Store(root)
    assert len(s.action_keys()) > 0  # the churn did get records in
    s.close()


CONCURRENT = textwrap.dedent("""
    import sys
    from modelbuild.store import Store
    s = Store(sys.argv[1])
    payload = bytes(range(256)) * 8192
    digests = set()
    for i in range(25):
        d = s.scratch_dir("t")
        (d / "w.bin").write_bytes(payload)
        (d / f"own{sys.argv[2]}").write_bytes(sys.argv[2].encode() * (i + 1))
        m = s.ingest(d)
        digests.add(m.entries[-1].digest)
        assert s.missing_or_corrupt(m) == [], s.missing_or_corrupt(m)
    print(len(digests))
""")


@pytest.mark.slow
def test_two_processes_ingesting_the_same_content(tmp_path):
    root = tmp_path / "c"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(root), n],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in ("1", "2")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "1"
    s = Store(root)
    assert s.verify() == []
    assert s.stats()["blobs"] == 1 + 2 * 25
    s.close()


LOCKER = textwrap.dedent("""
    import os, sys, time
    from modelbuild.store import Store
    s = Store(sys.argv[1])
    with s.lock("b3:the-key"):
        with open(sys.argv[2], "a") as f:
            f.write(f"start {os.getpid()}\\n"); f.flush()
            time.sleep(0.3)
            f.write(f"end {os.getpid()}\\n")
""")


def test_lock_excludes_another_process(tmp_path):
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / "c"), str(log)])
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = log.read_text().split()
    # Pairs of (start pid, end pid) never interleave.
    events = list(zip(lines[0::2], lines[1::2]))
    assert [e[0] for e in events] == ["start", "end", "start", "end"]
    assert events[0][1] == events[1][1] and events[2][1] == events[3][1]


def test_gc_keeps_what_is_asked_and_frees_the_rest(store):
    keep = store.ingest(fill(store.scratch_dir("a"), {"a": b"keep", "s": b"shared"}))
    drop = store.ingest(fill(store.scratch_dir("b"), {"b": b"drop" * 100, "s": b"shared"}))
    store.put_action(record("keep", keep))
    store.put_action(record("drop", drop))
    report = store.gc({"keep"}, grace_s=0)
    assert report["actions_removed"] == 1 and report["actions_kept"] == 1
    assert report["blobs_removed"] == 1 and report["bytes_freed"] == 400
    assert store.get_action("drop") is None
    assert store.missing_or_corrupt(keep) == []
    assert store.verify() == []


def test_gc_grace_period_protects_fresh_blobs(store):
    store.ingest(fill(store.scratch_dir("a"), {"a": b"in flight"}))
    assert store.gc(set())["blobs_removed"] == 0
    assert store.gc(set(), grace_s=0)["blobs_removed"] == 1


def test_verify_reports_corrupt_blob_and_dangling_record(store):
    m = store.ingest(fill(store.scratch_dir("a"), {"a": b"aaaa", "b": b"bbbb"}))
    store.put_action(record("k", m))
    corrupt(store.blob_path(m.entries[0].digest))
    store.blob_path(m.entries[1].digest).unlink()
    problems = store.verify()
    assert any("corrupt" in p for p in problems)
    assert any("k" in p and "missing" in p for p in problems)


def test_stats_and_clear(store):
    m = store.ingest(fill(store.scratch_dir("a"), {"a": b"12345"}))
    store.put_action(record("k", m))
    st = store.stats()
    assert (st["actions"], st["blobs"], st["blob_bytes"]) == (1, 1, 5)
    store.clear()
    st = store.stats()
    assert (st["actions"], st["blobs"], st["blob_bytes"]) == (0, 0, 0)
    assert store.get_action("k") is None
