"""The shipped tiny-llama graph, built once per test session through the engine.

Uses the repository's own recipes/ with a session-scoped cache and out/ dir,
so every e2e test shares one build (a couple of minutes on 2 cores) and later
builds in the session are incremental, exactly as a user's would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class TinyLlama:
    def __init__(self, root: Path):
        self.cache = root / "cache"
        self.out = root / "out"

    def build(self, *targets: str, **kwargs):
        from modelbuild.api import build

        return build(list(targets), project=REPO, cache_dir=self.cache, out_dir=self.out, jobs=2, **kwargs)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    env = TinyLlama(tmp_path_factory.mktemp("tiny-llama"))
    first = env.build()  # the recipes' default target: tiny-llama
    assert first.ok, {n: (r.status, r.reason, str(r.log)) for n, r in first.targets.items()}
    env.first = first
    return env
