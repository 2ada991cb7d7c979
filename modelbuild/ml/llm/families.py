"""Model families: how a checkpoint's config maps onto ExecuTorch's llama ``ModelArgs``.

A :class:`Family` knows three things about one architecture:

- how to turn a Hugging Face ``config.json``, a Meta ``params.json`` or GGUF
  metadata into keyword arguments of
  ``executorch.examples.models.llama.model_args.ModelArgs`` (kept as a plain,
  JSON-able dict so it can be stored in artifacts);
- the weight names: Hugging Face names -> the names ExecuTorch's
  ``Transformer`` uses (Meta's names);
- the rotary layout: Meta-style rotary (``use_hf_rope=False``) rotates
  interleaved pairs, so Hugging Face q/k weights (stored for "rotate half")
  must be un-permuted; families that use ExecuTorch's HF rope keep them as is.

This module imports no torch: families are plain data and functions on dicts.

Example::

    fam = family_for_hf_config(json.loads(Path("config.json").read_text()))
    kwargs = fam.model_args_from_hf(config)     # {"dim": 64, "n_layers": 2, ...}

Adding a family: see docs/models.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Family", "FAMILIES", "get_family", "family_for_hf_config", "HF_TO_META", "GGUF_TO_META"]

#: Hugging Face llama-style weight names -> ExecuTorch (Meta) names; ``{}`` is the layer index.
HF_TO_META: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.attention.wq.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.attention.wk.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.attention.wv.bias",
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attention.q_norm_fn.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attention.k_norm_fn.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
}

#: llama.cpp GGUF tensor names -> ExecuTorch (Meta) names.
GGUF_TO_META: dict[str, str] = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{}.attn_q.weight": "layers.{}.attention.wq.weight",
    "blk.{}.attn_k.weight": "layers.{}.attention.wk.weight",
    "blk.{}.attn_v.weight": "layers.{}.attention.wv.weight",
    "blk.{}.attn_output.weight": "layers.{}.attention.wo.weight",
    "blk.{}.attn_q_norm.weight": "layers.{}.attention.q_norm_fn.weight",
    "blk.{}.attn_k_norm.weight": "layers.{}.attention.k_norm_fn.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.feed_forward.w1.weight",
    "blk.{}.ffn_down.weight": "layers.{}.feed_forward.w2.weight",
    "blk.{}.ffn_up.weight": "layers.{}.feed_forward.w3.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attention_norm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.ffn_norm.weight",
}


def map_name(name: str, table: dict[str, str]) -> str | None:
    """Map one weight name through ``table`` (``{}`` matches a layer index)."""
    if name in table:
        return table[name]
    m = re.search(r"\.(\d+)\.", name)
    if m is None:
        return None
    generic = name[: m.start()] + ".{}." + name[m.end():]
    target = table.get(generic)
    return None if target is None else target.format(m.group(1))


def _rope_from_hf(config: dict) -> dict[str, Any]:
    """Rope fields of ModelArgs from an HF config (v4 ``rope_scaling`` or v5 ``rope_parameters``)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    out: dict[str, Any] = {"rope_theta": float(theta)}
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return out
    if rope_type != "llama3":
        raise ValueError(f"rope type '{rope_type}' is not supported by the llama families")
    # ExecuTorch's scaled rope hard-codes low_freq_factor=1 and an 8192 original context.
    if float(scaling.get("low_freq_factor", 1.0)) != 1.0 or int(scaling.get("original_max_position_embeddings", 8192)) != 8192:
        raise ValueError("llama3 rope scaling with low_freq_factor != 1 or original context != 8192 is not supported")
    factor = scaling["factor"]
    high = scaling.get("high_freq_factor", 4.0)
    out.update(
        use_scaled_rope=True,
        rope_scale_factor=int(factor) if float(factor).is_integer() else float(factor),
        high_freq_factor=int(high) if float(high).is_integer() else float(high),
    )
    return out


