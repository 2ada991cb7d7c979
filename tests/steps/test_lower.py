"""The lower step: .pte per backend, partition summary, program.json, determinism."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from modelbuild.errors import RecipeError, StepError
from modelbuild.steps.lower import LowerStep
from modelbuild.testing import run_step

import llm_artifacts as A


def _check(**params):
    step = LowerStep()
    step.check(step.Params(**params), {"program": "exported-program"})


# -- check() --------------------------------------------------------------------


def test_core_ml_options_need_the_core_ml_backend():
    with pytest.raises(RecipeError) as err:
        _check(backend="xnnpack", compute_units="cpu_and_ne")
    assert err.value.key == "compute_units"


def test_b4w_needs_ios18():
    with pytest.raises(RecipeError) as err:
        _check(backend="coreml", coreml_quantize="b4w", minimum_deployment_target="iOS17")
    assert err.value.key == "coreml_quantize"
    _check(backend="coreml", coreml_quantize="c4w", minimum_deployment_target="iOS16")


def test_unknown_backend_is_a_validation_error():
    with pytest.raises(ValidationError) as err:
        LowerStep.Params(backend="vulkan-ish")
    [error] = err.value.errors()
    assert error["loc"] == ("backend",) and error["type"] == "literal_error"
    # The registered backends (modelbuild.backends), built-in ones included.
    assert error["msg"].startswith("Input should be 'coreml', 'mps', 'portable', 'vulkan'")


def test_lowering_does_not_import_torch_at_module_level():
    import subprocess
    import sys

    code = "import sys, modelbuild.steps.lower, modelbuild.steps.quantize, modelbuild.steps.package; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- XNNPACK --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_pte():
    return A.lowered(A.tiny_export(), "xnnpack")


@pytest.mark.ml
def test_xnnpack_artifact_layout(fp32_pte):
    assert sorted(p.name for p in fp32_pte.iterdir()) == ["model.pte", "partition.json", "program.json", "tokenizer.json"]
    assert (fp32_pte / "tokenizer.json").read_bytes() == (A.tiny_export() / "tokenizer.json").read_bytes()
    program = json.loads((fp32_pte / "program.json").read_text())
    assert program["backend"] == "xnnpack" and program["kind"] == "llm"
    meta = program["metadata"]
    # The runner metadata export_llm writes, carried into the .pte's constant methods.
    for key in ("get_bos_id", "get_eos_ids", "get_max_seq_len", "get_max_context_len", "use_kv_cache",
                "use_sdpa_with_kv_cache", "enable_dynamic_shape", "get_vocab_size", "get_n_layers"):
        assert key in meta, key
    assert meta["get_max_seq_len"] == A.MAX_SEQ_LEN
    assert program["pte_bytes"] == (fp32_pte / "model.pte").stat().st_size


@pytest.mark.ml
def test_xnnpack_partition_counts_from_the_lowered_program(fp32_pte):
    partition = json.loads((fp32_pte / "partition.json").read_text())
    xnn = partition["delegated"]["XnnpackBackend"]
    assert xnn["aten.linear.default"] == 15
    # Custom SDPA, the KV cache update and the embedding stay on the CPU path.
    assert partition["portable"]["llama.custom_sdpa.default"] == 2
    assert partition["portable"]["llama.update_cache.default"] == 4
    assert partition["portable"]["aten.embedding.default"] == 1
    assert partition["totals"]["delegated"] == sum(xnn.values())
    assert partition["delegates"]["XnnpackBackend"] >= 1


@pytest.mark.ml
def test_pte_metadata_methods_are_in_the_program(fp32_pte):
    from executorch.runtime import Runtime

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

    program = Runtime.get().load_program(fp32_pte / "model.pte")
    methods = set(program.method_names)
    assert {"forward", "get_max_seq_len", "get_bos_id", "get_eos_ids", "use_kv_cache"} <= methods
    assert program.load_method("get_max_seq_len").execute([])[0] == A.MAX_SEQ_LEN


# Two XNNPACK lowerings of one program are byte-identical: checked by
# tests/steps/test_profile.py (the second one also writes an ETRecord, which
# must not change a byte of the .pte, partition.json or program.json), and
# across caches and processes by `verify --rebuild` in tests/e2e/.


# -- portable / mps -------------------------------------------------------------


@pytest.mark.ml
def test_portable_delegates_nothing():
    pte = A.lowered(A.tiny_export(), "portable")
    partition = json.loads((pte / "partition.json").read_text())
    assert partition["delegated"] == {} and partition["totals"]["delegated"] == 0
    assert partition["portable"]["aten.linear.default"] == 15


@pytest.mark.ml
def test_mps_says_it_is_deprecated(tmp_path):
    try:
        import executorch.backends.apple.mps  # noqa: F401
    except ImportError:
        with pytest.raises(StepError, match="deprecated upstream"):
            run_step(LowerStep, {"backend": "mps"}, {"program": A.program_artifact(A.tiny_export())}, tmp_path)
    else:  # pragma: no cover - an install that still ships MPS
        art = run_step(LowerStep, {"backend": "mps"}, {"program": A.program_artifact(A.tiny_export())}, tmp_path)
        assert json.loads((art.path / "program.json").read_text())["deprecated_backend"] is True


# -- Core ML --------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_program():
    # Core ML takes a static graph without ExecuTorch's custom SDPA op (as export_llm --coreml).
    return A.tiny_export(use_sdpa_with_kv_cache=False, enable_dynamic_shape=False, use_kv_cache=False)


@pytest.mark.ml
def test_coreml_lowering_is_content_deterministic(coreml_program):
    first = A.lowered(coreml_program, "coreml", tag="a")
    second = A.lowered(coreml_program, "coreml", tag="b")
    partition = json.loads((first / "partition.json").read_text())
    assert partition["delegated"]["CoreMLBackend"]["aten.linear.default"] == 15
    assert (first / "model.pte").read_bytes() == (second / "model.pte").read_bytes()


@pytest.mark.ml
def test_coreml_refuses_a_dynamic_shape_llm(tmp_path):
    # The shared tiny export has a dynamic token dimension (XNNPACK's).
    with pytest.raises(StepError, match="static shapes"):
        run_step(LowerStep, {"backend": "coreml"}, {"program": A.program_artifact(A.tiny_export())}, tmp_path)


def test_xnnpack_options_need_the_xnnpack_backend():
    for key, value in (("xnnpack_ops", "quantized_linears"), ("xnnpack_bf16", True)):
        with pytest.raises(RecipeError) as err:
            _check(backend="coreml", **{key: value})
        assert err.value.key == key
    _check(backend="xnnpack", xnnpack_ops="quantized_linears", xnnpack_bf16=True)


def _scaled_mlp_program(out, dtype: str):
    """Linear -> RMSNorm-like scale (``aten.mul.Tensor``) -> Linear, exported in ``dtype``:
    what decides which ops XNNPACK takes, on a graph that lowers in seconds
    (the tiny LLM's 8da4w lowering takes a minute)."""
    import torch

    from modelbuild.ml.program import ProgramInfo, save_program

    class ScaledMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)
            self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 128))

        def forward(self, x):
            return self.down(torch.relu(self.up(x)) * self.scale)

    torch.manual_seed(0)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = ScaledMLP().eval().to(kind)
    example = (torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).to(kind),)
    save_program(out, torch.export.export(model, example),
                 ProgramInfo(kind="module", input_names=["x"], output_names=["y"]), example)
    return out


