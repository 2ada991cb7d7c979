"""A floating hf:// revision (``main``) is resolved to its commit when the key is computed.

Against a loopback Hub whose ``main`` moves between builds: the next build
refetches (once the remembered resolution is older than its TTL, or at once
with ``--refresh``); offline, the last resolution is used and the decision says
so; a 40-hex revision is pinned and never asked about.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import HubServer  # noqa: E402

OLD = {"config.json": b'{"model_type": "llama", "hidden_size": 8}', "model.safetensors": b"\x01" * 1024}
NEW = {"config.json": b'{"model_type": "llama", "hidden_size": 16}', "model.safetensors": b"\x02" * 1024}
RECIPE = '[targets.ckpt]\nstep = "fetch"\nsource = "hf://org/tiny"\n{extra}files = ["*.json", "*.safetensors"]\n'


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "MODELBUILD_RESOLVE_TTL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with HubServer({"org/tiny": dict(OLD)}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def move_main(hub: HubServer, files: dict[str, bytes]) -> str:
    """Push a new commit to main."""
    hub.repos["org/tiny"] = dict(files)
    hub.commits["org/tiny"] = hashlib.sha1(json.dumps(sorted((k, v.hex()) for k, v in files.items())).encode()).hexdigest()
    return hub.commits["org/tiny"]


def checkpoint(result) -> dict:
    return json.loads((result.targets["ckpt"].out / "checkpoint.json").read_text())


def revision_calls(hub: HubServer) -> int:
    return sum("/revision/" in r.path for r in hub.requests)


@pytest.mark.slow
def test_moved_branch_is_refetched(project, hub, monkeypatch):
    monkeypatch.setenv("MODELBUILD_RESOLVE_TTL", "0")  # ask the Hub at every build
    project.recipe(RECIPE.format(extra=""))
    old = hub.commits["org/tiny"]
    first = project.build("ckpt", jobs=1)
    assert first.ok, first.targets["ckpt"].reason
    assert checkpoint(first)["resolved_commit"] == old
    assert checkpoint(first)["revision"] == "main"  # the name as written, beside the commit
    again = project.build("ckpt", jobs=1)
    assert again.targets["ckpt"].status == "cached"

    new = move_main(hub, NEW)
    moved = project.build("ckpt", jobs=1)
    res = moved.targets["ckpt"]
    assert res.status == "built", res.reason
    assert checkpoint(moved)["resolved_commit"] == new
    assert (res.out / "config.json").read_bytes() == NEW["config.json"]
    assert f"revision main@{old} -> main@{new}" in res.reason


@pytest.mark.slow
def test_remembered_resolution_and_refresh_through_the_cli(project, hub):
    project.recipe(RECIPE.format(extra=""))
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(project.root.parent / "hub-cache")}
    b = run_cli("build", "ckpt", "--project", str(project.root), cwd=project.root, env=env)
    assert b.returncode == 0, b.stderr
    move_main(hub, NEW)
    # Within the TTL the remembered commit is used, and plan says how old it is.
    p = run_cli("plan", "ckpt", "--project", str(project.root), cwd=project.root, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "hit", p.stdout
    assert "as resolved" in p.stdout and "--refresh" in p.stdout
    calls = revision_calls(hub)
    # --refresh asks the Hub now: plan predicts the rebuild, build does it.
    p = run_cli("plan", "ckpt", "--refresh", "--project", str(project.root), cwd=project.root, env=env)
    assert p.stdout.split()[0] == "miss" and "revision main@" in p.stdout, p.stdout
    assert revision_calls(hub) > calls
    b = run_cli("build", "ckpt", "--refresh", "--project", str(project.root), cwd=project.root, env=env)
    assert b.returncode == 0, b.stderr
    assert (project.out / "ckpt" / "config.json").read_bytes() == NEW["config.json"]
    b = run_cli("build", "ckpt", "--project", str(project.root), cwd=project.root, env=env)
    assert b.returncode == 0 and "up to date" in b.stderr, b.stderr


@pytest.mark.slow
def test_offline_uses_the_last_resolution_and_says_so(project, hub, monkeypatch):
    monkeypatch.setenv("MODELBUILD_RESOLVE_TTL", "0")
    project.recipe(RECIPE.format(extra=""))
    old = hub.commits["org/tiny"]
    assert project.build("ckpt", jobs=1).ok
    move_main(hub, NEW)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = project.build("ckpt", jobs=1).targets["ckpt"]
    assert offline.status == "cached"
    assert "offline" in offline.reason and old[:12] in offline.reason and "may be stale" in offline.reason
    monkeypatch.delenv("HF_HUB_OFFLINE")

    # The Hub unreachable: the same, with the reason.
    hub.down = True
    down = project.build("ckpt", jobs=1).targets["ckpt"]
    assert down.status == "cached", down.reason
    assert "cannot reach the Hub" in down.reason and "may be stale" in down.reason

    # Nothing remembered (a fresh cache), offline: the Hub cache's refs/main, and the download
    # comes from the Hub cache too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fresh = project.build("ckpt", jobs=1, cache_dir=project.root / "cache2")
    res = fresh.targets["ckpt"]
    assert res.status == "built", res.reason
    assert "refs/main" in res.reason and checkpoint(fresh)["resolved_commit"] == old


@pytest.mark.slow
def test_pinned_commit_is_never_resolved(project, hub, monkeypatch):
    monkeypatch.setenv("MODELBUILD_RESOLVE_TTL", "0")
    old = hub.commits["org/tiny"]
    project.recipe(RECIPE.format(extra=f'revision = "{old}"\n'))
    first = project.build("ckpt", jobs=1)
    assert first.ok and checkpoint(first)["resolved_commit"] == old
    assert first.valid_until_ns is None  # nothing time-bound
    move_main(hub, NEW)
    before = len(hub.requests)  # a pinned build that is cached asks the Hub nothing
    again = project.build("ckpt", jobs=1).targets["ckpt"]
    assert again.status == "cached" and again.reason == "up to date"
    assert len(hub.requests) == before


@pytest.mark.slow
def test_resolution_is_remembered_in_the_cache_for_the_ttl(project, hub, monkeypatch):
    import time

    monkeypatch.setenv("MODELBUILD_RESOLVE_TTL", "3600")
    project.recipe(RECIPE.format(extra=""))
    first = project.build("ckpt", jobs=1)
    assert first.ok
    # The no-op fast path may trust this build only until the resolution expires.
    assert time.time_ns() < first.valid_until_ns <= time.time_ns() + 3600 * 10**9
    calls = revision_calls(hub)
    move_main(hub, NEW)
    res = project.build("ckpt", jobs=1).targets["ckpt"]
    assert res.status == "cached" and "as resolved" in res.reason
    assert revision_calls(hub) == calls  # no request within the TTL
    assert list((project.cache / "resolved").glob("hf-*.json"))
