"""Backends with the real toolchain: Vulkan lowering, Core ML LLM export as export_llm, quantize strict parity.

- Vulkan lowers on this host (no GPU needed) and its ``.pte``
  gets the honest "needs a Vulkan runtime" status from ``validate``: the
  pip wheel's ExecuTorch runtime has no Vulkan delegate.
- The export step with ``backend = "coreml"`` gives the same program, operator
  for operator and number for number, as ExecuTorch's own export_llm
  pipeline with ``backend.coreml.enabled`` (its Core ML SDPA and KV cache
  source transforms, static shapes).
- Quantize re-exports non-strict; export_llm traces the quantized model
  strictly. Both give the same program (docs/benchmarks.md).
"""

from __future__ import annotations

import json

import pytest

from modelbuild.errors import PlatformUnavailable, RecipeError
from modelbuild.steps.export import ExportStep
from modelbuild.steps.lower import LowerStep
from modelbuild.steps.validate import ValidateStep
from modelbuild.testing import as_artifact, run_step

import llm_artifacts as A

pytestmark = pytest.mark.ml

SEQ = 32


def _ops(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


# -- Vulkan -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vulkan_pte(tmp_path_factory):
    """The vision example (a small convnet) lowered for Vulkan.

    The tiny LLM lowers too (one Vulkan call, 187 ops, none left on the CPU;
    checked by hand), but Vulkan's lowering passes take minutes on it here.
    """
    from modelbuild.ml.models.programs import tinyconv_program

    program = tinyconv_program(tmp_path_factory.mktemp("conv"), size=32)
    out = tmp_path_factory.mktemp("vulkan-pte")
    run_step(LowerStep, {"backend": "vulkan"}, {"program": A.program_artifact(program, "tinyconv-export")}, out)
    return out


def test_vulkan_lowers_on_this_host(vulkan_pte):
    partition = json.loads((vulkan_pte / "partition.json").read_text())
    assert partition["backend"] == "vulkan"
    # The convolutions, activations and the head on the GPU; the global average pool
    # (mean over H and W) between two Vulkan calls stays on the CPU.
    assert partition["delegates"] == {"VulkanBackend": 2} and partition["portable"] == {"aten.mean.dim": 1}
    assert partition["delegated"]["VulkanBackend"]["aten.convolution.default"] == 3
    program = json.loads((vulkan_pte / "program.json").read_text())
    assert program["backend"] == "vulkan" and program["lower"] == {"vulkan_force_fp16": False}
    assert (vulkan_pte / "model.pte").stat().st_size == program["pte_bytes"] > 0


def test_a_vulkan_pte_needs_a_vulkan_runtime_to_validate(vulkan_pte, tmp_path):
    """The wheel's runtime registers no Vulkan delegate: the distinct status, with the command to run it."""
    from executorch.runtime import Runtime

    assert "VulkanBackend" not in Runtime.get().backend_registry.registered_backend_names
    with pytest.raises(PlatformUnavailable) as err:
        run_step(ValidateStep, {}, {"artifact": as_artifact(vulkan_pte, "pte", "tiny-vulkan-pte"),
                                    "reference": as_artifact(tmp_path, "reference", "tiny-ref")},
                 tmp_path / "out", target="tiny-vulkan-validate")
    assert err.value.needs == "a Vulkan runtime"
    assert err.value.command == "modelbuild build tiny-vulkan-validate"
    assert "EXECUTORCH_BUILD_VULKAN" in err.value.detail


# -- Core ML LLMs as export_llm makes them ----------------------------------------------


def test_coreml_export_options_are_checked():
    step = ExportStep()

    def check(**params):
        step.check(ExportStep.Params.model_validate({"use_kv_cache": True, "enable_dynamic_shape": False, **params}),
                   {"checkpoint": "checkpoint"})

    check(backend="coreml", backend_options={"minimum_deployment_target": "iOS17"})
    for params, key in (
        ({"backend": "coreml", "enable_dynamic_shape": True}, "enable_dynamic_shape"),
        ({"backend": "coreml", "use_kv_cache": False}, "backend"),
        ({"backend": "coreml", "backend_options": {"ios": 18}}, "backend_options.ios"),
        ({"backend": "corml"}, "backend"),
        ({"backend_options": {"minimum_deployment_target": "iOS18"}}, "backend_options"),
    ):
        with pytest.raises(RecipeError) as err:
            check(**params)
        assert err.value.key == key, params


def test_coreml_llm_export_is_export_llms_program(tmp_path):
    """_prepare_for_llama_export + LLMEdgeManager.export with backend.coreml.enabled (iOS18) on the
    same checkpoint gives the same operators, in the same order, and the same numbers."""
    import torch
    from executorch.examples.models.llama.export_llama_lib import _prepare_for_llama_export
    from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType

    from modelbuild.ml.program import load_program
    from test_export import _meta_layout

    meta = _meta_layout(A.tiny_checkpoint(), tmp_path / "meta")
    config = LlmConfig()
    config.base.model_class = ModelType.llama3_2
    config.base.checkpoint = str(meta / "consolidated.00.pth")
    config.base.params = str(meta / "params.json")
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = False
    config.model.enable_dynamic_shape = False
    config.backend.coreml.enabled = True
    config.backend.coreml.ios = 18
    config.export.max_seq_length = SEQ
    config.export.max_context_length = SEQ
    config.export.output_dir = str(tmp_path / "et")
    theirs = _prepare_for_llama_export(config).export()
    theirs.run_canonical_optimizations()

    run_step(ExportStep, {"max_seq_len": SEQ, "use_kv_cache": True, "enable_dynamic_shape": False,
                          "backend": "coreml"}, {"checkpoint": as_artifact(meta, "checkpoint", "ckpt")}, tmp_path / "ours")
    ep, info, example = load_program(tmp_path / "ours")  # registers coreml::sdpa before loading
    assert info.source_transforms == {"backend": "coreml", "options": {"minimum_deployment_target": "iOS18"}}

    their_gm = theirs.pre_autograd_graph_module
    their_gm.graph.eliminate_dead_code()
    ours = _ops(ep.module())
    assert ours == _ops(their_gm)
    # The Core ML transforms are in: Core ML's SDPA op, the index_put cache update.
    assert ours.count("coreml.sdpa.default") == 2 and "aten.index_put.default" in ours
    assert "aten.scaled_dot_product_attention.default" not in ours
    tokens = torch.tensor([[5]])
    with torch.no_grad():
        a = ep.module()(tokens, {"input_pos": torch.tensor([0])})
        b = their_gm(tokens, {"input_pos": torch.tensor([0])})
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# -- quantize: non-strict re-export, export_llm's strict tracing ---------------------------


def test_quantized_reexport_strict_and_non_strict_give_the_same_program():
    import torch

    from modelbuild.ml import quantize as Q
    from modelbuild.ml.program import load_program

    ep, info, example = load_program(A.tiny_export())
    strict = Q.quantize_program(ep, example, info.torch_dynamic_shapes(), Q.Scheme(linear="8da4w", group_size=32),
                                strict=True)[0]
    loose, _, _ = load_program(A.quantized("8da4w", 32))  # the quantize step's (non-strict) output, shared
    assert _ops(strict.graph_module) == _ops(loose.graph_module)
    tokens = (torch.tensor([[3, 9, 27]]), {"input_pos": torch.tensor([0])})
    with torch.no_grad():
        a = loose.module()(*tokens)
        b = strict.module()(*tokens)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