@pytest.fixture(scope="module")
def quantized_mlp(tmp_path_factory):
    """dtype -> the scaled MLP quantized 8da4w (group 32) by the quantize step."""
    from modelbuild.steps.quantize import QuantizeStep

    def make(dtype):
        root = tmp_path_factory.mktemp(f"mlp-{dtype}")
        program = A.program_artifact(_scaled_mlp_program(root / "export", dtype), f"mlp-{dtype}")
        run_step(QuantizeStep, {"linear": "8da4w", "group_size": 32}, {"program": program}, root / "q")
        return root / "q"

    return {dtype: make(dtype) for dtype in ("fp32", "bf16")}


def _lower_quantized(program, out, **params):
    run_step(LowerStep, {"backend": "xnnpack", **params}, {"program": A.program_artifact(program, program.parent.name)}, out)
    return json.loads((out / "partition.json").read_text()), (out / "model.pte").stat().st_size


@pytest.mark.ml
def test_quantized_linears_only_delegates_just_the_8da4w_linears(quantized_mlp, tmp_path):
    everything, _ = _lower_quantized(quantized_mlp["fp32"], tmp_path / "all")
    linears, _ = _lower_quantized(quantized_mlp["fp32"], tmp_path / "linears", xnnpack_ops="quantized_linears")
    assert len(everything["delegated"]["XnnpackBackend"]) > 1
    assert set(linears["delegated"]["XnnpackBackend"]) <= {"aten.linear.default", "aten.view_copy.default",
                                                         "quantized_decomposed.choose_qparams.tensor",
                                                         "quantized_decomposed.quantize_per_token.default",
                                                         "quantized_decomposed.dequantize_per_token.default",
                                                         "torchao.choose_qparams_affine.default",
                                                         "torchao.quantize_affine.default",
                                                         "torchao.dequantize_affine.default"}
    assert linears["delegated"]["XnnpackBackend"]["aten.linear.default"] == 2
    assert "aten.mul.Tensor" in linears["portable"] and "aten.mul.Tensor" not in everything["portable"]


@pytest.mark.ml
def test_bf16_quantized_linears_need_xnnpack_bf16(quantized_mlp, tmp_path):
    """As export_llm on ExecuTorch 1.5: bf16 8da4w linears stay portable unless bf16 delegation is on."""
    plain, plain_size = _lower_quantized(quantized_mlp["bf16"], tmp_path / "plain", xnnpack_ops="quantized_linears")
    bf16, bf16_size = _lower_quantized(quantized_mlp["bf16"], tmp_path / "bf16", xnnpack_ops="quantized_linears",
                                       xnnpack_bf16=True)
    assert plain["totals"]["delegated"] == 0 and plain["portable"]["aten.linear.default"] == 2
    assert bf16["delegated"]["XnnpackBackend"]["aten.linear.default"] == 2
    assert "aten.linear.default" not in bf16["portable"]
    assert bf16_size < plain_size  # XNNPACK packs the int4 weights; the portable path keeps them as int8
