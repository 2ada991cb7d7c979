"""`fetch` from a local Hugging Face cache snapshot (the layout users really have on disk).

``~/.cache/huggingface/hub/models--ORG--NAME/snapshots/SHA/`` is made of
relative symlinks into ``blobs/`` (and, with huggingface_hub's shared Xet
store, on into ``hub/blobs/<2 hex>/<hash>``). The step follows links that stay
in the repo (or that store), stores the real content, records the snapshot's
commit, and refuses a link that leads elsewhere, naming it. The action key
hashes the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from modelbuild.errors import StepError, StoreError
from modelbuild.hashing import digest_path
from modelbuild.steps.fetch import FetchStep
from modelbuild.step import StepContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import HubServer  # noqa: E402

FILES = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
    "model.safetensors": b"\x05" * 4096,
    "tokenizer.json": b'{"version": "1.0"}',
    "original/params.json": b'{"dim": 8}',
}


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    import huggingface_hub.constants as constants

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def real_cache(cache: Path, monkeypatch) -> tuple[Path, str]:
    """A Hub cache written by huggingface_hub itself (snapshot_download from a loopback Hub)."""
    from huggingface_hub import snapshot_download

    with HubServer({"org/tiny": FILES}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = Path(snapshot_download("org/tiny", cache_dir=str(cache), endpoint=hub.url))
        commit = hub.commits["org/tiny"]
    assert folder == cache / "models--org--tiny" / "snapshots" / commit
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == commit
    link = folder / "config.json"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # ../../blobs/<etag>
    return folder, commit


def shared_store_cache(cache: Path) -> tuple[Path, str]:
    """The layout of huggingface_hub's shared blob store (utils/_shared_blobs.py), written by hand:
    snapshots/SHA/f -> ../../blobs/<etag> -> ../../blobs/<xx>/<xet hash> (a regular file)."""
    repo = cache / "models--org--tiny"
    commit = "c" * 40
    snap = repo / "snapshots" / commit
    store = cache / "blobs"
    store.mkdir(parents=True)
    (store / ".huggingface-shared-blobs").write_text("1\n")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, body in FILES.items():
        xet = hashlib.sha256(b"xet" + body).hexdigest()
        etag = hashlib.sha256(body).hexdigest()
        (store / xet[:2]).mkdir(exist_ok=True)
        (store / xet[:2] / xet).write_bytes(body)
        (repo / "blobs").mkdir(exist_ok=True)
        os.symlink(os.path.relpath(store / xet[:2] / xet, repo / "blobs"), repo / "blobs" / etag)
        pointer = snap / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / etag, pointer.parent), pointer)
    return snap, commit


def run_fetch(params, tmp_path, *, out="out", project=None):
    step = FetchStep()
    parsed = step.Params.model_validate(params)
    step.check(parsed, {})
    project = project or tmp_path
    (tmp_path / out).mkdir()
    (tmp_path / f"work-{out}").mkdir()
    ctx = StepContext(
        target="ckpt", params=parsed, inputs={},
        sources={s: (project / s).resolve() for s in step.sources(parsed)},
        out=tmp_path / out, work=tmp_path / f"work-{out}", jobs=1, project=project,
    )
    step.run(ctx)
    return tmp_path / out


def plain_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "plain"
    for name, body in FILES.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(body)
    return copy


def _check_fetched(out: Path, commit: str, files=FILES) -> None:
    rec = json.loads((out / "checkpoint.json").read_text())
    assert rec["resolved_commit"] == commit
    assert rec["format"] == "hf"
    assert sorted(rec["files"]) == sorted(files)
    for name, body in files.items():
        assert not (out / name).is_symlink()
        assert (out / name).read_bytes() == body
        assert rec["files"][name]["sha256"] == hashlib.sha256(body).hexdigest()


def test_snapshot_written_by_huggingface_hub_is_fetched_with_its_commit(tmp_path, monkeypatch):
    snap, commit = real_cache(tmp_path / "hub", monkeypatch)
    out = run_fetch({"source": str(snap)}, tmp_path)
    _check_fetched(out, commit)
    # A copy, not a link to the user's cache: the stored artifact owns its bytes.
    assert os.stat(out / "config.json").st_ino != os.stat(snap / "config.json").st_ino


def test_snapshot_in_the_shared_blob_store_layout(tmp_path):
    snap, commit = shared_store_cache(tmp_path / "hub")
    out = run_fetch({"source": str(snap)}, tmp_path)
    _check_fetched(out, commit)


def test_snapshot_subdir_and_project_relative_source(tmp_path, monkeypatch):
    project = tmp_path / "project"
    snap, commit = real_cache(project / "hf", monkeypatch)
    rel = snap.relative_to(project).as_posix()
    out = run_fetch({"source": rel, "subdir": "original", "format": "meta"}, tmp_path, project=project)
    rec = json.loads((out / "checkpoint.json").read_text())
    assert rec["resolved_commit"] == commit and sorted(rec["files"]) == ["params.json"]


def test_key_digest_of_a_snapshot_is_the_digest_of_its_content(tmp_path, monkeypatch):
    snap, _ = real_cache(tmp_path / "hub", monkeypatch)
    shared, _ = shared_store_cache(tmp_path / "hub2")
    assert digest_path(snap) == digest_path(plain_copy(tmp_path)) == digest_path(shared)


def test_link_leading_out_of_the_repo_is_an_error_naming_it(tmp_path, monkeypatch):
    snap, _ = real_cache(tmp_path / "hub", monkeypatch)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model")
    os.symlink(os.path.relpath(secret, snap), snap / "extra.txt")
    with pytest.raises(StepError, match=f"{snap / 'extra.txt'}: symbolic link leads outside"):
        run_fetch({"source": str(snap)}, tmp_path)
    with pytest.raises(StoreError, match=f"{snap / 'extra.txt'}"):
        digest_path(snap)
    # Into the blobs of *another* repo of the same cache: outside too.
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    (other / "abc").write_text("x")
    (snap / "extra.txt").unlink()
    os.symlink(os.path.relpath(other / "abc", snap), snap / "extra.txt")
    with pytest.raises(StepError, match="extra.txt: symbolic link leads outside"):
        run_fetch({"source": str(snap)}, tmp_path, out="o2")


def test_plain_directory_follows_only_its_own_links(tmp_path):
    project = tmp_path / "project"
    ckpt = project / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_bytes(FILES["config.json"])
    (ckpt / "weights-v2.safetensors").write_bytes(FILES["model.safetensors"])
    os.symlink("weights-v2.safetensors", ckpt / "model.safetensors")
    out = run_fetch({"source": "ckpt", "files": ["config.json", "model.safetensors"]}, tmp_path, project=project)
    assert (out / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert "resolved_commit" not in json.loads((out / "checkpoint.json").read_text())
    os.symlink(tmp_path / "elsewhere.json", ckpt / "tokenizer.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    with pytest.raises(StepError, match="tokenizer.json: symbolic link leads outside"):
        run_fetch({"source": "ckpt"}, tmp_path, project=project, out="o2")


def test_one_file_of_a_snapshot_keeps_its_name(tmp_path, monkeypatch):
    """A file source that is a link (snapshots/SHA/x.gguf -> ../../blobs/<etag>) is stored as x.gguf."""
    from modelbuild.api import build

    project = tmp_path / "project"
    snap, commit = real_cache(project / "hf", monkeypatch)
    gguf = b"GGUF" + bytes(range(64))
    blob = snap.parent.parent / "blobs" / hashlib.sha256(gguf).hexdigest()
    blob.write_bytes(gguf)
    os.symlink(os.path.relpath(blob, snap), snap / "tiny-q8.gguf")
    (project / "recipes").mkdir(parents=True)
    rel = (snap / "tiny-q8.gguf").relative_to(project).as_posix()
    (project / "recipes" / "ckpt.toml").write_text(f'[targets.ckpt]\nstep = "fetch"\nsource = "{rel}"\n')
    result = build(["ckpt"], project=project, jobs=1)
    res = result.targets["ckpt"]
    assert result.ok, res.reason
    rec = json.loads((res.out / "checkpoint.json").read_text())
    assert sorted(rec["files"]) == ["tiny-q8.gguf"] and rec["format"] == "gguf"
    assert rec["resolved_commit"] == commit
    assert (res.out / "tiny-q8.gguf").read_bytes() == gguf


def test_repo_directory_itself_points_to_the_snapshot_of_main(tmp_path, monkeypatch):
    snap, commit = real_cache(tmp_path / "hub", monkeypatch)
    with pytest.raises(StepError, match=f"snapshots/{commit}"):
        run_fetch({"source": str(snap.parent.parent)}, tmp_path)


@pytest.mark.slow
def test_engine_builds_a_snapshot_and_keeps_it_cached(tmp_path, monkeypatch):
    """Through the engine: the key hashes the snapshot (links followed), the second build is a hit."""
    from modelbuild.api import build

    project = tmp_path / "project"
    snap, commit = real_cache(project / "hf", monkeypatch)
    (project / "recipes").mkdir(parents=True)
    rel = snap.relative_to(project).as_posix()
    (project / "recipes" / "ckpt.toml").write_text(
        f'[targets.ckpt]\nstep = "fetch"\nsource = "{rel}"\nfiles = ["*.json", "*.safetensors"]\n'
    )
    first = build(["ckpt"], project=project, jobs=1)
    result = first.targets["ckpt"]
    assert first.ok, result.reason
    rec = json.loads((result.out / "checkpoint.json").read_text())
    assert rec["resolved_commit"] == commit
    assert (result.out / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    again = build(["ckpt"], project=project, jobs=1)
    assert again.targets["ckpt"].status == "cached"
    # The snapshot's content changes (a new blob behind the same name): rebuilt.
    blob = (snap / "config.json").resolve()
    os.chmod(blob, 0o644)
    blob.write_bytes(json.dumps({"model_type": "llama", "hidden_size": 16}).encode())
    third = build(["ckpt"], project=project, jobs=1)
    assert third.targets["ckpt"].status == "built", third.targets["ckpt"].reason
