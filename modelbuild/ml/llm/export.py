"""``torch.export`` of an LLM checkpoint, the way ExecuTorch's ``export_llm`` does it.

Same model definition (``executorch.examples.models.llama``), same source
transforms (custom SDPA op + custom KV cache for ``use_sdpa_with_kv_cache``,
a backend's own, e.g. Core ML's SDPA and KV cache for ``backend = "coreml"``,
then the dtype cast), same example inputs, dynamic shapes, forward signature
``forward(tokens, {"input_pos": pos})`` and runtime metadata defaults as
``export_llama_lib`` (``_prepare_for_llama_export`` + ``LLMEdgeManager.export``),
so that the lowered program runs in ``TextLLMRunner``.

The canonical ``RemoveRedundantTransposes`` pass ``export_llm`` runs on the
exported graph runs here too, and the transposes it bypasses are dropped: left
in place, each pair splits an XNNPACK partition in two (364 delegate calls
instead of 304 on the SmolLM2-135M shape) and lowering slows down with the
partition count. Anything after ``to_edge`` belongs to the ``lower`` step.

Example::

    ep, info, example = export_llm(Path("ckpt"), LLMExportOptions(use_kv_cache=True))
    save_program(out, ep, info, example, tokenizer=...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LLMExportOptions",
    "export_llm",
    "remove_redundant_transposes",
    "example_inputs_for",
    "dynamic_shapes_for",
    "runtime_metadata",
]


@dataclass(frozen=True)
class LLMExportOptions:
    """The export options of ``export_llm`` that shape the program."""

    dtype: str = "fp32"
    max_seq_len: int = 128
    max_context_len: int | None = None
    use_kv_cache: bool = False
    use_sdpa_with_kv_cache: bool = False
    enable_dynamic_shape: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    #: export_llm traces with dynamo (strict=True). Non-strict tracing gives the
    #: same operators in the same order (placeholders ordered differently, the
    #: shared rope tables lifted once per layer) several times faster and with
    #: a fraction of the memory; see docs/models.md.
    strict: bool = True
    #: A backend whose export-time source transforms apply (export_llm's
    #: ``backend.<name>.enabled``; modelbuild.backends), and its ``backend_options``.
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)


def example_inputs_for(opts: LLMExportOptions, vocab_size: int) -> tuple:
    """Example inputs exactly as ``Llama2Model.get_example_inputs`` makes them."""
    import torch

    if opts.use_kv_cache:
        tokens = [[2, 3, 4]] if opts.enable_dynamic_shape else [[1]]
        return (torch.tensor(tokens, dtype=torch.long), {"input_pos": torch.tensor([0], dtype=torch.long)})
    n = max(3, int(opts.max_seq_len))
    n = n - 1 if opts.enable_dynamic_shape else n
    tokens = torch.arange(n, dtype=torch.long).unsqueeze(0)
    if vocab_size > 1:
        tokens = tokens % (vocab_size - 1) + 1
    return (tokens,)


def dynamic_shapes_for(opts: LLMExportOptions) -> list[dict[str, dict[str, Any]] | None] | None:
    """ProgramInfo-style dynamic shapes matching ``LLMEdgeManager``'s defaults.

    The token dimension is ``Dim("token_dim", max=max_seq_len - 1)`` (min 0,
    torch's default); ``input_pos`` stays static.
    """
    if not opts.enable_dynamic_shape:
        return None
    token = {"1": {"name": "token_dim", "min": 0, "max": opts.max_seq_len - 1}}
    return [token, {"input_pos": None}] if opts.use_kv_cache else [token]


def runtime_metadata(opts: LLMExportOptions, args, implied: dict[str, Any]) -> dict[str, Any]:
    """``_load_llama_model_metadata``'s defaults, then the checkpoint's bos/eos, then the user's."""
    meta: dict[str, Any] = {
        "get_max_seq_len": args.max_seq_len,
        "get_max_context_len": args.max_context_len,
        "get_n_layers": args.n_layers,
        "get_vocab_size": args.vocab_size,
        "use_kv_cache": opts.use_kv_cache,
        "use_sdpa_with_kv_cache": opts.use_sdpa_with_kv_cache,
        "enable_dynamic_shape": opts.enable_dynamic_shape,
    }
    meta.update(implied)
    meta.update(opts.metadata)
    return meta


def _source_transforms(opts: LLMExportOptions):
    """The subset of ``_get_source_transforms`` our options reach, in its order."""
    import torch

    transforms = []
    if opts.use_sdpa_with_kv_cache:
        from executorch.examples.models.llama.source_transformation.custom_kv_cache import (
            replace_kv_cache_with_custom_kv_cache,
        )
        from executorch.examples.models.llama.source_transformation.sdpa import replace_sdpa_with_custom_op

        # Order matters (see export_llama_lib): SDPA first, then the KV cache.
        transforms += [replace_sdpa_with_custom_op, replace_kv_cache_with_custom_kv_cache]
    if opts.backend and opts.use_kv_cache:
        # As export_llama_lib: a backend's attention and KV cache replacements (Core ML's
        # SDPA op and KV cache, ...) apply to KV-cache models, before the dtype cast.
        from modelbuild.backends import get_backend

        transforms += get_backend(opts.backend).source_transforms(opts.backend_options)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[opts.dtype]
    transforms.append(lambda m: m.to(dtype=dtype))
    return transforms


def export_llm(checkpoint_dir: Path, opts: LLMExportOptions, log=lambda msg: None):
    """Export the checkpoint: ``(ExportedProgram, ProgramInfo, example_inputs, LoadedCheckpoint)``."""
    import torch
    from torch.nn.attention import SDPBackend

    from ..program import ProgramInfo, no_stack_traces
    from .checkpoint import load_checkpoint
    from .model import build_transformer, model_args

    clock = _Clock(log)
    ckpt = load_checkpoint(checkpoint_dir, dtype=opts.dtype)
    clock.lap(f"loaded checkpoint: {ckpt.format}, family {ckpt.family.name}, weights {ckpt.checkpoint_dtype}")
    args = model_args(
        ckpt.model_args,
        max_seq_len=opts.max_seq_len,
        max_context_len=opts.max_context_len,
        use_kv_cache=opts.use_kv_cache,
        use_sdpa_with_kv_cache=opts.use_sdpa_with_kv_cache,
        enable_dynamic_shape=opts.enable_dynamic_shape,
    )
    model = build_transformer(ckpt, args, opts.dtype)
    for transform in _source_transforms(opts):
        model = transform(model)
    model = model.eval()
    clock.lap("built the model and applied source transforms")

    example = example_inputs_for(opts, args.vocab_size)
    info = ProgramInfo(
        kind="llm",
        dtype=opts.dtype,
        family=ckpt.family.name,
        max_seq_len=args.max_seq_len,
        max_context_len=args.max_context_len,
        use_kv_cache=opts.use_kv_cache,
        use_sdpa_with_kv_cache=opts.use_sdpa_with_kv_cache,
        enable_dynamic_shape=opts.enable_dynamic_shape,
        dynamic_shapes=dynamic_shapes_for(opts),
        metadata=runtime_metadata(opts, args, ckpt.metadata),
        model_args={
            **ckpt.model_args,
            "max_seq_len": args.max_seq_len,
            "max_context_len": args.max_context_len,
            "use_kv_cache": opts.use_kv_cache,
            "use_sdpa_with_kv_cache_op": opts.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": opts.enable_dynamic_shape,
        },
        input_names=["tokens", "input_pos"] if opts.use_kv_cache else ["tokens"],
        output_names=["logits"],
        source=ckpt.source,
        chat_template=ckpt.chat_template,
        source_transforms={"backend": opts.backend, "options": dict(opts.backend_options)} if opts.backend else {},
    )
    log(f"exporting: inputs {[_describe(x) for x in example]}, dynamic shapes {info.dynamic_shapes}")
    # MATH backend: avoids dynamo errors tracing fused SDPA; no_grad: no training ops.
    with torch.nn.attention.sdpa_kernel([SDPBackend.MATH]), torch.no_grad(), no_stack_traces():
        ep = torch.export.export(model, example, dynamic_shapes=info.torch_dynamic_shapes(), strict=opts.strict)
        clock.lap(f"torch.export (strict={opts.strict})")
        ep = ep.run_decompositions({})
        clock.lap("run_decompositions")
    removed = remove_redundant_transposes(ep)
    clock.lap(f"RemoveRedundantTransposes: {removed} nodes removed")
    return ep, info, example, ckpt


def remove_redundant_transposes(ep) -> int:
    """ExecuTorch's ``RemoveRedundantTransposes`` on ``ep``'s graph, in place; nodes removed.

    The pass reroutes the users of a transpose (or permute) pair that undoes
    itself to the pair's input; the bypassed nodes are then dead and removed.
    Inputs, outputs and the graph signature are unchanged.
    """
    from executorch.extension.llm.export.export_passes import RemoveRedundantTransposes

    gm = ep.graph_module
    before = len(gm.graph.nodes)
    RemoveRedundantTransposes()(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return before - len(gm.graph.nodes)


class _Clock:
    """Logs how long each phase took (the step log, never the artifact)."""

    def __init__(self, log):
        import time

        self._log = log
        self._now = time.monotonic
        self._last = self._now()

    def lap(self, what: str) -> None:
        import resource

        now = self._now()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
        self._log(f"{what} ({now - self._last:.1f} s, peak RSS so far {peak:.2f} GB)")
        self._last = now


def _describe(x) -> str:
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in x.items()) + "}"
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
