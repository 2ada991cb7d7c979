"""Reproducible Core ML artifacts: two builds give byte-identical .mlpackage trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import coremltools as ct  # noqa: E402

from modelbuild.ml.coreml.save import DATE_KEY, canonicalize_mlpackage, deterministic_save, spec_path  # noqa: E402
from modelbuild.ml.models.programs import tiny_llama_program, tinyconv_program  # noqa: E402

pytestmark = pytest.mark.ml

# Each build runs in its own interpreter (fresh UUID state, a different hash
# seed, a different output and scratch directory), like two separate caches.
BUILD = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path
    from modelbuild.testing import run_step
    from modelbuild.steps.coreml import CoreMLStep
    program, out, params = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    run_step(CoreMLStep, params, {"program": program}, out / "coreml")
    """
)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build(program: Path, out: Path, params: dict, hash_seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env.pop("SOURCE_DATE_EPOCH", None)
    subprocess.run(
        [sys.executable, "-c", BUILD, str(program), str(out), json.dumps(params)],
        check=True,
        capture_output=True,
        env=env,
    )


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    differing = [name for name in ta if ta[name] != tb[name]]
    assert differing == [], f"files differ between builds: {differing}"


@pytest.fixture(scope="module")
def conv_program(tmp_path_factory):
    return tinyconv_program(tmp_path_factory.mktemp("conv"), size=32, dynamic=(16, 64))


@pytest.fixture(scope="module")
def llama_program(tmp_path_factory):
    return tiny_llama_program(tmp_path_factory.mktemp("llama"), max_seq_len=16)


# The convnet package and its palettized variant, each built from scratch in
# two caches (fresh processes), are compared byte for byte by
# test_coreml_targets_rebuild_identically_and_release_the_same_archive below.


def test_stateful_llm_mlpackage_is_byte_identical(llama_program, tmp_path):
    params = {"minimum_deployment_target": "iOS18"}
    build(llama_program, tmp_path / "a", params, hash_seed="3")
    build(llama_program, tmp_path / "b", params, hash_seed="4")
    assert_identical(tmp_path / "a", tmp_path / "b")


def _convert(program: Path):
    from modelbuild.ml.coreml.convert import ConvertOptions, convert_program
    from modelbuild.ml.program import load_program

    ep, info, example = load_program(program)
    return convert_program(ep, info, example, ConvertOptions()).model


def test_plain_save_is_not_reproducible_but_canonical_save_is(conv_program, tmp_path):
    # The problem being fixed: coremltools' own save differs conversion to conversion.
    model = _convert(conv_program)
    model.save(str(tmp_path / "raw1.mlpackage"))
    _convert(conv_program).save(str(tmp_path / "raw2.mlpackage"))
    raw1, raw2 = tree(tmp_path / "raw1.mlpackage"), tree(tmp_path / "raw2.mlpackage")
    assert raw1["Manifest.json"] != raw2["Manifest.json"]  # random item UUIDs

    deterministic_save(model, tmp_path / "c1.mlpackage")
    deterministic_save(_convert(conv_program), tmp_path / "c2.mlpackage")
    assert_identical(tmp_path / "c1.mlpackage", tmp_path / "c2.mlpackage")
    # and the canonical package still opens, with the same spec
    spec = ct.models.MLModel(str(tmp_path / "c1.mlpackage"), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["image"]


def test_canonicalize_is_idempotent_and_ids_follow_content(conv_program, tmp_path):
    pkg = deterministic_save(_convert(conv_program), tmp_path / "m.mlpackage")
    before = tree(pkg)
    canonicalize_mlpackage(pkg)
    assert tree(pkg) == before
    manifest = json.loads((pkg / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    assert manifest["itemInfoEntries"][root]["path"] == "com.apple.CoreML/model.mlmodel"
    # the same model saved again gets the same identifiers; a changed one does not
    same = deterministic_save(ct.models.MLModel(str(pkg), skip_model_load=True), tmp_path / "s.mlpackage")
    assert json.loads((same / "Manifest.json").read_text())["rootModelIdentifier"] == root
    changed = ct.models.MLModel(str(pkg), skip_model_load=True)
    changed.short_description = "changed"
    other = deterministic_save(changed, tmp_path / "o.mlpackage")
    other_manifest = json.loads((other / "Manifest.json").read_text())
    assert other_manifest["rootModelIdentifier"] != root
    # the weights did not change, so their item keeps its identifier
    weights = lambda m: {k for k, v in m["itemInfoEntries"].items() if v["name"] == "weights"}  # noqa: E731
    assert weights(other_manifest) == weights(manifest)
    assert spec_path(other).read_bytes() != spec_path(pkg).read_bytes()


def test_conversion_date_comes_from_source_date_epoch(conv_program, tmp_path, monkeypatch):
    model = _convert(conv_program)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    pkg = deterministic_save(model, tmp_path / "nodate.mlpackage")
    meta = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec().description.metadata.userDefined
    assert DATE_KEY not in meta
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 22:13:20 UTC
    pkg = deterministic_save(model, tmp_path / "dated.mlpackage")
    meta = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec().description.metadata.userDefined
    assert meta[DATE_KEY] == "2023-11-14"
    pkg2 = deterministic_save(model, tmp_path / "explicit.mlpackage", source_date_epoch=0)
    assert ct.models.MLModel(str(pkg2), skip_model_load=True).get_spec().description.metadata.userDefined[DATE_KEY] == "1970-01-01"


def test_delegate_context_restores_patches():
    import uuid

    from executorch.backends.apple.coreml.compiler import coreml_preprocess as cp

    from modelbuild.ml.coreml.delegate import deterministic_coreml_delegate

    save, pre = ct.models.MLModel.save, cp.CoreMLBackend.__dict__["preprocess_model"]
    with deterministic_coreml_delegate():
        assert cp.uuid is not uuid
        first, second = cp.uuid.uuid4(), cp.uuid.uuid4()
        assert first != second and first.version == 4
    assert cp.uuid is uuid
    assert ct.models.MLModel.save is save
    assert cp.CoreMLBackend.__dict__["preprocess_model"] is pre


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_coreml_targets_rebuild_identically_and_release_the_same_archive(tmp_path):
    """The Core ML package, its palettized variant and the Core ML delegated
    .pte of the vision recipe, built from scratch in two separate caches (each
    step in a fresh process, so fresh UUID state and hash seed): `verify
    --rebuild` finds every file identical, and the two releases are the same
    archive, byte for byte."""
    from modelbuild.api import release, release_verify, verify

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "vision.toml").write_text((REPO / "recipes" / "vision.toml").read_text())
    targets = ["tinyconv-mlpackage-pal4", "tinyconv-coreml-pte"]
    first = dict(project=REPO, recipes=recipes, cache_dir=tmp_path / "a" / "cache", out_dir=tmp_path / "a" / "out", jobs=2)
    second = tmp_path / "b"
    for target in targets:
        report = verify(target, rebuild=True, scratch=second, **first)
        assert report.ok, [d.line() for d in report.differences]
        assert target in report.targets
    common = dict(project=REPO, recipes=recipes, jobs=2, check_rebuild=False)
    a = release(targets, cache_dir=tmp_path / "a" / "cache", out_dir=tmp_path / "a" / "out",
                output=tmp_path / "dist-a", **common)
    b = release(targets, cache_dir=second / "cache", out_dir=second / "out", output=tmp_path / "dist-b", **common)
    files = a.bundle.manifest["files"]
    assert "tinyconv-coreml-pte/model.pte" in files
    # The Core ML delegate's model identifier is in the .pte, derived from content like the rest of it.
    assert b"executorch_" in (tmp_path / "a" / "out" / "tinyconv-coreml-pte" / "model.pte").read_bytes()
    assert any(f.startswith("tinyconv-mlpackage-pal4/") and f.endswith(".mlmodel") for f in files)
    assert a.bundle.archive_sha256 == b.bundle.archive_sha256
    assert release_verify(a.bundle.directory).ok
