"""Materialization: methods, atomic replacement, no-op detection, corruption, faults.

Each method is tested by forcing it (``MODELBUILD_MATERIALIZE``); the real
reflink test needs a filesystem with reflinks and says in its skip reason
which one it looked for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from modelbuild import materialize as mat
from modelbuild.errors import CacheCorrupt, StoreError
from modelbuild.hashing import Manifest, manifest_of
from modelbuild.store import Store
from tests.conftest import run_cli


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cache")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _hard_links_unless_a_test_says_otherwise(monkeypatch):
    # Most tests here check hard-link behaviour; pinned, they mean the same on a
    # reflink-capable temp dir. Tests of the other methods set their own.
    monkeypatch.setenv(mat.MODE_ENV, "hardlink")


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
    assert store.materialize(m, dest) == "hardlink"
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


def _assert_private_read_only(store, m, dest):
    """Each file is its own inode (not the blob), read-only, with the blob's mtime."""
    assert manifest_of(dest) == m
    for e in m.entries:
        st, blob = os.stat(dest / e.path), os.stat(store.blob_path(e.digest, e.executable))
        assert (st.st_dev, st.st_ino) != (blob.st_dev, blob.st_ino) and st.st_nlink == 1, e.path
        assert stat.S_IMODE(st.st_mode) == (0o555 if e.executable else 0o444), e.path
        assert st.st_mtime_ns == mat.CANONICAL_MTIME_NS, e.path


