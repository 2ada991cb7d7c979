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


@pytest.mark.ml
def test_xnnpack_lowering_is_deterministic(fp32_pte):
    again = A.lowered(A.tiny_export(), "xnnpack", tag="again")
    assert (again / "model.pte").read_bytes() == (fp32_pte / "model.pte").read_bytes()
    for name in ("partition.json", "program.json"):
        assert (again / name).read_bytes() == (fp32_pte / name).read_bytes()


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


@pytest.mark.ml
def test_quantized_linears_only_delegates_just_the_8da4w_linears():
    everything = json.loads((A.lowered(A.quantized(), "xnnpack") / "partition.json").read_text())
    linears = json.loads((A.lowered(A.quantized(), "xnnpack", xnnpack_ops="quantized_linears") / "partition.json").read_text())
    assert len(everything["delegated"]["XnnpackBackend"]) > 1
    assert set(linears["delegated"]["XnnpackBackend"]) <= {"aten.linear.default", "aten.view_copy.default",
                                                         "quantized_decomposed.choose_qparams.tensor",
                                                         "quantized_decomposed.quantize_per_token.default",
                                                         "quantized_decomposed.dequantize_per_token.default",
                                                         "torchao.choose_qparams_affine.default",
                                                         "torchao.quantize_affine.default",
                                                         "torchao.dequantize_affine.default"}
    assert linears["delegated"]["XnnpackBackend"]["aten.linear.default"] == 15
    assert "aten.mul.Tensor" in linears["portable"] and "aten.mul.Tensor" not in everything["portable"]


@pytest.mark.ml
def test_bf16_quantized_linears_need_xnnpack_bf16(tmp_path):
    """As export_llm on ExecuTorch 1.5: bf16 8da4w linears stay portable unless bf16 delegation is on."""
    from modelbuild.steps.export import ExportStep
    from modelbuild.steps.quantize import QuantizeStep
    from modelbuild.testing import as_artifact

    export = tmp_path / "export"
    run_step(ExportStep, {"dtype": "bf16", "max_seq_len": A.MAX_SEQ_LEN, "use_kv_cache": True,
                          "use_sdpa_with_kv_cache": True},
             {"checkpoint": as_artifact(A.tiny_checkpoint(), "checkpoint", "ckpt")}, export)
    quantized = tmp_path / "q"
    run_step(QuantizeStep, {"linear": "8da4w", "group_size": 32}, {"program": A.program_artifact(export)}, quantized)

    def lower(name, **params):
        out = tmp_path / name
        run_step(LowerStep, {"backend": "xnnpack", "xnnpack_ops": "quantized_linears", **params},
                 {"program": A.program_artifact(quantized)}, out)
        return json.loads((out / "partition.json").read_text()), (out / "model.pte").stat().st_size

    (plain, plain_size), (bf16, bf16_size) = lower("plain"), lower("bf16", xnnpack_bf16=True)
    assert plain["totals"]["delegated"] == 0 and plain["portable"]["aten.linear.default"] == 15
    assert bf16["delegated"]["XnnpackBackend"]["aten.linear.default"] == 15
    assert "aten.linear.default" not in bf16["portable"]
    assert bf16_size < plain_size  # XNNPACK packs the int4 weights; the portable path keeps them as int8
