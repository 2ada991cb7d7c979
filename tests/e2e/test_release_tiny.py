"""The default ML target rebuilds bit for bit and two releases of it from two caches are identical.

Reuses the session's tiny-llama build (tests/e2e/conftest.py); the only extra
work is one rebuild of the chain in a second cache, which `verify --rebuild`
keeps so the second release comes from a cache that never saw the first.
"""

from __future__ import annotations

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def test_tiny_llama_rebuilds_identically_and_releases_the_same_archive(tiny_llama, tmp_path):
    from modelbuild.api import release, release_verify, verify

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
