"""The ``lower`` step: exported-program -> pte (an ExecuTorch program for one backend).

Recipe example::

    [targets.tiny-llama-pte]
    step = "lower"
    inputs = { program = "tiny-llama-export" }
    backend = "xnnpack"

    [targets.llama-1b-coreml-pte]
    step = "lower"
    inputs = { program = "llama-1b-coreml-export" }
    backend = "coreml"
    compute_units = "cpu_and_ne"
    minimum_deployment_target = "iOS18"
    coreml_quantize = "b4w"

The artifact holds ``model.pte`` (with the runtime metadata methods the LLM
runner reads), ``partition.json`` (ops delegated per backend and ops left on
the portable CPU path, counted from the lowered program), ``program.json``
(what package and validate need: kind, backend, metadata, tokenizer, ...) and
the tokenizer file, so that downstream steps need only this artifact.
"""

from __future__ import annotations

import shutil
from typing import Literal, Mapping

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

__all__ = ["LowerStep", "default_metadata"]

_IOS = {"iOS15": 15, "iOS16": 16, "iOS17": 17, "iOS18": 18}
#: The parameters that apply to one backend only (recorded in program.json's "lower").
_BACKEND_PARAMS = {
    "coreml": ("compute_units", "minimum_deployment_target", "precision", "coreml_quantize"),
    "xnnpack": ("xnnpack_ops", "xnnpack_bf16"),
}


def default_metadata(info) -> dict:
    """The runner metadata of ``info``, with the LLM defaults export_llm writes filled in."""
    meta = dict(info.metadata)
    if info.kind == "llm":
        defaults = {
            "get_max_seq_len": info.max_seq_len,
            "get_max_context_len": info.max_context_len or info.max_seq_len,
            "use_kv_cache": info.use_kv_cache,
            "use_sdpa_with_kv_cache": info.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": info.enable_dynamic_shape,
        }
        for key, value in defaults.items():
            if value is not None:
                meta.setdefault(key, value)
    return meta


