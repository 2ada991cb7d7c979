"""Synthetic shapes for phi_4_mini, lfm2 and qwen3_5 (issue 15 part B); no torch.

``SIZES_B`` holds, per family, a ``tiny`` config (the tests' shape: hidden 64,
2-4 layers, vocabulary 512) and the family's smallest real size, as the
``config.json`` transformers writes for it. :func:`tensor_specs_b` lists every
weight such a config has, by its Hugging Face name, so that
``write_synthetic_checkpoint`` can stream seeded values into
``model.safetensors``; :func:`tokenizer_spec_b` says which special tokens the
synthetic tokenizer carries and at which ids.

Real-size caveats: Phi-4-mini's LongRoPE short/long factors are placeholders
(all 1.0; the shapes do not depend on them), and the special-token ids of the
real sizes are those of the published tokenizers as far as this file knows
them; the tests use the tiny sizes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SIZES_B", "tensor_specs_b", "tokenizer_spec_b"]

_PHI3 = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "tie_word_embeddings": True,
    "sliding_window": None,
}


def _longrope(n: int, original: int) -> dict[str, Any]:
    return {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.05 * i for i in range(n)],
        "long_factor": [1.5 + 0.25 * i for i in range(n)],
        "original_max_position_embeddings": original,
    }


_LFM2 = {
    "architectures": ["Lfm2ForCausalLM"],
    "model_type": "lfm2",
    "conv_L_cache": 3,
    "conv_bias": False,
    "block_auto_adjust_ff_dim": True,
    "block_ffn_dim_multiplier": 1.0,
    "initializer_range": 0.02,
    "norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_cache": True,
    "pad_token_id": 0,
}

_QWEN3_5 = {
    "architectures": ["Qwen3_5ForCausalLM"],
    "model_type": "qwen3_5_text",
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "linear_conv_kernel_dim": 4,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_cache": True,
}


def _every_fourth_full(n: int) -> list[str]:
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]


SIZES_B: dict[str, dict[str, dict[str, Any]]] = {
    "phi_4_mini": {
        "tiny": {
            **_PHI3,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 512,
            "max_position_embeddings": 1024,
            "original_max_position_embeddings": 256,
            "partial_rotary_factor": 0.75,
            "rope_theta": 10000.0,
            "rope_scaling": _longrope(6, 256),
            "rms_norm_eps": 1e-5,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": "float32",
        },
        # The Phi-4-mini-instruct shape (3,836,021,760 parameters).
        "3.8b": {
            **_PHI3,
            "hidden_size": 3072,
            "intermediate_size": 8192,
            "num_hidden_layers": 32,
            "num_attention_heads": 24,
            "num_key_value_heads": 8,
            "vocab_size": 200064,
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "partial_rotary_factor": 0.75,
            "rope_theta": 10000.0,
            "rope_scaling": {**_longrope(48, 4096), "short_factor": [1.0] * 48, "long_factor": [1.0] * 48},
            "rms_norm_eps": 1e-5,
            "bos_token_id": 199999,
            "eos_token_id": [200020, 199999],
            "pad_token_id": 199999,
            "torch_dtype": "bfloat16",
        },
    },
    "lfm2": {
        "tiny": {
            **_LFM2,
            "hidden_size": 64,
            "intermediate_size": 192,  # -> an MLP of 128 (auto-adjusted, multiple of 32)
            "block_multiple_of": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention"],
            "vocab_size": 512,
            "max_position_embeddings": 4096,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
        # The LFM2-350M shape.
        "350m": {
            **_LFM2,
            "hidden_size": 1024,
            "intermediate_size": 6656,  # -> 4608, ExecuTorch's lfm2_350m hidden_dim
            "block_multiple_of": 256,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
            "vocab_size": 65536,
            "max_position_embeddings": 128000,
            "bos_token_id": 1,
            "eos_token_id": 7,
            "torch_dtype": "bfloat16",
        },
    },
    "qwen3_5": {
        "tiny": {
            **_QWEN3_5,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "layer_types": ["linear_attention", "full_attention"],
            "full_attention_interval": 2,  # says the same as layer_types (what llama.cpp's qwen35 GGUF keeps)
            "vocab_size": 512,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
        # The Qwen3.5-0.8B text shape (ExecuTorch's qwen3_5_0_8b config).
        "0.8b": {
            **_QWEN3_5,
            "hidden_size": 1024,
            "intermediate_size": 3584,
            "num_hidden_layers": 24,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 256,
            "linear_key_head_dim": 128,
            "linear_value_head_dim": 128,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 16,
            "layer_types": _every_fourth_full(24),
            "vocab_size": 248320,
            "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
            "bos_token_id": 248044,
            "eos_token_id": 248046,
            "torch_dtype": "bfloat16",
        },
    },
}

# (specials: content -> id, bos, eos) per family, tiny and real.
_SPECIALS = {
    "phi_4_mini": (
        {"<|endoftext|>": 0, "<|im_start|>": 1, "<|end|>": 2},
        {"<|endoftext|>": 199999, "<|end|>": 200020, "<|user|>": 200021, "<|assistant|>": 200019},
        ("<|im_start|>", "<|end|>"),
        ("<|endoftext|>", "<|end|>"),
    ),
    "lfm2": (
        {"<|pad|>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2},
        {
            "<|pad|>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "<|fim_pre|>": 3, "<|fim_mid|>": 4,
            "<|fim_suf|>": 5, "<|im_start|>": 6, "<|im_end|>": 7,
        },
        ("<|startoftext|>", "<|endoftext|>"),
        ("<|startoftext|>", "<|im_end|>"),
    ),
    "qwen3_5": (
        {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
        {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046},
        ("<|im_start|>", "<|im_end|>"),
        ("<|endoftext|>", "<|im_end|>"),
    ),
}


def tokenizer_spec_b(family: str, config: dict) -> tuple[dict[str, int], str, str] | None:
    """``(specials, bos token, eos token)`` for ``family``'s synthetic tokenizer; None for other families.

    Special ids past the trained vocabulary (512) become added tokens there,
    as in the real large-vocabulary tokenizers.
    """
    if family not in _SPECIALS:
        return None
    tiny, real, tiny_bt, real_bt = _SPECIALS[family]
    if config["vocab_size"] <= 512:
        return tiny, *tiny_bt
    return real, *real_bt


def tensor_specs_b(config: dict) -> list[tuple[str, tuple[int, ...], str]] | None:
    """(HF name, shape, init) of every weight of a phi3 / lfm2 / qwen3_5 config; None for others.

    ``init``: ``"normal"`` (std 0.02), ``"ones"`` or ``"zeros"`` (Qwen3.5's
    norms scale by ``1 + w``, so zeros are its identity).
    """
    model_type = config.get("model_type")
    maker = {"phi3": _phi3_specs, "lfm2": _lfm2_specs, "qwen3_5_text": _qwen3_5_specs}.get(model_type)
    if maker is None:
        return None
    dim, vocab = config["hidden_size"], config["vocab_size"]
    norm = "zeros" if model_type == "qwen3_5_text" else "ones"
    final = "model.embedding_norm.weight" if model_type == "lfm2" else "model.norm.weight"
    specs = [("model.embed_tokens.weight", (vocab, dim), "normal"), (final, (dim,), norm)]
    if not config.get("tie_word_embeddings"):
        specs.append(("lm_head.weight", (vocab, dim), "normal"))
    for i in range(config["num_hidden_layers"]):
        specs += maker(config, f"model.layers.{i}.", i)
    return sorted(specs)


def _phi3_specs(c: dict, p: str, i: int) -> list:
    dim, heads, kv, ffn = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    hd = dim // heads
    return [
        (p + "self_attn.qkv_proj.weight", ((heads + 2 * kv) * hd, dim), "normal"),
        (p + "self_attn.o_proj.weight", (dim, heads * hd), "normal"),
        (p + "mlp.gate_up_proj.weight", (2 * ffn, dim), "normal"),
        (p + "mlp.down_proj.weight", (dim, ffn), "normal"),
        (p + "input_layernorm.weight", (dim,), "ones"),
        (p + "post_attention_layernorm.weight", (dim,), "ones"),
    ]


def _lfm2_specs(c: dict, p: str, i: int) -> list:
    from .hybrid_families import _lfm2_hidden_dim

    dim, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, ffn = dim // heads, _lfm2_hidden_dim(c)
    specs = [
        (p + "feed_forward.w1.weight", (ffn, dim), "normal"),
        (p + "feed_forward.w3.weight", (ffn, dim), "normal"),
        (p + "feed_forward.w2.weight", (dim, ffn), "normal"),
        (p + "operator_norm.weight", (dim,), "ones"),
        (p + "ffn_norm.weight", (dim,), "ones"),
    ]
    if c["layer_types"][i] == "conv":
        return specs + [
            (p + "conv.conv.weight", (dim, 1, c.get("conv_L_cache", 3)), "normal"),
            (p + "conv.in_proj.weight", (3 * dim, dim), "normal"),
            (p + "conv.out_proj.weight", (dim, dim), "normal"),
        ]
    return specs + [
        (p + "self_attn.q_proj.weight", (heads * hd, dim), "normal"),
        (p + "self_attn.k_proj.weight", (kv * hd, dim), "normal"),
        (p + "self_attn.v_proj.weight", (kv * hd, dim), "normal"),
        (p + "self_attn.out_proj.weight", (dim, heads * hd), "normal"),
        (p + "self_attn.q_layernorm.weight", (hd,), "ones"),
        (p + "self_attn.k_layernorm.weight", (hd,), "ones"),
    ]


def _qwen3_5_specs(c: dict, p: str, i: int) -> list:
    dim, heads, kv, hd, ffn = (
        c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["intermediate_size"],
    )
    specs = [
        (p + "mlp.gate_proj.weight", (ffn, dim), "normal"),
        (p + "mlp.up_proj.weight", (ffn, dim), "normal"),
        (p + "mlp.down_proj.weight", (dim, ffn), "normal"),
        (p + "input_layernorm.weight", (dim,), "zeros"),
        (p + "post_attention_layernorm.weight", (dim,), "zeros"),
    ]
    if c["layer_types"][i] == "full_attention":
        return specs + [
            (p + "self_attn.q_proj.weight", (2 * heads * hd, dim), "normal"),  # query and its gate
            (p + "self_attn.k_proj.weight", (kv * hd, dim), "normal"),
            (p + "self_attn.v_proj.weight", (kv * hd, dim), "normal"),
            (p + "self_attn.o_proj.weight", (dim, heads * hd), "normal"),
            (p + "self_attn.q_norm.weight", (hd,), "zeros"),
            (p + "self_attn.k_norm.weight", (hd,), "zeros"),
        ]
    kd = c["linear_key_head_dim"] * c["linear_num_key_heads"]
    vd = c["linear_value_head_dim"] * c["linear_num_value_heads"]
    vh = c["linear_num_value_heads"]
    return specs + [
        (p + "linear_attn.in_proj_qkv.weight", (2 * kd + vd, dim), "normal"),
        (p + "linear_attn.in_proj_z.weight", (vd, dim), "normal"),
        (p + "linear_attn.in_proj_b.weight", (vh, dim), "normal"),
        (p + "linear_attn.in_proj_a.weight", (vh, dim), "normal"),
        (p + "linear_attn.conv1d.weight", (2 * kd + vd, 1, c["linear_conv_kernel_dim"]), "normal"),
        (p + "linear_attn.dt_bias", (vh,), "ones"),
        (p + "linear_attn.A_log", (vh,), "zeros"),  # A = 1
        (p + "linear_attn.norm.weight", (c["linear_value_head_dim"],), "ones"),
        (p + "linear_attn.out_proj.weight", (dim, vd), "normal"),
    ]
