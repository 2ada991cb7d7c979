"""Synthetic checkpoints: seeded random weights in a real architecture's shape.

For demos, tests and benchmarks: a checkpoint with the exact tensor shapes of
a real model (or a tiny one), in Hugging Face layout, byte-for-byte the same
for the same ``(architecture, size, seed)``. Its ``checkpoint.json`` says it is
synthetic.

``SIZES`` is importable without torch (the ``fetch`` step validates recipe
parameters against it while planning).

Example::

    fields = write_synthetic_checkpoint(Path("ckpt"), "llama3_2", "tiny", seed=0)
    # ckpt/config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    # generation_config.json; fields == {"format": "hf", "family": "llama3_2",
    #                                    "synthetic": True, ...}
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from .synthetic_sizes_a import LLAMA_FIELDS as _LLAMA_COMMON, SIZES_A, tokenizer_spec_a
from .synthetic_sizes_b import SIZES_B, tensor_specs_b, tokenizer_spec_b

__all__ = ["SIZES", "TOKENIZER_VOCAB", "write_synthetic_checkpoint", "tensor_specs"]

_LLAMA3_ROPE = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


#: architecture -> size -> HF config.json fields.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "llama3_2": {
        "tiny": {
            **_LLAMA_COMMON,
            "hidden_size": 64,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 512,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE,
            "tie_word_embeddings": True,
            "bos_token_id": 0,
            "eos_token_id": [1, 2],
            "torch_dtype": "float32",
        },
        # The real Llama 3.2 1B (Instruct) shape.
        "1b": {
            **_LLAMA_COMMON,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE,
            "tie_word_embeddings": True,
            "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009],
            "torch_dtype": "bfloat16",
        },
    },
    "smollm2": {
        "tiny": {
            **_LLAMA_COMMON,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 512,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
        # The real SmolLM2-135M(-Instruct) shape.
        "135m": {
            **_LLAMA_COMMON,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
    },
}

# llama2, llama3, llama3_1, qwen2_5, qwen3 (issue 15 part A): see synthetic_sizes_a.
SIZES.update(SIZES_A)
# phi_4_mini, lfm2, qwen3_5 (issue 15 part B): see synthetic_sizes_b.
SIZES.update(SIZES_B)

#: Trained (non-special) tokenizer size for shapes whose vocabulary is too big
#: to train on the small corpus; the model vocabulary is then larger.
TOKENIZER_VOCAB = 512

# Special tokens (content -> id) per architecture, at the ids the real models use.
_SPECIALS_LLAMA3_LARGE = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
}
_SPECIALS_LLAMA3_SMALL = {
    "<|begin_of_text|>": 0,
    "<|end_of_text|>": 1,
    "<|eot_id|>": 2,
    "<|start_header_id|>": 3,
    "<|end_header_id|>": 4,
}
_SPECIALS_SMOLLM2 = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def _tokenizer_spec(architecture: str, config: dict) -> tuple[dict[str, int], str, str]:
    """(specials, bos token, eos token) for an architecture and size."""
    spec_b = tokenizer_spec_b(architecture, config)
    if spec_b is not None:
        return spec_b
    if architecture == "smollm2":
        return _SPECIALS_SMOLLM2, "<|im_start|>", "<|im_end|>"
    if config["vocab_size"] > 128000:
        return _SPECIALS_LLAMA3_LARGE, "<|begin_of_text|>", "<|eot_id|>"
    return _SPECIALS_LLAMA3_SMALL, "<|begin_of_text|>", "<|end_of_text|>"


def tensor_specs(config: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, init) of every weight of a llama-style config, sorted by name.

    ``init`` is ``"normal"`` (std 0.02) or ``"ones"`` (norm weights).
    """
    specs_b = tensor_specs_b(config)  # phi3, lfm2, qwen3_5 layouts
    if specs_b is not None:
        return specs_b
    dim = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"]
    hd = config.get("head_dim") or dim // heads
    ffn = config["intermediate_size"]
    vocab = config["vocab_size"]
    specs = [
        ("model.embed_tokens.weight", (vocab, dim), "normal"),
        ("model.norm.weight", (dim,), "ones"),
    ]
    if not config.get("tie_word_embeddings"):
        specs.append(("lm_head.weight", (vocab, dim), "normal"))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", (heads * hd, dim), "normal"),
            (p + "self_attn.k_proj.weight", (kv * hd, dim), "normal"),
            (p + "self_attn.v_proj.weight", (kv * hd, dim), "normal"),
            (p + "self_attn.o_proj.weight", (dim, heads * hd), "normal"),
            (p + "mlp.gate_proj.weight", (ffn, dim), "normal"),
            (p + "mlp.up_proj.weight", (ffn, dim), "normal"),
            (p + "mlp.down_proj.weight", (dim, ffn), "normal"),
            (p + "input_layernorm.weight", (dim,), "ones"),
            (p + "post_attention_layernorm.weight", (dim,), "ones"),
        ]
        if config.get("model_type") == "qwen2" or config.get("attention_bias"):
            specs += [
                (p + "self_attn.q_proj.bias", (heads * hd,), "normal"),
                (p + "self_attn.k_proj.bias", (kv * hd,), "normal"),
                (p + "self_attn.v_proj.bias", (kv * hd,), "normal"),
            ]
        if config.get("model_type") == "qwen3":
            specs += [(p + "self_attn.q_norm.weight", (hd,), "ones"), (p + "self_attn.k_norm.weight", (hd,), "ones")]
    return sorted(specs)


