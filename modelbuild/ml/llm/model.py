"""Build ExecuTorch's eager llama ``Transformer`` from a checkpoint.

:func:`load_llm` is the one-call entry point (the validation step's reference
model); :func:`build_transformer` does the work for the export step, which
also needs the loaded checkpoint's metadata and provenance.

Example::

    model, args, tokenizer = load_llm(Path("out/tiny-llama-ckpt"), dtype="fp32", max_seq_len=64)
    logits = model(torch.tensor([[0, 5, 9]]))          # [1, vocab] (last position)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import TORCH_DTYPES, LoadedCheckpoint, load_checkpoint

__all__ = ["load_llm", "build_transformer", "model_args"]


def model_args(
    ckpt_args: dict[str, Any],
    *,
    max_seq_len: int,
    max_context_len: int | None = None,
    use_kv_cache: bool = False,
    use_sdpa_with_kv_cache: bool = False,
    enable_dynamic_shape: bool = False,
    generate_full_logits: bool = False,
):
    """ExecuTorch ``ModelArgs`` for checkpoint args plus the export options."""
    from executorch.examples.models.llama.model_args import ModelArgs

    ctx = max_context_len if max_context_len is not None else max_seq_len
    if ctx < max_seq_len:
        raise ValueError(f"max_context_len ({ctx}) must be >= max_seq_len ({max_seq_len})")
    if use_sdpa_with_kv_cache and not use_kv_cache:
        raise ValueError("use_sdpa_with_kv_cache needs use_kv_cache")
    return ModelArgs(
        max_seq_len=max_seq_len,
        max_context_len=ctx,
        max_batch_size=1,
        use_kv_cache=use_kv_cache,
        # Like export_llama: the flag is recorded in ModelArgs, the custom op is
        # swapped in by the source transforms.
        use_sdpa_with_kv_cache_op=use_sdpa_with_kv_cache,
        generate_full_logits=generate_full_logits,
        enable_dynamic_shape=enable_dynamic_shape,
        **ckpt_args,
    )


def build_transformer(ckpt: LoadedCheckpoint, args, dtype: str = "fp32"):
    """The eager ``Transformer`` with ``ckpt``'s weights, in eval mode, cast to ``dtype``."""
    import torch
    from executorch.examples.models.llama.llama_transformer import construct_transformer

    # Built on the meta device, then the weights are assigned (no second copy
    # of a large model in memory). Rope tables and KV caches are created on
    # the CPU by the model itself.
    with torch.device("meta"):
        model = construct_transformer(args)
    missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False, assign=True)
    missing_weights = [k for k in missing if k.endswith((".weight", ".bias"))]
    if missing_weights:
        raise ValueError(f"checkpoint lacks weights the model needs: {', '.join(missing_weights[:5])}")
    if unexpected:
        raise ValueError(f"checkpoint has weights the model does not use: {', '.join(unexpected[:5])}")
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"model tensors left uninitialized: {', '.join(leftover[:5])}")
    model = model.to(dtype=getattr(torch, TORCH_DTYPES[dtype]))
    return model.eval()


def load_llm(
    checkpoint_dir: Path,
    dtype: str = "fp32",
    max_seq_len: int = 128,
    use_kv_cache: bool = False,
    *,
    max_context_len: int | None = None,
    generate_full_logits: bool = False,
    enable_dynamic_shape: bool | None = None,
    tokenizer_dir: Path | None = None,
):
    """``(model, ModelArgs, tokenizer_path)`` for the checkpoint in ``checkpoint_dir``.

    The model is ExecuTorch's eager llama ``Transformer`` (no source
    transforms): ``model(tokens)`` returns the last position's logits
    ``[batch, vocab]`` (all positions with ``generate_full_logits=True``);
    with ``use_kv_cache=True`` call ``model(tokens, {"input_pos": pos})``;
    ``enable_dynamic_shape`` (default: ``use_kv_cache``) lets such a call take
    several tokens at once (prefill), as the dynamic-shape export does.
    ``tokenizer_path`` is the checkpoint's tokenizer file, or None. For GGUF
    checkpoints the tokenizer is rebuilt into ``tokenizer_dir`` (default: a
    directory under the system temp dir named by the tokenizer's digest).
    """
    ckpt = load_checkpoint(Path(checkpoint_dir), dtype=dtype)
    args = model_args(
        ckpt.model_args,
        max_seq_len=max_seq_len,
        max_context_len=max_context_len,
        use_kv_cache=use_kv_cache,
        enable_dynamic_shape=use_kv_cache if enable_dynamic_shape is None else enable_dynamic_shape,
        generate_full_logits=generate_full_logits,
    )
    model = build_transformer(ckpt, args, dtype)
    tokenizer = ckpt.tokenizer
    rebuilt = ckpt.tokenizer_json.encode() if ckpt.tokenizer_json is not None else ckpt.tokenizer_model
    if rebuilt is not None:
        if tokenizer_dir is None:
            import hashlib
            import tempfile

            # Content-addressed, so repeated loads reuse one file instead of piling up.
            digest = hashlib.sha256(rebuilt).hexdigest()[:16]
            tokenizer_dir = Path(tempfile.gettempdir()) / "modelbuild-gguf-tokenizers" / digest
        tokenizer = ckpt.write_tokenizer(Path(tokenizer_dir))
    return model, args, tokenizer
