"""LLM checkpoints for the ExecuTorch llama definitions: formats, families, export.

The public entry points (all import torch lazily, inside the call)::

    from modelbuild.ml.llm import load_llm
    model, args, tokenizer = load_llm(checkpoint_dir, dtype="fp32", max_seq_len=128, use_kv_cache=False)

``load_llm(checkpoint_dir, dtype="fp32", max_seq_len=128, use_kv_cache=False,
*, max_context_len=None, generate_full_logits=False, enable_dynamic_shape=None,
tokenizer_dir=None)``
returns ``(model, ModelArgs, tokenizer_path)``: ExecuTorch's eager llama
``Transformer`` (``executorch.examples.models.llama``) with the checkpoint's
weights, in eval mode, in ``dtype``; no source transforms. Without a KV cache,
``model(tokens)`` gives the last position's logits ``[1, vocab]`` (every
position with ``generate_full_logits=True``); with one, call
``model(tokens, {"input_pos": torch.tensor([pos])})`` (several tokens at once
unless ``enable_dynamic_shape=False``). This is the reference
model for validation: the exported program is this model plus export_llm's
source transforms. ``checkpoint_dir`` is a ``checkpoint`` artifact (HF, Meta
or GGUF layout, see :mod:`.checkpoint`).

Modules (one concept each):

- :mod:`.families`: family -> ModelArgs mapping and weight names, family inference (no torch)
- :mod:`.hybrid_families`: phi_4_mini, lfm2, qwen3_5 (fused / hybrid HF layouts; no torch)
- :mod:`.infer`: which family a fetched checkpoint is, from config.json or the GGUF header (no torch)
- :mod:`.synthetic`: ``SIZES`` (no torch) and ``write_synthetic_checkpoint``
- :mod:`.tokenizer`: deterministic byte-level BPE tokenizers
- :mod:`.checkpoint`: HF / Meta / GGUF loaders, rotary layout conversion
- :mod:`.gguf_io`: GGUF read (dequantize) and load (architectures, tokenizers)
- :mod:`.gguf_write`: GGUF write from an HF checkpoint, as llama.cpp's converter does
- :mod:`.synthetic_sizes_a`: synthetic sizes of llama2, llama3, llama3_1, qwen2_5, qwen3 (no torch)
- :mod:`.synthetic_sizes_b`: synthetic sizes of phi_4_mini, lfm2, qwen3_5 (no torch)
- :mod:`.model`: ``load_llm``, ``build_transformer``
- :mod:`.export`: ``export_llm`` (torch.export the way ExecuTorch's export_llm does)

Importing this package (or ``.families`` / ``.synthetic``) does not import torch.
"""

from __future__ import annotations

__all__ = ["load_llm", "load_checkpoint", "write_synthetic_checkpoint", "SIZES", "FAMILIES"]


def load_llm(*args, **kwargs):
    """See the module docstring; forwards to :func:`modelbuild.ml.llm.model.load_llm`."""
    from .model import load_llm as _load_llm

    return _load_llm(*args, **kwargs)


def load_checkpoint(*args, **kwargs):
    """Forwards to :func:`modelbuild.ml.llm.checkpoint.load_checkpoint`."""
    from .checkpoint import load_checkpoint as _load

    return _load(*args, **kwargs)


def write_synthetic_checkpoint(*args, **kwargs):
    """Forwards to :func:`modelbuild.ml.llm.synthetic.write_synthetic_checkpoint`."""
    from .synthetic import write_synthetic_checkpoint as _write

    return _write(*args, **kwargs)


def __getattr__(name: str):
    if name == "SIZES":
        from .synthetic import SIZES

        return SIZES
    if name == "FAMILIES":
        from .families import FAMILIES

        return FAMILIES
    raise AttributeError(name)
