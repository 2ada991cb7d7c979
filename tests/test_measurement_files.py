"""Measurement files (a step's timings): kept in the artifact, left out of byte comparisons, named.

A step declares the output files that measure the run (``measurement_files``:
the validate step's ``timings.json``). ``verify --rebuild`` and ``release``
compare every other file byte for byte and list these as "not compared
(measurements)"; a release leaves them out of the archive, so its digest
stays reproducible. Non-ML: the ``stopwatch`` plugin of tests/measured_steps.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modelbuild.api import release, verify
from modelbuild.commands import _print_differences

from .conftest import Project
from .measured_steps import RECIPE, install_measured_steps


def _project(tmp_path, name: str) -> Project:
    p = Project(tmp_path / name)
    p.recipe(RECIPE)
    return p


@pytest.mark.slow
def test_verify_rebuild_names_a_measurement_file_instead_of_failing_on_it(tmp_path, monkeypatch, capsys):
    install_measured_steps(tmp_path, monkeypatch)
    p = _project(tmp_path, "p")
    report = verify("timed", rebuild=True, project=p.root)
    assert report.targets == {"timed": "identical"} and report.ok, report.to_json()
    assert [(n.target, n.file) for n in report.not_compared] == [("timed", "timings.json")]
    assert report.to_json()["not_compared"] == [{"target": "timed", "step": "stopwatch", "file": "timings.json",
                                                 "why": "measurements"}]
    _print_differences(report)  # what `modelbuild verify` prints: never silent about what it skipped
    assert "timed (stopwatch): timings.json: not compared (measurements" in capsys.readouterr().out
    # An undeclared file that differs is a difference, as always.
    leaky = verify("leaky", rebuild=True, project=p.root)
    assert not leaky.ok and leaky.culprits == ["leaky"]
    assert [(d.target, d.file) for d in leaky.differences] == [("leaky", "clock.txt")]
    assert [n.file for n in leaky.not_compared] == ["timings.json"]


@pytest.mark.slow  # two clean caches, as the release tests of tests/test_release.py
def test_release_leaves_measurement_files_out_of_the_archive(tmp_path, monkeypatch):
    install_measured_steps(tmp_path, monkeypatch)
    a, b = _project(tmp_path, "a"), _project(tmp_path, "b")
    ra = release(["timed"], project=a.root, output=a.root / "dist")
    rb = release(["timed"], project=b.root, output=b.root / "dist")
    assert ra.reproducibility == {"timed": "rebuilt identical (not compared: timings.json: measurements)"}
    assert ra.bundle.archive_sha256 == rb.bundle.archive_sha256
    manifest = json.loads((ra.bundle.directory / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"timed/result.txt"}
    assert manifest["chain"]["timed"]["measurement_files"] == ["timings.json"]
    # The built outputs do differ in their measurement file: the archive is the same without it.
    assert (a.out / "timed" / "timings.json").read_bytes() != (b.out / "timed" / "timings.json").read_bytes()


@pytest.mark.slow
def test_cosine_is_the_same_whatever_the_blas_thread_count():
    """The accuracy figures rebuild bit for bit: BLAS's threaded dot product added in an order that
    depended on its thread count (the engine's share of cores), so the last digits of a cosine moved."""
    code = ("import numpy as np; from modelbuild.ml.validation.metrics import compare_arrays;"
            "rng = np.random.default_rng(0); a = rng.standard_normal((64, 4096)); b = a + 1e-6 * rng.standard_normal(a.shape);"
            "print(repr(compare_arrays(a, b)['cosine']))")
    got = {n: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
                             ).stdout.strip() for n in ("1", "2")}
    assert got["1"] == got["2"] and float(got["1"]) > 0.999, got
