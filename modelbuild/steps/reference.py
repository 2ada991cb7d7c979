"""The ``reference`` step: the original model's outputs, computed once and cached.

Input ``model`` is an LLM ``checkpoint`` (HF, GGUF or Meta layout: the model
runs in ``transformers`` or the Meta llama reference, eager, fp32) or an
``exported-program`` of a generic module (run eagerly on seeded random
inputs). The output (kind ``reference``) is what ``validate`` compares every
later artifact with; see :mod:`modelbuild.ml.validation.reference` for the
layout.

Example recipe::

    [targets.tiny-llama-ref]
    step = "reference"
    inputs = { model = "tiny-llama-ckpt" }
    prompts = ["Tell me a story.", "The capital of France is"]
    max_new_tokens = 16
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

DEFAULT_PROMPTS = ["Once upon a time", "What is the capital of France?"]


class ReferenceParams(Params):
    #: LLM prompts; the chat template is applied when the tokenizer has one.
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    #: Greedy tokens generated per prompt (fewer if EOS comes first).
    max_new_tokens: int = Field(16, ge=1, le=4096)
    #: Apply the tokenizer's chat template to prompts when it has one.
    chat_template: bool = True
    #: Tokens of the shipped eval text scored for perplexity (capped by the model's context).
    eval_tokens: int = Field(128, ge=2)
    #: LLMs: the precision the original model computes in. fp32 is the faithful
    #: reference; bf16/fp16 halve the memory of a large model (e.g. 1B: ~5 GB in fp32).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Seed of the random inputs (generic modules).
    seed: int = 0
    #: Random input samples (generic modules).
    samples: int = Field(4, ge=1, le=1000)


class ReferenceStep(Step):
    """Run the original model in eager PyTorch and cache its outputs."""

    name = "reference"
    version = 1
    description = "Reference outputs of the original model (eager PyTorch)"
    inputs = {
        "model": Input(
            kinds=("checkpoint", "exported-program"),
            doc="an LLM checkpoint, or the exported program of a generic module",
        )
    }
    output = "reference"
    toolchain = ("torch", "transformers", "numpy", "executorch")
    Params = ReferenceParams

    def check(self, params: ReferenceParams, input_kinds) -> None:
        if input_kinds.get("model") == "exported-program" and params.dtype != "fp32":
            raise RecipeError("dtype applies to LLM checkpoints; a generic module runs as exported", key="dtype")
        if input_kinds.get("model") == "checkpoint" and not params.prompts:
            raise RecipeError("an LLM reference needs at least one prompt", key="prompts")

    def run(self, ctx: StepContext) -> None:
        p: ReferenceParams = ctx.params
        art = ctx.inputs["model"]
        try:
            import torch

            torch.set_num_threads(max(1, ctx.jobs))
            if art.kind == "exported-program":
                from modelbuild.ml.program import ProgramInfo, INFO_FILE

                info = ProgramInfo.from_json(art.file(INFO_FILE).read_text())
                if info.kind == "llm":
                    raise StepError(
                        "reference of an LLM needs its checkpoint (the original model), "
                        "not an exported program: use the fetch target as input 'model'"
                    )
                from modelbuild.ml.validation.reference import module_reference

                ref = module_reference(art.path, ctx.out, seed=p.seed, samples=p.samples, log=ctx.log)
                ctx.summary = f"{p.samples} samples"
            else:
                from modelbuild.ml.validation.reference import llm_reference

                ref = llm_reference(
                    art.path, ctx.out, prompts=p.prompts, max_new_tokens=p.max_new_tokens,
                    chat_template=p.chat_template, eval_tokens=p.eval_tokens, seed=p.seed, dtype=p.dtype,
                    log=ctx.log,
                )
                ctx.summary = (f"{len(p.prompts)} prompts, eval perplexity "
                               f"{ref['eval']['perplexity']:.2f} ({ref['implementation']})")
        except (FileNotFoundError, ValueError) as err:
            raise StepError(f"reference: {err}") from err
