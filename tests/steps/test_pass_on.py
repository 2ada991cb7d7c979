"""No needless copies: package and fetch pass files on by link or clone, never at the store's expense.

One decision (``modelbuild.materialize.place_file``) for ``out/`` and for the
steps. ``package`` hard-links its ``.pte`` when the input is read-only (a
stored blob as the engine hands it over); ``fetch`` never hard-links a user's
file (storing makes a file read-only with a fixed mtime, and the user may edit
it in place), it clones where the filesystem can and copies elsewhere. The
real reflink is tested in tests/test_materialize.py on a loop-mounted XFS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelbuild import materialize as mat
from modelbuild.steps.package import PackageStep
from modelbuild.store import Store
from modelbuild.testing import as_artifact, run_step

PTE = os.urandom(1 << 20)
PROGRAM = {"kind": "llm", "backend": "xnnpack", "tokenizer": "tokenizer.json",
           "metadata": {"get_bos_id": 1, "get_eos_ids": [2]}}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cache")
    yield s
    s.close()


def _stored_pte(store: Store, out: Path):
    """A pte artifact stored and restored into ``out`` as the engine does it: read-only, linked to blobs."""
    d = store.scratch_dir("pte")
    (d / "model.pte").write_bytes(PTE)
    (d / "tokenizer.json").write_text('{"t": 1}')
    (d / "program.json").write_text(json.dumps(PROGRAM))
    manifest = store.ingest(d)
    store.materialize(manifest, out)
    return manifest


def _digest(manifest, name: str) -> str:
    return next(e.digest for e in manifest.entries if e.path == name)


def test_package_links_a_stored_pte_and_storing_it_adds_no_blob(store, tmp_path, monkeypatch):
    monkeypatch.setenv(mat.MODE_ENV, "hardlink")  # the same meaning on a reflink-capable temp dir
    pte = _stored_pte(store, tmp_path / "out" / "pte")
    blob = store.blob_path(_digest(pte, "model.pte"))
    blobs_before = sorted(p.name for p in store.blobs.rglob("*") if p.is_file())

    scratch = store.scratch_dir("pkg")
    run_step(PackageStep, {}, {"pte": as_artifact(tmp_path / "out" / "pte", "pte")}, scratch)
    assert (scratch / "model.pte").stat().st_ino == blob.stat().st_ino  # no bytes copied
    assert not (scratch / "model.pte").stat().st_mode & 0o222  # cannot be written through (as non-root)
    meta = json.loads((scratch / "metadata.json").read_text())
    assert meta["files"]["model.pte"]["bytes"] == len(PTE)

    pkg = store.ingest(scratch)
    assert _digest(pkg, "model.pte") == _digest(pte, "model.pte")
    # The only new blob is metadata.json; the .pte and the tokenizer are the input's.
    added = sorted(set(p.name for p in store.blobs.rglob("*") if p.is_file()) - set(blobs_before))
    assert added == [store.blob_path(_digest(pkg, "metadata.json")).name]
    assert blob.read_bytes() == PTE and store.verify() == []
    assert store.materialize(pkg, tmp_path / "out" / "pkg") == "hardlink"
    assert store.missing_or_corrupt(pte) == [] and store.missing_or_corrupt(pkg) == []


def test_package_copies_a_writable_input(tmp_path):
    src = tmp_path / "pte"
    src.mkdir()
    (src / "model.pte").write_bytes(PTE)
    (src / "tokenizer.json").write_text('{"t": 1}')
    (src / "program.json").write_text(json.dumps(PROGRAM))
    out = run_step(PackageStep, {}, {"pte": as_artifact(src, "pte")}, tmp_path / "pkg").path
    # Whatever the filesystem offers (clone or copy), never the writable input's own inode.
    assert (out / "model.pte").stat().st_ino != (src / "model.pte").stat().st_ino
    assert (out / "model.pte").read_bytes() == PTE


def test_copy_mode_gives_the_package_its_own_file(store, tmp_path, monkeypatch):
    monkeypatch.setenv(mat.MODE_ENV, "copy")
    _stored_pte(store, tmp_path / "out" / "pte")
    out = run_step(PackageStep, {}, {"pte": as_artifact(tmp_path / "out" / "pte", "pte")}, tmp_path / "pkg").path
    assert (out / "model.pte").stat().st_ino != (tmp_path / "out" / "pte" / "model.pte").stat().st_ino
    assert (out / "model.pte").read_bytes() == PTE


@pytest.mark.slow
def test_a_built_local_fetch_leaves_the_users_files_as_they_were(project, monkeypatch):
    # Hard links are what this filesystem would offer (ext4 here): fetch must still not take them.
    monkeypatch.setenv(mat.MODE_ENV, "hardlink")
    ckpt = project.root / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt / "model.safetensors").write_bytes(b"\x01" * 4096)
    before = {p.name: os.stat(p) for p in ckpt.iterdir()}
    project.recipe('[targets.ckpt]\nstep = "fetch"\nsource = "ckpt"\n')
    result = project.build("ckpt")
    assert project.statuses(result) == {"ckpt": "built"}
    for name, st in before.items():
        now = os.stat(ckpt / name)
        assert (now.st_ino, now.st_nlink, now.st_mode, now.st_mtime_ns) == (st.st_ino, 1, st.st_mode, st.st_mtime_ns)
        assert (project.out / "ckpt" / name).stat().st_ino != st.st_ino
    # An edit in place reaches neither the store nor out/: the next build rebuilds from the new bytes.
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.write(b"\x02")
    assert (project.out / "ckpt" / "model.safetensors").read_bytes() == b"\x01" * 4096
    assert project.statuses(project.build("ckpt")) == {"ckpt": "built"}