def _llama_args_from_hf(config: dict) -> dict[str, Any]:
    if config.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported by ExecuTorch's llama definition")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act '{config.get('hidden_act')}' is not supported (llama families use silu)")
    dim = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    args: dict[str, Any] = {
        "dim": dim,
        "n_layers": int(config["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": int(config.get("num_key_value_heads") or n_heads),
        "vocab_size": int(config["vocab_size"]),
        "hidden_dim": int(config["intermediate_size"]),
        "head_dim": int(config.get("head_dim") or dim // n_heads),
        "norm_eps": float(config.get("rms_norm_eps", 1e-5)),
    }
    if config.get("attention_bias"):
        args["attention_qkv_bias"] = True
    args.update(_rope_from_hf(config))
    return args


def _qwen3_args_from_hf(config: dict) -> dict[str, Any]:
    args = _llama_args_from_hf({**config, "attention_bias": False})
    # Qwen3: RMS-normalized q and k (before rope), HF rotary layout.
    args.update(use_qk_norm=True, qk_norm_before_rope=True, use_hf_rope=True)
    return args


def _f32(value) -> float:
    """A float GGUF stored as float32, as the decimal its author wrote (1e-05, not 9.9999997e-06)."""
    import struct

    f32 = struct.unpack("<f", struct.pack("<f", float(value)))[0]
    for digits in range(6, 10):  # the shortest decimal that is the same float32
        text = f"{f32:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == f32:
            return float(text)
    return f32


_META_KEYS = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "head_dim",
    "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope",
    "rope_scale_factor", "high_freq_factor", "attention_qkv_bias", "use_qk_norm",
    "qk_norm_before_rope", "use_hf_rope",
}


@dataclass(frozen=True)
class Family:
    """One model family. See the module docstring."""

    name: str
    description: str
    #: HF ``config.json`` -> ModelArgs kwargs.
    from_hf: Callable[[dict], dict[str, Any]]
    #: True if the family runs ExecuTorch's HF rope (q/k stay in HF layout).
    hf_rope: bool = False
    #: ModelArgs set when loading Meta params.json (e.g. llama3_2's rope scale 32).
    meta_overrides: dict[str, Any] = field(default_factory=dict)
    #: Default runtime metadata (bos/eos) when the checkpoint does not say.
    default_metadata: dict[str, Any] = field(default_factory=dict)
    #: GGUF ``general.architecture`` values this family reads.
    gguf_archs: tuple[str, ...] = ("llama",)

    def model_args_from_hf(self, config: dict) -> dict[str, Any]:
        """ModelArgs kwargs from an HF ``config.json`` dict."""
        return self.from_hf(config)

    def model_args_from_meta(self, params: dict) -> dict[str, Any]:
        """ModelArgs kwargs from a Meta ``params.json`` dict (unknown keys dropped)."""
        args = {k: v for k, v in params.items() if k in _META_KEYS}
        if args.get("use_scaled_rope"):
            for k, v in self.meta_overrides.items():
                args.setdefault(k, v)
        return args

    def model_args_from_gguf(self, fields: dict[str, Any]) -> dict[str, Any]:
        """ModelArgs kwargs from GGUF metadata (``{arch}.*`` keys, already decoded)."""
        arch = fields["general.architecture"]

        def get(key, default=None):
            return fields.get(f"{arch}.{key}", default)

        dim = int(get("embedding_length"))
        n_heads = int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", get("rope.dimension_count", dim // n_heads)))
        vocab = get("vocab_size") or len(fields.get("tokenizer.ggml.tokens", []))
        args: dict[str, Any] = {
            "dim": dim,
            "n_layers": int(get("block_count")),
            "n_heads": n_heads,
            "n_kv_heads": int(get("attention.head_count_kv", n_heads)),
            "vocab_size": int(vocab),
            "hidden_dim": int(get("feed_forward_length")),
            "head_dim": head_dim,
            "norm_eps": _f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": _f32(get("rope.freq_base", 10000.0)),
        }
        scaling = get("rope.scaling.type")
        if scaling not in (None, "none"):
            raise ValueError(f"GGUF rope scaling '{scaling}' is not supported")
        if self.hf_rope:
            args.update(use_qk_norm=True, qk_norm_before_rope=True, use_hf_rope=True)
        return args


FAMILIES: dict[str, Family] = {}


def _register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


_register(
    Family(
        name="llama3_2",
        description="Llama 3.2 (1B, 3B): GQA, llama3 rope scaling, tied embeddings",
        from_hf=_llama_args_from_hf,
        # What export_llama does for model_class llama3_2 with use_scaled_rope.
        meta_overrides={"rope_scale_factor": 32},
        default_metadata={"get_bos_id": 128000, "get_eos_ids": [128009, 128001]},
    )
)
_register(
    Family(
        name="smollm2",
        description="SmolLM2 (135M, 360M, 1.7B): llama architecture, tied embeddings",
        from_hf=_llama_args_from_hf,
        # SmolLM2-Instruct: <|im_start|> = 1, <|im_end|> = 2.
        default_metadata={"get_bos_id": 1, "get_eos_ids": [2]},
    )
)


_register(
    Family(
        name="qwen3",
        description="Qwen3 dense (0.6B, 1.7B, 4B): q/k RMS norm before rope, HF rotary layout",
        from_hf=_qwen3_args_from_hf,
        hf_rope=True,
        default_metadata={"get_bos_id": 151644, "get_eos_ids": [151645]},
        gguf_archs=("qwen3",),
    )
)


def get_family(name: str) -> Family:
    """The family called ``name`` (ValueError listing the known ones otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family '{name}' (known: {', '.join(sorted(FAMILIES))})") from None


def family_for_hf_config(config: dict, hint: str | None = None) -> Family:
    """Pick the family for an HF config; ``hint`` (checkpoint.json ``family``) wins."""
    if hint:
        return get_family(hint)
    model_type = config.get("model_type", "llama")
    if model_type == "qwen3" and "qwen3" in FAMILIES:
        return FAMILIES["qwen3"]
    if model_type != "llama":
        raise ValueError(f"model_type '{model_type}' is not supported (known families: {', '.join(sorted(FAMILIES))})")
    # Both llama families share model_type "llama"; SmolLM2 has its own vocabulary size.
    if int(config.get("vocab_size", 0)) == 49152:
        return FAMILIES["smollm2"]
    return FAMILIES["llama3_2"]