class LowerStep(Step):
    """Lower an exported program to an ExecuTorch .pte for one backend."""

    name = "lower"
    version = 1
    description = "Lower an exported program to an ExecuTorch .pte (xnnpack, coreml, mps, portable)"
    inputs = {"program": Input(kinds=("exported-program",), doc="the exported (optionally quantized) program")}
    output = "pte"
    toolchain = ("torch", "executorch", "torchao", "coremltools")

    class Params(Params):
        backend: Literal["xnnpack", "coreml", "mps", "portable"] = Field(
            "xnnpack",
            description="Target backend. ``mps`` is deprecated upstream; ``portable`` delegates nothing.",
        )
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
        xnnpack_ops: Literal["all", "quantized_linears"] = Field(
            "all",
            description="XNNPACK: ``all`` delegates every op XNNPACK takes, dynamically quantized linears first "
            "(export_llm -X --xnnpack-extended-ops); ``quantized_linears`` only the dynamically quantized "
            "linears (export_llm -X).",
        )
        xnnpack_bf16: bool = Field(
            False,
            description="XNNPACK: delegate bf16 ops too (export_llm backend.xnnpack.enable_bf16). Without it every "
            "op of a bf16 program, quantized linears included, stays on the portable path. The device needs "
            "XNNPACK's bf16 kernels.",
        )

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        for backend, keys in _BACKEND_PARAMS.items():
            if params.backend == backend:
                continue
            for key in keys:
                if getattr(params, key) != type(params).model_fields[key].default:
                    raise RecipeError(f"{key} applies only to backend = \"{backend}\" (backend is {params.backend!r})", key=key)
        if params.backend != "coreml":
            return
        ios = _IOS[params.minimum_deployment_target]
        if params.coreml_quantize == "b4w" and ios < 18:
            raise RecipeError("per-block int4 weights (b4w) need minimum_deployment_target iOS18", key="coreml_quantize")
        if params.coreml_quantize == "c4w" and ios < 16:
            raise RecipeError("Core ML weight quantization needs minimum_deployment_target iOS16 or later", key="coreml_quantize")

    def run(self, ctx: StepContext) -> None:
        from modelbuild.ml.lower import BackendUnavailable, LowerOptions, lower_program
        from modelbuild.ml.program import INFO_FILE, ProgramInfo, load_program

        p = ctx.params
        program = ctx.inputs["program"]
        # Judge the program from its small model.json before loading its weights.
        info = ProgramInfo.from_json(program.file(INFO_FILE).read_text())
        if p.backend == "mps":
            ctx.log("warning: backend 'mps' is deprecated upstream; prefer backend = \"coreml\"")
        if p.backend == "coreml" and info.kind == "llm" and info.enable_dynamic_shape:
            # As export_llm: "Dynamic shape is not supported with coreml".
            raise StepError(
                f"Core ML takes static shapes only; export {program.target} with enable_dynamic_shape = false"
            )
        if p.backend == "coreml" and info.use_sdpa_with_kv_cache:
            ctx.log(
                "note: the program uses the custom sdpa op, which Core ML cannot take; attention stays on "
                "the CPU (export with use_sdpa_with_kv_cache = false for a Core ML-only graph)"
            )
        ep, info, _ = load_program(program.path)
        options = LowerOptions(
            backend=p.backend,
            compute_units=p.compute_units,
            minimum_deployment_target=p.minimum_deployment_target,
            precision=p.precision,
            coreml_quantize=None if p.coreml_quantize == "none" else p.coreml_quantize,
            xnnpack_ops=p.xnnpack_ops,
            xnnpack_bf16=p.xnnpack_bf16,
        )
        metadata = default_metadata(info)
        try:
            result = lower_program(ep, options, ctx.out / "model.pte", constant_methods=metadata)
        except BackendUnavailable as err:
            raise StepError(str(err)) from None
        for line in result.log:
            ctx.log(line)

        partition = dict(result.partition)
        partition["backend"] = p.backend
        ctx.write_json("partition.json", partition)
        left = partition["portable"].get("aten.linear.default", 0)
        warning = ""
        if p.backend == "xnnpack" and info.quantization and info.dtype == "bf16" and left and not p.xnnpack_bf16:
            warning = (
                f"; warning: {left} linears of this quantized bf16 program run on the portable path "
                "(set xnnpack_bf16 = true to delegate them)"
            )

        if info.tokenizer:
            src = program.file(info.tokenizer)
            if not src.exists():
                raise StepError(f"the exported program names tokenizer {info.tokenizer!r} but does not contain it")
            shutil.copyfile(src, ctx.out / info.tokenizer)

        summary = {
            "kind": info.kind,
            "family": info.family,
            "dtype": info.dtype,
            "backend": p.backend,
            "lower": {k: getattr(p, k) for k in _BACKEND_PARAMS.get(p.backend, ())},
            "deprecated_backend": p.backend == "mps",
            "metadata": metadata,
            "tokenizer": info.tokenizer,
            "max_seq_len": info.max_seq_len,
            "max_context_len": info.max_context_len,
            "use_kv_cache": info.use_kv_cache,
            "use_sdpa_with_kv_cache": info.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": info.enable_dynamic_shape,
            "input_names": info.input_names,
            "output_names": info.output_names,
            "model_args": info.model_args,
            "quantization": info.quantization,
            "source": info.source,
            "pte_bytes": result.size,
            "format_version": 1,
        }
        ctx.write_json("program.json", summary)
        totals = partition["totals"]
        ctx.summary = (
            f"{p.backend}{' (deprecated upstream)' if p.backend == 'mps' else ''}: "
            f"{result.size / 1e6:.2f} MB, {totals['delegated']} ops delegated, "
            f"{totals['portable']} on the portable CPU path{warning}"
        )
        ctx.log(ctx.summary)
