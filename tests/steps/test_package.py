"""The package step: the app layout (model.pte, tokenizer, metadata.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelbuild.errors import RecipeError, StepError
from modelbuild.steps.package import PackageStep
from modelbuild.testing import as_artifact, run_step

import llm_artifacts as A


def _fake_pte(root: Path, program: dict, tokenizer: bytes | None = b'{"fake": true}') -> Path:
    """A hand-made pte artifact: packaging reads files, not the program itself."""
    root.mkdir(parents=True)
    (root / "model.pte").write_bytes(b"PTE-BYTES" * 10)
    if tokenizer is not None:
        (root / "tokenizer.json").write_bytes(tokenizer)
    (root / "program.json").write_text(json.dumps(program))
    return root


PROGRAM = {
    "kind": "llm",
    "family": "llama3_2",
    "backend": "xnnpack",
    "dtype": "bf16",
    "tokenizer": "tokenizer.json",
    "metadata": {"get_bos_id": 128000, "get_eos_ids": [128009, 128001], "get_max_seq_len": 128},
    "quantization": [{"linear": "8da4w", "group_size": 32, "hqq": True}],
    "source": {"format": "hf", "source": "hf://meta-llama/Llama-3.2-1B-Instruct", "revision": "abc123"},
}


def test_layout_and_metadata(tmp_path):
    pte = _fake_pte(tmp_path / "pte", PROGRAM)
    art = run_step(PackageStep, {"model_name": "llama-1b"}, {"pte": as_artifact(pte, "pte")}, tmp_path / "out")
    assert sorted(p.name for p in art.path.iterdir()) == ["metadata.json", "model.pte", "tokenizer.json"]
    meta = json.loads((art.path / "metadata.json").read_text())
    assert meta["model_name"] == "llama-1b"
    assert meta["backend"] == "xnnpack"
    assert meta["bos_id"] == 128000 and meta["eos_ids"] == [128009, 128001]
    assert meta["max_seq_len"] == 128
    assert meta["quantization"] == PROGRAM["quantization"]
    assert meta["source"]["revision"] == "abc123"
    pte_bytes = (pte / "model.pte").read_bytes()
    assert meta["files"]["model.pte"] == {"bytes": len(pte_bytes), "sha256": hashlib.sha256(pte_bytes).hexdigest()}
    assert meta["total_bytes"] == len(pte_bytes) + (pte / "tokenizer.json").stat().st_size


def test_package_is_deterministic_and_free_of_paths(tmp_path):
    pte = _fake_pte(tmp_path / "pte", PROGRAM)
    a = run_step(PackageStep, {}, {"pte": as_artifact(pte, "pte")}, tmp_path / "a", target="pkg")
    b = run_step(PackageStep, {}, {"pte": as_artifact(pte, "pte")}, tmp_path / "b", target="pkg")
    text = (a.path / "metadata.json").read_text()
    assert text == (b.path / "metadata.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["model_name"] == "pkg"  # defaults to the target name


def test_single_eos_id_becomes_a_list(tmp_path):
    program = {**PROGRAM, "metadata": {"get_bos_id": 1, "get_eos_id": 2}}
    pte = _fake_pte(tmp_path / "pte", program)
    art = run_step(PackageStep, {}, {"pte": as_artifact(pte, "pte")}, tmp_path / "out")
    assert json.loads((art.path / "metadata.json").read_text())["eos_ids"] == [2]


def test_llm_without_tokenizer_is_a_step_error(tmp_path):
    pte = _fake_pte(tmp_path / "pte", {**PROGRAM, "tokenizer": None}, tokenizer=None)
    with pytest.raises(StepError, match="tokenizer"):
        run_step(PackageStep, {}, {"pte": as_artifact(pte, "pte")}, tmp_path / "out")


def test_incomplete_pte_is_a_step_error(tmp_path):
    root = tmp_path / "pte"
    root.mkdir()
    (root / "model.pte").write_bytes(b"x")
    with pytest.raises(StepError, match="program.json"):
        run_step(PackageStep, {}, {"pte": as_artifact(root, "pte")}, tmp_path / "out")


@pytest.mark.parametrize("name", ["../model.pte", "model.bin", "metadata.json"])
def test_bad_pte_name_is_a_recipe_error(name):
    step = PackageStep()
    with pytest.raises(RecipeError) as err:
        step.check(step.Params(pte_name=name), {"pte": "pte"})
    assert err.value.key == "pte_name"


@pytest.mark.ml
def test_package_of_the_tiny_model(tmp_path):
    pte = A.lowered(A.tiny_export(), "xnnpack")
    art = run_step(PackageStep, {"model_name": "tiny-llama"}, {"pte": as_artifact(pte, "pte")}, tmp_path / "pkg")
    meta = json.loads((art.path / "metadata.json").read_text())
    assert (art.path / "model.pte").read_bytes() == (pte / "model.pte").read_bytes()
    assert meta["tokenizer"] == "tokenizer.json" and (art.path / "tokenizer.json").exists()
    assert meta["bos_id"] == 0 and meta["eos_ids"]
    assert meta["max_seq_len"] == A.MAX_SEQ_LEN
    assert meta["source"]["synthetic"] is True
    assert meta["quantization"] == []