_ST_DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2), "float16": ("F16", 2)}


def _tensor_seed(seed: int, name: str) -> int:
    # Per-tensor seeds: a tensor's values do not depend on which others exist.
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little") >> 1


def _write_safetensors(path: Path, specs, dtype_name: str, seed: int) -> None:
    """Stream a safetensors file tensor by tensor (peak memory: one tensor)."""
    import torch

    st_dtype, width = _ST_DTYPES[dtype_name]
    torch_dtype = getattr(torch, dtype_name)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in specs:
        size = width
        for d in shape:
            size *= d
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format wants the data 8-byte aligned
    gen = torch.Generator()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, init in specs:  # same (sorted) order as the offsets
            if init in ("ones", "zeros"):
                t = (torch.ones if init == "ones" else torch.zeros)(shape, dtype=torch.float32)
            else:
                gen.manual_seed(_tensor_seed(seed, name))
                t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02)
            f.write(t.to(torch_dtype).contiguous().view(torch.uint8).numpy().data)
            del t


def write_synthetic_checkpoint(out_dir: Path, architecture: str, size: str, seed: int) -> dict:
    """Write an HF-layout synthetic checkpoint into ``out_dir``; return checkpoint.json fields.

    Files: ``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``generation_config.json``. The caller writes
    ``checkpoint.json`` (it may add fields of its own).
    """
    from .tokenizer import build_bpe_tokenizer, tokenizer_config

    try:
        sizes = SIZES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture '{architecture}' (known: {', '.join(sorted(SIZES))})") from None
    try:
        config = dict(sizes[size])
    except KeyError:
        raise ValueError(f"unknown size '{size}' for {architecture} (known: {', '.join(sorted(sizes))})") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    trained = min(config["vocab_size"], TOKENIZER_VOCAB)
    spec_a = tokenizer_spec_a(architecture, config)
    if spec_a is not None and spec_a["kind"] == "spm":
        from .tokenizer import build_sentencepiece_tokenizer

        (out_dir / "tokenizer.model").write_bytes(build_sentencepiece_tokenizer(trained))
        bos, eos = spec_a["bos"], spec_a["eos"]
    elif spec_a is not None:
        specials, bos, eos = spec_a["specials"], spec_a["bos"], spec_a["eos"]
        text = build_bpe_tokenizer(trained, specials, bos, pre=spec_a["pre"])
        (out_dir / "tokenizer.json").write_text(text, encoding="utf-8")
    else:
        specials, bos, eos = _tokenizer_spec(architecture, config)
        (out_dir / "tokenizer.json").write_text(build_bpe_tokenizer(trained, specials, bos), encoding="utf-8")
    tok_config = tokenizer_config(bos, eos)
    if spec_a is not None and spec_a["kind"] == "spm":
        tok_config["tokenizer_class"] = "LlamaTokenizer"  # a tokenizer.model, no tokenizer.json
    _dump(out_dir / "tokenizer_config.json", tok_config)
    _dump(
        out_dir / "generation_config.json",
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False},
    )
    _dump(out_dir / "config.json", config)
    _write_safetensors(out_dir / "model.safetensors", tensor_specs(config), config["torch_dtype"], seed)
    return {
        "format": "hf",
        "family": architecture,
        "synthetic": True,
        "architecture": architecture,
        "size": size,
        "seed": seed,
    }


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=2) + "\n", encoding="utf-8")
