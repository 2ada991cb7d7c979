"""The quantize step: torchao schemes and pt2e quantizers applied after export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelbuild.errors import RecipeError, StepError
from modelbuild.steps.quantize import QuantizeStep
from modelbuild.testing import run_step

import llm_artifacts as A


def _check(**params):
    step = QuantizeStep()
    step.check(step.Params(**params), {"program": "exported-program"})


# -- check(): bad combinations are recipe errors, before anything runs ----------


def test_check_needs_a_scheme():
    with pytest.raises(RecipeError) as err:
        _check()
    assert err.value.key == "linear"


@pytest.mark.parametrize("group_size", [-32, 33])
def test_check_rejects_bad_group_size(group_size):
    with pytest.raises(RecipeError) as err:
        _check(linear="8da4w", group_size=group_size)
    assert err.value.key == "group_size"


def test_check_rejects_pt2e_with_linear_scheme():
    with pytest.raises(RecipeError) as err:
        _check(linear="8da4w", pt2e="xnnpack_dynamic")
    assert err.value.key == "pt2e"


def test_check_accepts_per_channel_and_embeddings():
    _check(linear="8da4w", group_size=0)
    _check(embedding_bits=4, embedding_group_size=32)


def test_unknown_scheme_is_a_validation_error():
    with pytest.raises(ValidationError) as err:
        QuantizeStep.Params(linear="3w")
    [error] = err.value.errors()
    assert error["loc"] == ("linear",) and error["type"] == "literal_error"
    assert error["msg"] == "Input should be 'none', '8da4w', '8da8w', '4w' or '8w'"


# -- a tiny generic module ------------------------------------------------------


class _MLP:
    @staticmethod
    def build():
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
        ).eval()


@pytest.fixture(scope="module")
def mlp_program(tmp_path_factory) -> Path:
    import torch

    from modelbuild.ml.program import ProgramInfo, save_program

    model = _MLP.build()
    example = (torch.randn(2, 64, generator=torch.Generator().manual_seed(1)),)
    ep = torch.export.export(model, example)
    out = tmp_path_factory.mktemp("mlp")
    save_program(out, ep, ProgramInfo(kind="module", input_names=["x"], output_names=["y"]), example)
    return out


def _outputs(program: Path):
    import torch

    from modelbuild.ml.program import load_program

    ep, info, example = load_program(program)
    with torch.no_grad():
        return ep.module()(*example), info


def _ops(program: Path) -> set[str]:
    from modelbuild.ml.program import load_program

    ep, _, _ = load_program(program)
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.ml
@pytest.mark.parametrize("scheme", ["8da4w", "8da8w", "4w", "8w"])
def test_linear_schemes_on_a_module(mlp_program, tmp_path, scheme):
    out = run_step(QuantizeStep, {"linear": scheme, "group_size": 32}, {"program": mlp_program}, tmp_path)
    reference, _ = _outputs(mlp_program)
    got, info = _outputs(out.path)
    assert info.quantization == [
        {"linear": scheme, "group_size": 32, "hqq": True, "linears_quantized": 2}
    ]
    ops = _ops(out.path)
    assert "torchao.dequantize_affine.default" in ops
    dynamic = "torchao.choose_qparams_affine.default" in ops
    assert dynamic == scheme.startswith("8da")
    err = (got - reference).abs().max() / reference.abs().max()
    assert 0 < err < (0.2 if "4w" in scheme else 0.05), err


@pytest.mark.ml
def test_embedding_scheme_on_program_without_embedding_is_a_step_error(mlp_program, tmp_path):
    with pytest.raises(StepError, match="no embedding"):
        run_step(QuantizeStep, {"embedding_bits": 8}, {"program": mlp_program}, tmp_path)


@pytest.mark.ml
@pytest.mark.parametrize(
    "scheme",
    # ~100 s on 2 cores whatever the model: ExecuTorch's Core ML quantizer
    # torch.exports each of its ~400 match patterns (conv/bn/add/...) in annotate().
    ["xnnpack_dynamic", "xnnpack_dynamic_qc4", pytest.param("coreml_8a_c8w", marks=pytest.mark.slow)],
)
def test_pt2e_quantizers(mlp_program, tmp_path, scheme):
    out = run_step(QuantizeStep, {"pt2e": scheme}, {"program": mlp_program}, tmp_path / "a")
    got, info = _outputs(out.path)
    reference, _ = _outputs(mlp_program)
    assert info.quantization == [{"pt2e": scheme}]
    assert any(op.startswith("quantized_decomposed.") for op in _ops(out.path))
    err = (got - reference).abs().max() / reference.abs().max()
    assert 0 < err < (0.2 if scheme.endswith("qc4") else 0.05), err


@pytest.mark.ml
def test_pt2e_on_an_already_quantized_program_is_a_step_error(mlp_program, tmp_path):
    first = run_step(QuantizeStep, {"linear": "8w", "group_size": 0}, {"program": mlp_program}, tmp_path / "a")
    with pytest.raises(StepError, match="already"):
        run_step(QuantizeStep, {"pt2e": "xnnpack_dynamic"}, {"program": first.path}, tmp_path / "b")


# -- the tiny LLM ---------------------------------------------------------------


@pytest.mark.ml
def test_8da4w_on_the_tiny_llm():
    out = A.quantized("8da4w", 32)
    info = json.loads((out / "model.json").read_text())
    assert info["quantization"] == [{"linear": "8da4w", "group_size": 32, "hqq": True, "linears_quantized": 15}]
    # Everything downstream needs is carried over.
    assert info["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").exists()
    assert info["use_sdpa_with_kv_cache"] and info["dynamic_shapes"]
    ops = _ops(out)
    assert "torchao.choose_qparams_affine.default" in ops
    assert "llama.custom_sdpa.default" in ops


@pytest.mark.ml
def test_group_size_that_does_not_tile_leaves_linears_in_float(tmp_path):
    # in_features: 64 (q, k, v, o, w1, w3, output) and 192 (w2); 48 tiles only 192.
    out = run_step(
        QuantizeStep, {"linear": "8da4w", "group_size": 48}, {"program": A.program_artifact(A.tiny_export())}, tmp_path
    )
    info = json.loads((out.path / "model.json").read_text())
    assert info["quantization"][-1]["linears_quantized"] == 2


@pytest.mark.ml
def test_embedding_4bit_on_the_tiny_llm(tmp_path):
    import torch

    from modelbuild.ml.program import load_program

    out = run_step(
        QuantizeStep,
        {"embedding_bits": 4, "embedding_group_size": 32},
        {"program": A.program_artifact(A.tiny_export())},
        tmp_path,
    )
    ops = _ops(out.path)
    assert any("embedding_4bit" in op for op in ops)
    assert "aten.embedding.default" not in ops
    ep, info, example = load_program(out.path)
    assert info.quantization[-1]["embeddings_quantized"] == 1
    ref_ep, _, _ = load_program(A.tiny_export())
    with torch.no_grad():
        got, ref = ep.module()(*example), ref_ep.module()(*example)
    assert 0 < (got - ref).abs().max() / ref.abs().max() < 0.2


@pytest.mark.ml
def test_quantize_is_deterministic(tmp_path):
    again = run_step(
        QuantizeStep, {"linear": "8da4w", "group_size": 32}, {"program": A.program_artifact(A.tiny_export())}, tmp_path
    )
    first = A.quantized("8da4w", 32)
    for name in ("program.pt2", "model.json", "example_inputs.pt", "tokenizer.json"):
        assert (again.path / name).read_bytes() == (first / name).read_bytes(), name


@pytest.mark.ml
def test_float_weights_are_freed_as_they_are_replaced(monkeypatch):
    """When the k-th linear is quantized, the k-1 float weights before it are gone.

    Otherwise the float model and the quantized one sit in memory side by side
    (about 1.5x the float model at the peak of a 1B build).
    """
    import weakref

    import torchao.quantization

    from modelbuild.ml.program import load_program
    from modelbuild.ml.quantize import Scheme, quantize_program

    ep, info, example = load_program(A.tiny_export())
    linear_weights = [weakref.ref(t) for name, t in ep.state_dict.items() if name.endswith(".weight") and t.dim() == 2]
    alive_at_call = []
    real = torchao.quantization.quantize_

    def spy(module, config, *args, **kwargs):
        alive_at_call.append(sum(ref() is not None for ref in linear_weights))
        return real(module, config, *args, **kwargs)

    monkeypatch.setattr(torchao.quantization, "quantize_", spy)
    new, record, _ = quantize_program(ep, example, info.torch_dynamic_shapes(), Scheme(linear="8da4w", group_size=32))
    n = record["linears_quantized"]
    assert len(alive_at_call) == n == 15
    start = alive_at_call[0]
    assert start >= n  # the embedding table is a 2-D weight too, never quantized here
    assert alive_at_call == [start - k for k in range(n)]
