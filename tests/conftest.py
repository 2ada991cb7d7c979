"""Shared fixtures: small throwaway projects for engine tests.

The expensive ML fixtures (the tiny model built once per session) live in
tests/e2e/conftest.py so engine tests never import torch.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

# Fails any unmarked test that imports torch/executorch/coremltools/torchao/
# transformers (see the module's docstring); its hooks register from here.
from tests.ml_guard import *  # noqa: E402,F401,F403

# The directory the processes of one run (pytest-xdist workers) share.
pytest_plugins = ["tests.shared_dir"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    # Tests must not pick up a developer's cache or platform override.
    monkeypatch.delenv("MODELBUILD_CACHE_DIR", raising=False)
    monkeypatch.delenv("MODELBUILD_HOST_PLATFORM", raising=False)
    monkeypatch.delenv("MODELBUILD_MATERIALIZE", raising=False)


class Project:
    """A temporary project: write recipes, build, inspect out/ and the cache."""

    def __init__(self, root: Path):
        self.root = root
        (root / "recipes").mkdir(parents=True, exist_ok=True)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def recipe(self, text: str, name: str = "main.toml") -> Path:
        path = self.root / "recipes" / name
        path.write_text(textwrap.dedent(text))
        return path

    def file(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def build(self, *targets: str, **kwargs):
        from modelbuild.api import build

        return build(list(targets), project=self.root, **kwargs)

    def statuses(self, result) -> dict[str, str]:
        return {name: r.status for name, r in result.targets.items()}


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "proj")


CHAIN = """
default = "c"
[vars]
greeting = "hello"

[targets.a]
step = "command"
command = "cat {project}/data.txt > $MODELBUILD_OUT/a.txt; echo ${greeting} >> $MODELBUILD_OUT/a.txt"
deps = ["data.txt"]
outs = ["a.txt"]

[targets.b]
step = "command"
inputs = { src = "a" }
command = "tr a-z A-Z < $MODELBUILD_INPUT_SRC/a.txt > $MODELBUILD_OUT/b.txt"
outs = ["b.txt"]

[targets.c]
step = "command"
inputs = { src = "b" }
command = "rev < $MODELBUILD_INPUT_SRC/b.txt > $MODELBUILD_OUT/c.txt"
outs = ["c.txt"]
"""


@pytest.fixture
def chain(project) -> Project:
    """a -> b -> c, with a reading data.txt."""
    project.recipe(CHAIN)
    project.file("data.txt", "data\n")
    return project


@pytest.fixture
def count_hashes(monkeypatch):
    """Count calls to hash_file made through the hashing module."""
    from modelbuild import hashing

    calls = []
    real = hashing.hash_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashing, "hash_file", counting)
    return calls


def run_cli(*args: str, cwd: Path, env: dict | None = None):
    import subprocess
    import sys

    # A developer's MODELBUILD_CACHE_DIR must not leak in; one passed in ``env`` is used.
    full_env = {k: v for k, v in os.environ.items() if k != "MODELBUILD_CACHE_DIR"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "modelbuild.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
