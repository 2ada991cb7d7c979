"""The reference step: the original model's outputs, computed once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelbuild.errors import RecipeError, StepError  # noqa: E402
from modelbuild.steps.reference import ReferenceStep  # noqa: E402
from modelbuild.testing import as_artifact, run_step  # noqa: E402

import validation_fixtures as vf  # noqa: E402

pytestmark = pytest.mark.ml

PROMPTS = ["Four score", "Tell me about Alice."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return vf.write_tiny_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def ref(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref"
    run_step(ReferenceStep, {"prompts": PROMPTS, "max_new_tokens": 6, "eval_tokens": 40},
             {"model": as_artifact(ckpt, "checkpoint")}, out)
    return out


def test_llm_reference_records_prompts_greedy_tokens_and_perplexity(ref):
    data = json.loads((ref / "reference.json").read_text())
    assert data["kind"] == "llm"
    assert data["implementation"] == "transformers LlamaForCausalLM"
    assert data["model"]["format"] == "hf"
    assert [p["prompt"] for p in data["prompts"]] == PROMPTS
    for p in data["prompts"]:
        assert p["chat_template"] is True
        assert p["rendered"].startswith("<|begin_of_text|>user: ") and p["rendered"].endswith("assistant:")
        assert p["prompt_ids"][0] == 0  # BOS from the template
        assert 1 <= len(p["greedy_ids"]) <= 6
    ev = data["eval"]
    assert len(ev["ids"]) == 40 and len(ev["nll"]) == 39
    assert 1.0 < ev["perplexity"] < float("inf")


def test_reference_logits_are_the_transformers_models(ref, ckpt):
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    data = json.loads((ref / "reference.json").read_text())
    p = data["prompts"][0]
    seq = p["prompt_ids"] + p["greedy_ids"]
    logits = np.load(ref / p["logits"])
    assert logits.shape == (len(seq), data["vocab_size"])
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([seq])).logits[0].numpy()
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4)
    # The greedy continuation is the argmax of the logits before each new token.
    n = len(p["prompt_ids"])
    assert [int(x) for x in want[n - 1 : n - 1 + len(p["greedy_ids"])].argmax(-1)] == p["greedy_ids"]


def test_reference_is_byte_for_byte_deterministic(ref, ckpt, tmp_path):
    again = tmp_path / "again"
    run_step(ReferenceStep, {"prompts": PROMPTS, "max_new_tokens": 6, "eval_tokens": 40},
             {"model": as_artifact(ckpt, "checkpoint")}, again)
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (ref / name).read_bytes() == (again / name).read_bytes(), name


def test_without_chat_template_the_prompt_is_plain_text(ckpt, tmp_path):
    out = tmp_path / "plain"
    run_step(ReferenceStep, {"prompts": ["Four score"], "max_new_tokens": 2, "eval_tokens": 8, "chat_template": False},
             {"model": as_artifact(ckpt, "checkpoint")}, out)
    p = json.loads((out / "reference.json").read_text())["prompts"][0]
    assert p["rendered"] == "Four score" and p["chat_template"] is False
    assert p["prompt_ids"][0] == 0  # the tokenizer's own post-processor adds BOS
    assert p["runner_num_bos"] == 1  # ... which the runner must be told to add too


def test_module_reference_runs_the_exported_module_on_seeded_inputs(tmp_path):
    import numpy as np
    import torch

    prog = vf.export_module_program(tmp_path / "prog")
    out = tmp_path / "ref"
    run_step(ReferenceStep, {"samples": 3, "seed": 7}, {"model": as_artifact(prog, "exported-program")}, out)
    data = json.loads((out / "reference.json").read_text())
    assert data["kind"] == "module" and len(data["samples"]) == 3
    model = vf.TinyNet.make(0)
    for s in data["samples"]:
        x = np.load(out / s["inputs"][0])
        assert x.shape == (2, 16)
        want = model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(np.load(out / s["outputs"][0]), want, atol=1e-6)
    out2 = tmp_path / "ref2"
    run_step(ReferenceStep, {"samples": 1, "seed": 8}, {"model": as_artifact(prog, "exported-program")}, out2)
    assert not np.array_equal(np.load(out / "input_0_0.npy"), np.load(out2 / "input_0_0.npy"))


def test_llm_exported_program_is_not_a_reference(ckpt, tmp_path):
    prog = vf.export_llm_program(ckpt, tmp_path / "prog", max_seq_len=32)
    with pytest.raises(StepError, match="needs its checkpoint"):
        run_step(ReferenceStep, {}, {"model": as_artifact(prog, "exported-program")}, tmp_path / "out")


def test_check_rejects_an_llm_reference_without_prompts():
    step = ReferenceStep()
    with pytest.raises(RecipeError) as err:
        step.check(step.Params(prompts=[]), {"model": "checkpoint"})
    assert err.value.key == "prompts"
    step.check(step.Params(prompts=[]), {"model": "exported-program"})  # modules need none


def test_step_modules_import_no_heavy_packages():
    code = ("import sys, modelbuild.steps.reference, modelbuild.steps.validate, modelbuild.compare,"
            " modelbuild.ml.validation.report, modelbuild.ml.validation.expectations;"
            "heavy = [m for m in ('torch', 'numpy', 'transformers', 'executorch', 'coremltools') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


PLAIN = {"prompts": ["Four score"], "max_new_tokens": 4, "eval_tokens": 16, "chat_template": False}


@pytest.fixture(scope="module")
def plain_hf_ref(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "ref"
    run_step(ReferenceStep, PLAIN, {"model": as_artifact(ckpt, "checkpoint")}, out)
    return out


def _same_model(a, b, rows_of=lambda p: len(p["prompt_ids"]) + 1):
    import numpy as np

    ra, rb = (json.loads((d / "reference.json").read_text()) for d in (a, b))
    pa, pb = ra["prompts"][0], rb["prompts"][0]
    assert pa["prompt_ids"] == pb["prompt_ids"]
    assert pa["greedy_ids"][0] == pb["greedy_ids"][0]
    n = rows_of(pa)
    np.testing.assert_allclose(np.load(a / pa["logits"])[:n], np.load(b / pb["logits"])[:n], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.load(a / "eval.logits.npy"), np.load(b / "eval.logits.npy"), rtol=0, atol=1e-4)
    return ra, rb


def test_meta_checkpoint_reference_is_the_llama_reference_and_matches_hf(ckpt, plain_hf_ref, tmp_path):
    meta = vf.write_meta_checkpoint(ckpt, tmp_path / "meta")
    out = tmp_path / "ref"
    run_step(ReferenceStep, PLAIN, {"model": as_artifact(meta, "checkpoint")}, out)
    hf, mt = _same_model(plain_hf_ref, out)
    assert mt["implementation"] == "executorch llama Transformer (Meta reference)"
    assert mt["model"]["format"] == "meta"
    assert mt["prompts"][0]["greedy_ids"] == hf["prompts"][0]["greedy_ids"]
    assert mt["eos_ids"] == hf["eos_ids"] == [1, 2]


def test_gguf_checkpoint_reference_runs_transformers_on_the_gguf_file(ckpt, plain_hf_ref, tmp_path):
    from modelbuild.ml.llm import gguf_io  # transformers needs accelerate (ml extra) to load GGUF files
    d = tmp_path / "gguf"
    d.mkdir()
    gguf_io.write_gguf_from_hf(ckpt, d / "model.gguf")
    (d / "checkpoint.json").write_text(json.dumps({"format": "gguf"}))
    out = tmp_path / "ref"
    run_step(ReferenceStep, PLAIN, {"model": as_artifact(d, "checkpoint")}, out)
    _, gg = _same_model(plain_hf_ref, out)
    assert gg["implementation"] == "transformers LlamaForCausalLM" and gg["model"]["format"] == "gguf"


def test_bf16_reference_is_close_to_fp32_and_says_so(ckpt, plain_hf_ref, tmp_path):
    import numpy as np

    out = tmp_path / "bf16"
    run_step(ReferenceStep, {**PLAIN, "dtype": "bf16"}, {"model": as_artifact(ckpt, "checkpoint")}, out)
    data = json.loads((out / "reference.json").read_text())
    assert data["model"]["dtype"] == "bf16"
    a, b = np.load(plain_hf_ref / "eval.logits.npy"), np.load(out / "eval.logits.npy")
    assert a.dtype == b.dtype == np.float32
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.99 < cos < 1.0  # close, but not the same computation
    with pytest.raises(RecipeError) as err:
        ReferenceStep().check(ReferenceStep.Params(dtype="bf16"), {"model": "exported-program"})
    assert err.value.key == "dtype"