def _tamper(path: Path, data: bytes) -> None:
    """What a user (or root) can still do to a read-only output."""
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_copy_fallback_gives_private_read_only_files(store, tmp_path, monkeypatch):
    def no_link(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(mat.os, "link", no_link)
    m = ingest(store, FILES, exe={"bin/tool"})
    dest = tmp_path / "out"
    assert store.materialize(m, dest) == "copy"
    _assert_private_read_only(store, m, dest)
    assert store.materialize(m, dest) == "unchanged"
    _tamper(dest / "model.pte", b"edited")  # editing a copy cannot hurt the store
    assert store.verify() == []
    assert store.materialize(m, dest) == "copy"
    _assert_private_read_only(store, m, dest)


@pytest.mark.parametrize("mode", ["hardlink", "copy"])
def test_each_forced_method_is_used(store, tmp_path, monkeypatch, mode):
    monkeypatch.setenv(mat.MODE_ENV, mode)
    m = ingest(store, FILES, exe={"bin/tool"})
    dest = tmp_path / "out"
    assert store.materialize(m, dest) == mode
    if mode == "copy":
        _assert_private_read_only(store, m, dest)
    else:
        for e in m.entries:
            assert os.stat(dest / e.path).st_ino == os.stat(store.blob_path(e.digest, e.executable)).st_ino
    assert store.materialize(m, dest) == "unchanged"


def _can_reflink(directory: Path) -> bool:
    a, b = directory / ".reflink-probe-a", directory / ".reflink-probe-b"
    a.write_bytes(b"x" * 4096)
    try:
        with open(a, "rb") as src, open(b, "wb") as dst:
            fcntl.ioctl(dst.fileno(), mat.FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


@pytest.mark.parametrize("setting", ["reflink", None])
def test_reflink_first_falls_back_to_hard_links_where_it_cannot(store, tmp_path, monkeypatch, setting):
    """Forced or by default, reflink is tried first; on ext4 (no reflinks) hard links are used.

    Which path ran here is printed (-s shows it); test_real_reflink_* tests
    the reflink itself on a filesystem that has them.
    """
    if setting is None:
        monkeypatch.delenv(mat.MODE_ENV)
    else:
        monkeypatch.setenv(mat.MODE_ENV, setting)
    m = ingest(store, FILES, exe={"bin/tool"})
    capable = _can_reflink(tmp_path)
    got = store.materialize(m, tmp_path / "out")
    print(f"{tmp_path}: reflinks {'work: reflink ran' if capable else 'unsupported: hard links ran'}")
    assert got == ("reflink" if capable else "hardlink")
    if got == "reflink":
        _assert_private_read_only(store, m, tmp_path / "out")


def test_an_unknown_method_is_a_store_error(store, tmp_path, monkeypatch):
    monkeypatch.setenv(mat.MODE_ENV, "symlink")
    m = ingest(store, {"a": b"aaaa"})
    with pytest.raises(StoreError, match="MODELBUILD_MATERIALIZE='symlink': expected one of reflink, hardlink, copy"):
        store.materialize(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_copy_made_writable_is_placed_again(store, tmp_path, monkeypatch):
    monkeypatch.setenv(mat.MODE_ENV, "copy")
    m = ingest(store, {"a": b"aaaa"})
    dest = tmp_path / "out"
    store.materialize(m, dest)
    os.chmod(dest / "a", 0o644)  # same content, but no longer protected
    assert store.materialize(m, dest) == "copy"
    _assert_private_read_only(store, m, dest)


@pytest.mark.slow
def test_next_build_replaces_an_edited_copy_even_on_the_no_op_path(chain, monkeypatch):
    """Through the CLI: the no-op fast path watches out/, so an edited copy is restored."""
    env = {mat.MODE_ENV: "copy"}
    assert run_cli("build", cwd=chain.root, env=env).returncode == 0
    out = chain.out / "c" / "c.txt"
    good = out.read_bytes()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o444 and os.stat(out).st_nlink == 1
    time.sleep(2.1)  # past the racy window: the next build may take the fast path
    assert run_cli("build", cwd=chain.root, env=env).returncode == 0  # records the no-op state
    _tamper(out, b"tampered\n")
    again = run_cli("build", "--json", cwd=chain.root, env=env)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == good
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o444


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


def test_the_sweep_removes_what_killed_restores_left_and_nothing_else(store, tmp_path):
    out = tmp_path / "out"
    (out / "kept").mkdir(parents=True)
    left = [out / ".a.mb-4242-0badf00d", out / ".b.c.mb-old-deadbeef"]
    for path in left:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "half").write_bytes(b"x")
        os.chmod(path / "sub", 0o555)
    others = [out / ".a.mb-notours", out / ".hidden", out / "a.mb-1-0badf00d"]
    for path in others:
        path.write_text("not scratch")
    assert store.sweep_scratch(out) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["kept", *(p.name for p in others)])
    assert store.sweep_scratch(tmp_path / "no-out-yet") == 0


def test_the_sweep_waits_for_a_restore_in_progress(store, tmp_path):
    """A scratch tree is a leftover only if it is still there once its output's lock is held:
    a concurrent build writing it holds the lock, and renames it into place before letting go."""
    import threading

    out = tmp_path / "out"
    scratch = out / ".t.mb-4242-0badf00d"
    scratch.mkdir(parents=True)
    swept: list[int] = []
    with mat._locked(mat._out_lock(store.locks, out / "t")):
        thread = threading.Thread(target=lambda: swept.append(store.sweep_scratch(out)))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and scratch.exists()  # waiting for the lock, not removing a live tree
        os.rename(scratch, out / "t")  # the restore completes
    thread.join(10)
    assert swept == [0] and (out / "t").is_dir()


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the real reflink ---------------------------------------------------------------

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000


def _extents_shared(path: Path) -> bool:
    """True if every data extent of ``path`` is shared with another file (FIEMAP)."""
    count = 64
    buf = bytearray(struct.pack("=QQLLLL", 0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, count, 0) + bytes(56 * count))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, buf)
    mapped = struct.unpack_from("=L", buf, 20)[0]
    flags = [struct.unpack_from("=L", buf, 32 + 56 * i + 40)[0] for i in range(mapped)]
    return mapped > 0 and all(f & _FIEMAP_EXTENT_SHARED for f in flags)


