"""Core ML (Apple CPU, GPU and Neural Engine) through ExecuTorch's Core ML delegate.

Lowering runs anywhere; running the ``.pte`` needs macOS or iOS. The
delegate's random identifiers are derived from content
(:func:`modelbuild.ml.coreml.delegate.deterministic_coreml_delegate`), so the
same input gives the same bytes.

For LLMs the backend also has export-time source transforms, as export_llm
applies them with ``backend.coreml.enabled``: the export step's ``backend =
"coreml"`` swaps the attention for the Core ML SDPA op (iOS18 and later; the
plain-ops SDPA before) and the KV cache for the Core ML one (an
``index_put_`` Core ML turns into ``slice_update``).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Requirements

from .base import Backend, BackendParams

__all__ = ["CoreML"]

_IOS = {"iOS15": 15, "iOS16": 16, "iOS17": 17, "iOS18": 18}


class CoreML(Backend):
    name = "coreml"
    description = "Apple CPU, GPU and Neural Engine through Core ML (runs on macOS/iOS)"
    delegates = ("CoreMLBackend",)
    runs_on = Requirements(platforms=("macos",))
    toolchain = ("coremltools",)
    static_shapes = True

    class Params(BackendParams):
        compute_units: Literal["cpu_only", "cpu_and_gpu", "cpu_and_ne", "all"] = Field(
            "cpu_only",
            description="Core ML: which compute units the model may use.",
        )
        minimum_deployment_target: Literal["iOS15", "iOS16", "iOS17", "iOS18"] = Field(
            "iOS18",
            description="Core ML: the oldest OS the model must run on.",
        )
        precision: Literal["fp16", "fp32"] = Field(
            "fp16",
            description="Core ML: compute precision.",
        )
        coreml_quantize: Literal["none", "b4w", "c4w"] = Field(
            "none",
            description="Core ML: weight compression at conversion (b4w = int4 blocks of 32, c4w = int4 per channel).",
        )

    def check(self, params) -> None:
        ios = _IOS[params.minimum_deployment_target]
        if params.coreml_quantize == "b4w" and ios < 18:
            raise RecipeError("per-block int4 weights (b4w) need minimum_deployment_target iOS18", key="coreml_quantize")
        if params.coreml_quantize == "c4w" and ios < 16:
            raise RecipeError("Core ML weight quantization needs minimum_deployment_target iOS16 or later", key="coreml_quantize")

    def check_program(self, params, info) -> list[str]:
        if info.kind == "llm" and info.enable_dynamic_shape:
            # As export_llm: "Dynamic shape is not supported with coreml".
            raise StepError("Core ML takes static shapes only; export it with enable_dynamic_shape = false")
        notes = []
        if info.use_sdpa_with_kv_cache:
            notes.append(
                "note: the program uses the custom sdpa op, which Core ML cannot take; attention stays on "
                "the CPU (export with use_sdpa_with_kv_cache = false for a Core ML-only graph)"
            )
        exported_for = getattr(info, "source_transforms", None) or {}
        if exported_for.get("backend") == "coreml":
            ios = exported_for.get("options", {}).get("minimum_deployment_target", "iOS18")
            if _IOS[ios] >= 18 and _IOS[params.minimum_deployment_target] < 18:
                raise StepError(
                    "the program was exported with the Core ML SDPA op (iOS18 and later) but "
                    f"minimum_deployment_target is {params.minimum_deployment_target}: export it with "
                    f"backend_options = {{ minimum_deployment_target = \"{params.minimum_deployment_target}\" }}"
                )
        return notes

    def runtime_detail(self) -> str:
        return "the .pte delegates to coreml, which only runs on Apple platforms"

    def partitioners(self, params, info, log):
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        units = {
            "cpu_only": ct.ComputeUnit.CPU_ONLY,
            "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
            "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
            "all": ct.ComputeUnit.ALL,
        }[params.compute_units]
        target = getattr(ct.target, params.minimum_deployment_target)
        precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}[params.precision]
        quantizer_config = None
        if params.coreml_quantize == "b4w":
            quantizer_config = {
                "mode": "linear_symmetric",
                "dtype": "int4",
                "granularity": "per_block",
                "block_size": 32,
                "weight_threshold": 512,
            }
        elif params.coreml_quantize == "c4w":
            quantizer_config = {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_channel"}
        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=target,
            compute_precision=precision,
            compute_unit=units,
            model_type=CoreMLBackend.MODEL_TYPE.MODEL,
            op_linear_quantizer_config=quantizer_config,
        )
        # As export_llm: the OSS Core ML runtime does not manage state, so the
        # KV cache buffers stay with ExecuTorch.
        return [CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=False)]

    def prepare(self, ep, params) -> None:
        _persist_buffers(ep)

    def lowering(self, params):
        from modelbuild.ml.coreml.delegate import deterministic_coreml_delegate

        return deterministic_coreml_delegate()

    # -- export time ----------------------------------------------------------------

    def export_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - {"minimum_deployment_target"})
        if unknown:
            raise RecipeError(
                f"unknown Core ML export option {unknown[0]!r} (known: minimum_deployment_target)",
                key=f"backend_options.{unknown[0]}",
            )
        ios = options.get("minimum_deployment_target", "iOS18")
        if ios not in _IOS:
            raise RecipeError(f"minimum_deployment_target must be one of {', '.join(_IOS)} (got {ios!r})",
                              key="backend_options.minimum_deployment_target")
        return {"minimum_deployment_target": ios}

    def load_ops(self) -> None:
        import executorch.examples.models.llama.source_transformation.sdpa  # noqa: F401 - registers coreml::sdpa

    def source_transforms(self, options: Mapping[str, Any]) -> list:
        """export_llm's Core ML transforms for a KV-cache LLM (``_get_source_transforms``, coreml branch)."""
        from executorch.examples.models.llama.source_transformation.sdpa import (
            replace_kv_cache_with_coreml_kv_cache,
            replace_sdpa_with_coreml_sdpa,
            replace_sdpa_with_simple_sdpa,
        )

        ios = _IOS[self.export_options(options)["minimum_deployment_target"]]
        # iOS 18 introduced a fused SDPA op; before it, SDPA in plain ops.
        sdpa = replace_sdpa_with_coreml_sdpa if ios >= 18 else replace_sdpa_with_simple_sdpa
        return [sdpa, replace_kv_cache_with_coreml_kv_cache]


def _persist_buffers(ep) -> None:
    """Turn non-persistent buffers into persistent ones, in place.

    The Core ML partitioner keeps some ops from decomposing, which makes
    ``to_edge_transform_and_lower`` unlift the program; torch 2.13's unlifting
    then fails on non-persistent buffers (rope tables, masks) with a KeyError.
    The values are unchanged; only where the program keeps them moves.
    """
    from torch.export.graph_signature import InputKind

    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.BUFFER and spec.persistent is False and spec.target in ep._constants:
            ep._state_dict[spec.target] = ep._constants.pop(spec.target)
            spec.persistent = True
