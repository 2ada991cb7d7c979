"""The ``quantize`` step: exported-program -> exported-program.

Quantize runs after export, so changing ``group_size`` reruns quantize and
what follows, never fetch or export. Recipe example (export_llm's
``-qmode 8da4w -G 32``, plus ``-E 4,32``)::

    [targets.llama-1b-8da4w]
    step = "quantize"
    inputs = { program = "llama-1b-export" }
    linear = "8da4w"
    group_size = 32
    embedding_bits = 4
    embedding_group_size = 32

Schemes: ``linear`` = 8da4w | 8da8w (int8 dynamic activations, int4/int8
weights) | 4w | 8w (weight-only) with ``group_size`` (0 = per channel) and
``hqq``; ``embedding_bits`` = 4 | 8 with ``embedding_group_size``; ``pt2e`` =
xnnpack_dynamic | xnnpack_dynamic_qc4 | coreml_8a_c8w (backend quantizers, on
a float program only). The applied scheme is appended to the program's
``quantization`` record.
"""

from __future__ import annotations

from typing import Literal, Mapping

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

__all__ = ["QuantizeStep"]


class QuantizeStep(Step):
    """Apply a torchao or pt2e quantization scheme to an exported program."""

    name = "quantize"
    version = 1
    description = "Quantize an exported program (torchao 8da4w/8da8w/4w/8w, 4/8-bit embeddings, pt2e)"
    inputs = {"program": Input(kinds=("exported-program",), doc="the exported program to quantize", in_memory=True)}
    keeps_value = True  # (ep, info, example) for lower in a fused session (tests/test_fused_tiny.py)
    output = "exported-program"
    toolchain = ("torch", "executorch", "torchao")

    class Params(Params):
        linear: Literal["none", "8da4w", "8da8w", "4w", "8w"] = Field(
            "none",
            description="Linear scheme: int8 dynamic activations with int4/int8 weights, or weight-only int4/int8.",
        )
        group_size: int = Field(
            128,
            description="Weights per quantization group along the input dimension; 0 = per output channel.",
        )
        hqq: bool = Field(
            True,
            description="Choose scales with HQQ (scale only) instead of plain min/max (export_llm's default).",
        )
        embedding_bits: Literal[0, 4, 8] = Field(
            0,
            description="Embedding table bits: 0 (leave in float), 4 or 8.",
        )
        embedding_group_size: int = Field(
            0,
            description="Embedding group size; 0 = per row.",
        )
        pt2e: Literal["none", "xnnpack_dynamic", "xnnpack_dynamic_qc4", "coreml_8a_c8w"] = Field(
            "none",
            description="A backend's pt2e quantizer (on a float program only).",
        )

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        if params.linear == "none" and params.embedding_bits == 0 and params.pt2e == "none":
            raise RecipeError("no scheme selected: set linear, embedding_bits or pt2e", key="linear")
        if params.group_size < 0 or (params.group_size and params.group_size % 2):
            raise RecipeError(f"group_size must be 0 (per channel) or a positive even number, got {params.group_size}", key="group_size")
        if params.embedding_group_size < 0:
            raise RecipeError("embedding_group_size must be 0 (per row) or positive", key="embedding_group_size")
        if params.pt2e != "none" and params.linear != "none":
            raise RecipeError(
                f"pt2e quantizer {params.pt2e!r} and linear scheme {params.linear!r} both quantize the linears; pick one",
                key="pt2e",
            )

    def run(self, ctx: StepContext) -> None:
        from modelbuild.ml.program import ProgramInfo, load_program, register_ops, save_program
        from modelbuild.ml.quantize import SchemeError, quantize_program, scheme_from_params

        program = ctx.inputs["program"]
        ep, info, example = ctx.input_value("program", load_program)  # in memory when fused
        register_ops(info)  # what loading registers, also when the program was handed over
        scheme = scheme_from_params(ctx.params)
        if ctx.params.pt2e != "none" and info.quantization:
            raise StepError(
                f"pt2e quantizer {ctx.params.pt2e!r} needs a float program, but {program.target} is already "
                f"quantized ({info.quantization})"
            )
        try:
            new_ep, record, log = quantize_program(ep, example, info.torch_dynamic_shapes(), scheme)
        except SchemeError as err:
            raise StepError(str(err)) from None
        for line in log:
            ctx.log(line)
        info.quantization = [*info.quantization, record]
        tokenizer = program.file(info.tokenizer) if info.tokenizer else None
        save_program(ctx.out, new_ep, info, example_inputs=example, tokenizer=tokenizer)
        ctx.keep_value((new_ep, ProgramInfo.from_json(info.to_json()), tuple(example)))  # as load_program gives it
        parts = [f"{k}={v}" for k, v in record.items()]
        ctx.summary = "quantized: " + ", ".join(parts)
        ctx.log(ctx.summary)
