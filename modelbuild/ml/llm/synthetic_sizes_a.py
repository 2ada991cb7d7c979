"""Synthetic sizes of the issue-15 part A families: llama2, llama3, llama3_1, qwen2_5, qwen3.

Plain data (no torch), merged into ``synthetic.SIZES``: for each family a
``tiny`` config for tests (hidden 64, 2 layers) and the real shape of its
smallest released size, as its Hub ``config.json`` has it. ``TOKENIZERS``
says how each family's synthetic tokenizer is made: SentencePiece for
Llama 2 (``tokenizer.model``, as Meta ships it), byte-level BPE with the
family's own splitting rules otherwise, with the special tokens at the ids
the real vocabulary has them (small vocabularies: at 0..k-1).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SIZES_A", "TOKENIZERS_A", "tokenizer_spec_a"]

#: The config.json fields every llama-architecture checkpoint shares (synthetic.py uses them too).
LLAMA_FIELDS = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "use_cache": True,
}
_TINY = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "torch_dtype": "float32",
}
_ROPE_8 = {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "use_sliding_window": False,
    "max_window_layers": 21,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}
_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "use_sliding_window": False,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}
_LLAMA3_8B = {
    **LLAMA_FIELDS,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "torch_dtype": "bfloat16",
}

#: family -> size -> HF config.json fields.
SIZES_A: dict[str, dict[str, dict[str, Any]]] = {
    "llama2": {
        "tiny": {
            **LLAMA_FIELDS, **_TINY, "num_key_value_heads": 4, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        },
        # Llama-2-7b(-chat)-hf.
        "7b": {
            **LLAMA_FIELDS, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32000,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
        },
    },
    "llama3": {
        "tiny": {
            **LLAMA_FIELDS, **_TINY, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": [1, 2],
        },
        # Meta-Llama-3-8B-Instruct.
        "8b": {**_LLAMA3_8B, "max_position_embeddings": 8192, "eos_token_id": [128001, 128009]},
    },
    "llama3_1": {
        "tiny": {
            **LLAMA_FIELDS, **_TINY, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": _ROPE_8, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": [1, 2],
        },
        # Llama-3.1-8B-Instruct.
        "8b": {
            **_LLAMA3_8B, "max_position_embeddings": 131072, "rope_scaling": _ROPE_8,
            "eos_token_id": [128001, 128008, 128009],
        },
    },
    "qwen2_5": {
        "tiny": {
            **_QWEN2, **_TINY, "intermediate_size": 128, "max_position_embeddings": 32768,
            "sliding_window": 32768, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        },
        # Qwen2.5-0.5B(-Instruct).
        "0_5b": {
            **_QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "max_position_embeddings": 32768, "sliding_window": 32768, "tie_word_embeddings": True,
            "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
        },
    },
    "qwen3": {
        "tiny": {
            **_QWEN3, **_TINY, "intermediate_size": 128, "head_dim": 32, "max_position_embeddings": 40960,
            "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        },
        # Qwen3-0.6B.
        "0_6b": {
            **_QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
            "max_position_embeddings": 40960, "tie_word_embeddings": True, "bos_token_id": 151643,
            "eos_token_id": 151645, "torch_dtype": "bfloat16",
        },
    },
}

_QWEN_SMALL = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
_QWEN_LARGE = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
_LLAMA3_SMALL = {
    "<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|eot_id|>": 2, "<|start_header_id|>": 3, "<|end_header_id|>": 4,
}
_LLAMA3_LARGE = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
}


def tokenizer_spec_a(family: str, config: dict) -> dict[str, Any] | None:
    """How to make ``family``'s synthetic tokenizer: ``{"kind": "spm"}`` or
    ``{"kind": "bpe", "specials", "bos", "eos", "pre"}``; None for other families."""
    large = config["vocab_size"] > 100000
    if family == "llama2":
        return {"kind": "spm", "bos": "<s>", "eos": "</s>"}
    if family in ("llama3", "llama3_1"):
        return {
            "kind": "bpe", "specials": _LLAMA3_LARGE if large else _LLAMA3_SMALL, "bos": "<|begin_of_text|>",
            "eos": "<|eot_id|>", "pre": "llama-bpe",
        }
    if family in ("qwen2_5", "qwen3"):
        # The real Qwen tokenizers prepend nothing; the tiny ones prepend <|im_start|>
        # like SmolLM2's, so the runner's BOS and transformers' prompt agree.
        return {
            "kind": "bpe", "specials": _QWEN_LARGE if large else _QWEN_SMALL, "bos": None if large else "<|im_start|>",
            "eos": "<|im_end|>", "pre": "qwen2",
        }
    return None


TOKENIZERS_A = ("llama2", "llama3", "llama3_1", "qwen2_5", "qwen3")