@pytest.fixture(scope="session")
def reflink_dir(tmp_path_factory):
    """A directory on a filesystem with reflinks.

    In order: ``$MODELBUILD_TEST_REFLINK_DIR``; the temp dir itself (btrfs,
    XFS); else, as root with ``mkfs.xfs`` (xfsprogs) and a loop device, a
    320 MB sparse XFS image mounted for the session. Skips naming what is missing.
    """
    given = os.environ.get("MODELBUILD_TEST_REFLINK_DIR")
    if given:
        path = Path(given) / f"mb-test-{os.getpid()}"
        path.mkdir(parents=True, exist_ok=True)
        if not _can_reflink(path):
            pytest.fail(f"MODELBUILD_TEST_REFLINK_DIR={given} has no reflinks")
        yield path
        mat.remove_tree(path)
        return
    base = tmp_path_factory.mktemp("reflink")
    if _can_reflink(base):
        yield base
        return
    missing = [why for why, ok in (("root", os.geteuid() == 0), ("mkfs.xfs (xfsprogs)", shutil.which("mkfs.xfs")),
                                   ("mount", shutil.which("mount")), ("/dev/loop-control", os.path.exists("/dev/loop-control")))
               if not ok]
    if missing:
        pytest.skip(f"reflink path not tested: the temp dir has no reflinks (hard links ran instead) and a loop-mounted "
                    f"XFS needs {', '.join(missing)}; or set MODELBUILD_TEST_REFLINK_DIR")
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    for cmd in (["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], ["mount", "-o", "loop", str(image), str(mnt)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"reflink path not tested: `{' '.join(cmd[:3])} ...` failed here ({done.stderr.strip()[:200]}); "
                        f"hard links ran instead; or set MODELBUILD_TEST_REFLINK_DIR")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink(missing_ok=True)


def test_real_reflink_shares_blocks_and_is_read_only(reflink_dir, monkeypatch):
    monkeypatch.delenv(mat.MODE_ENV)  # the default: reflink first
    with Store(reflink_dir / "cache") as s:
        m = ingest(s, FILES, exe={"bin/tool"})
        dest = reflink_dir / "out" / "t"
        assert s.materialize(m, dest) == "reflink"
        _assert_private_read_only(s, m, dest)
        model = next(e for e in m.entries if e.path == "model.pte")
        assert _extents_shared(dest / "model.pte") and _extents_shared(s.blob_path(model.digest))
        assert s.materialize(m, dest) == "unchanged"
        # Edited all the same: the blob keeps its bytes, and the next restore replaces the file.
        _tamper(dest / "model.pte", b"E" * model.size)
        assert s.verify() == [] and s.missing_or_corrupt(m) == []
        assert s.materialize(m, dest) == "reflink"
        _assert_private_read_only(s, m, dest)
        # Forcing the other methods works on this filesystem too.
        monkeypatch.setenv(mat.MODE_ENV, "hardlink")
        assert s.materialize(m, reflink_dir / "out" / "h") == "hardlink"
        monkeypatch.setenv(mat.MODE_ENV, "copy")
        assert s.materialize(m, reflink_dir / "out" / "c") == "copy"
        assert not _extents_shared(reflink_dir / "out" / "c" / "model.pte")


def test_real_reflink_clones_a_local_fetch_and_a_package_input(reflink_dir, monkeypatch):
    """fetch and package place files by the same decision: on XFS, clones (shared blocks, own inodes)."""
    import json

    from modelbuild.steps.fetch import FetchStep
    from modelbuild.steps.package import PackageStep
    from modelbuild.testing import as_artifact, run_step

    monkeypatch.delenv(mat.MODE_ENV)
    project = reflink_dir / "fetch-project"
    (project / "ckpt").mkdir(parents=True)
    (project / "ckpt" / "config.json").write_text("{}")
    (project / "ckpt" / "model.safetensors").write_bytes(os.urandom(1 << 16))
    fetched = run_step(FetchStep, {"source": "ckpt"}, {}, reflink_dir / "fetched", project=project).path
    src, got = project / "ckpt" / "model.safetensors", fetched / "model.safetensors"
    assert got.stat().st_ino != src.stat().st_ino and _extents_shared(got) and _extents_shared(src)

    pte = reflink_dir / "pte"
    pte.mkdir()
    (pte / "model.pte").write_bytes(os.urandom(1 << 16))
    (pte / "program.json").write_text(json.dumps({"kind": "module"}))
    os.chmod(pte / "model.pte", 0o444)  # as a stored input: read-only
    package = run_step(PackageStep, {}, {"pte": as_artifact(pte, "pte")}, reflink_dir / "pkg").path
    assert (package / "model.pte").stat().st_ino != (pte / "model.pte").stat().st_ino
    assert _extents_shared(package / "model.pte")
