"""The README's main job, end to end: the default target builds, is incremental,
a quantization tweak reruns only what it touches, and it rebuilds bit for bit
and releases the same archive from two caches.

One file, so that pytest-xdist (``--dist loadfile``) runs every test sharing
the session's tiny-llama build (tests/e2e/conftest.py) in the same worker.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ml]


def test_default_target_builds_a_package(tiny_llama):
    statuses = {n: r.status for n, r in tiny_llama.first.targets.items()}
    assert statuses == {"tiny-llama-ckpt": "built", "tiny-llama-export": "built", "tiny-llama-pte": "built", "tiny-llama": "built"}
    pkg = tiny_llama.out / "tiny-llama"
    assert (pkg / "model.pte").stat().st_size > 1000
    meta = json.loads((pkg / "metadata.json").read_text())
    assert meta["backend"] == "xnnpack"
    assert (pkg / meta["tokenizer"]).is_file()


def test_rebuild_is_all_hits(tiny_llama):
    again = tiny_llama.build()
    assert {r.status for r in again.targets.values()} == {"cached"}
    assert again.targets["tiny-llama"].digest == tiny_llama.first.targets["tiny-llama"].digest


def test_group_size_change_reruns_quantize_and_after_only(tiny_llama):
    base = tiny_llama.build("tiny-llama-8da4w-pkg")
    assert base.ok, {n: (r.status, r.reason) for n, r in base.targets.items()}
    assert base.targets["tiny-llama-export"].status == "cached"  # shared with the fp32 chain
    tweaked = tiny_llama.build("tiny-llama-8da4w-pkg", overrides=["targets.tiny-llama-8da4w.group_size=64"])
    assert tweaked.ok, {n: (r.status, r.reason) for n, r in tweaked.targets.items()}
    status = {n: r.status for n, r in tweaked.targets.items()}
    assert status["tiny-llama-ckpt"] == "cached" and status["tiny-llama-export"] == "cached"
    assert status["tiny-llama-8da4w"] == "built" and status["tiny-llama-8da4w-pte"] == "built"
    assert status["tiny-llama-8da4w-pkg"] == "built"
    assert tweaked.targets["tiny-llama-8da4w"].reason == "params changed: group_size 32 -> 64"
    assert tweaked.targets["tiny-llama-8da4w-pte"].reason.startswith("input changed: program (digest ")


def test_plan_after_build_is_all_hits(tiny_llama):
    from modelbuild.api import plan

    from .conftest import REPO

    result = plan(["tiny-llama"], project=REPO, cache_dir=tiny_llama.cache)
    assert [r.decision for r in result.rows] == ["hit"] * 4


def test_tiny_llama_rebuilds_identically_and_releases_the_same_archive(tiny_llama, tmp_path):
    """Reuses the session's build; the only extra work is one rebuild of the
    chain in a second cache, which `verify --rebuild` keeps so the second
    release comes from a cache that never saw the first."""
    from modelbuild.api import release, release_verify, verify

    from .conftest import REPO

    second = tmp_path / "second"
    report = verify("tiny-llama", rebuild=True, project=REPO, cache_dir=tiny_llama.cache, out_dir=tiny_llama.out,
                    jobs=2, scratch=second)
    assert report.ok, [d.line() for d in report.differences]
    assert set(report.targets) >= {"tiny-llama-ckpt", "tiny-llama-export", "tiny-llama-pte", "tiny-llama"}

    common = dict(project=REPO, jobs=2, check_rebuild=False)
    a = release(["tiny-llama"], cache_dir=tiny_llama.cache, out_dir=tiny_llama.out, output=tmp_path / "a", **common)
    b = release(["tiny-llama"], cache_dir=second / "cache", out_dir=second / "out", output=tmp_path / "b", **common)
    assert a.bundle.archive_sha256 == b.bundle.archive_sha256
    assert "tiny-llama/model.pte" in a.bundle.manifest["files"]
    assert release_verify(a.bundle.directory).ok
