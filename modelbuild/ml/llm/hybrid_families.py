"""Families whose Hugging Face checkpoints need more than a rename: Phi-4-mini, LFM2, Qwen3.5.

Each runs through ExecuTorch's own llama ``Transformer`` with the ``ModelArgs``
its ``export_llm`` config JSON sets (``examples/models/<family>/config``), and
each has a weight converter that does what ExecuTorch's ``convert_weights``
does for it:

- **phi_4_mini** (``Phi3ForCausalLM``): fused ``qkv_proj`` and
  ``gate_up_proj`` are split; HF rotary (``use_hf_rope``) with
  ``partial_rotary_factor`` 0.75 and LongRoPE (short/long factors and the
  attention factor transformers derives). ExecuTorch picks the long factors
  for every position when the rope table is longer than
  ``original_max_position_embeddings`` (4096); transformers switches per call.
  Up to 4096 positions the two agree.
- **lfm2** (``Lfm2ForCausalLM``): hybrid layers, ``layer_types`` "conv" (a
  gated short convolution, ExecuTorch's ``ShortConvBlock``) or
  "full_attention" (q/k RMS norm before HF rope). ``conv.in_proj`` is split
  into B, C and x projections; the MLP width is what transformers'
  ``block_auto_adjust_ff_dim`` computes.
- **qwen3_5** (``Qwen3_5ForCausalLM`` / ``...ForConditionalGeneration``, text
  weights only): "linear_attention" layers (Gated DeltaNet) and gated
  "full_attention" layers (``use_q_gate``), RMS norms scaled by ``1 + w``,
  partial HF rotary (0.25). Weights under ``model.language_model.`` are read
  as ``model.``; vision and MTP weights are skipped.

SmolLM3 is refused with the reason (``families.UNSUPPORTED_HF_MODEL_TYPES``).

Imports no torch: a converter gets ``(hf name, get, model args)`` and calls ``get()``
for the tensors it keeps (vision weights of a multimodal checkpoint are never read).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .families import HF_TO_META, Family, _llama_args_from_hf, _register, map_name

__all__ = ["PHI3_HF_TO_META", "LFM2_HF_TO_META", "QWEN3_5_HF_TO_META"]

Pairs = list  # list[tuple[str, tensor]]


def _rope_params(config: dict) -> dict[str, Any]:
    """The rope dict of an HF config: v5 ``rope_parameters`` or v4 ``rope_scaling`` (may be empty)."""
    return dict(config.get("rope_parameters") or config.get("rope_scaling") or {})


def _rope_type(params: dict) -> str:
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def _theta(config: dict, params: dict, default: float) -> float:
    return float(params.get("rope_theta", config.get("rope_theta", default)))


def _plain_rope(config: dict, theta: float) -> dict:
    """``config`` with its rope reduced to a plain theta (so the llama helper accepts it)."""
    out = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_parameters")}
    out["rope_theta"] = theta
    return out


# -- Phi-4-mini ----------------------------------------------------------------


def _phi3_args_from_hf(config: dict) -> dict[str, Any]:
    params = _rope_params(config)
    rope_type = _rope_type(params)
    if rope_type in ("su", "yarn"):  # transformers reads both as longrope for Phi-3
        rope_type = "longrope"
    if rope_type not in ("default", "longrope"):
        raise ValueError(f"rope type '{rope_type}' is not supported for phi_4_mini (default or longrope)")
    args = _llama_args_from_hf(_plain_rope(config, _theta(config, params, 10000.0)))
    args.update(
        use_hf_rope=True,
        partial_rotary_factor=float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))),
    )
    if rope_type == "longrope":
        original = int(config.get("original_max_position_embeddings") or params["original_max_position_embeddings"])
        longest = int(config["max_position_embeddings"])
        attention = params.get("attention_factor")
        if attention is None:  # transformers' _compute_longrope_parameters default
            factor = float(params.get("factor") or longest / original)
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        args.update(
            rope_scaling_short_factor=[float(x) for x in params["short_factor"]],
            rope_scaling_long_factor=[float(x) for x in params["long_factor"]],
            original_max_position_embeddings=original,
            max_position_embeddings=longest,
            rope_scaling_attention_factor=float(attention),
        )
    return args


PHI3_HF_TO_META = HF_TO_META  # the unfused names are llama's


def _phi3_weights(name: str, get, args: dict) -> Pairs | None:
    if name.endswith("self_attn.qkv_proj.weight"):
        tensor = get()
        q = args["n_heads"] * args["head_dim"]
        kv = args["n_kv_heads"] * args["head_dim"]
        layer = name.split(".")[2]
        return [
            (f"layers.{layer}.attention.wq.weight", tensor[:q]),
            (f"layers.{layer}.attention.wk.weight", tensor[q : q + kv]),
            (f"layers.{layer}.attention.wv.weight", tensor[q + kv : q + 2 * kv]),
        ]
    if name.endswith("mlp.gate_up_proj.weight"):
        tensor = get()
        half = tensor.shape[0] // 2
        layer = name.split(".")[2]
        return [
            (f"layers.{layer}.feed_forward.w1.weight", tensor[:half]),
            (f"layers.{layer}.feed_forward.w3.weight", tensor[half:]),
        ]
    target = map_name(name, PHI3_HF_TO_META)
    return None if target is None else [(target, get())]


# -- LFM2 ------------------------------------------------------------------------


def _lfm2_hidden_dim(config: dict) -> int:
    """The MLP width transformers' ``Lfm2MLP`` builds from ``intermediate_size``."""
    # transformers' Lfm2Config reads the older key block_ff_dim over intermediate_size.
    width = int(config["block_ff_dim"] if "block_ff_dim" in config else config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim", True):
        width = int(2 * width / 3)
        multiplier = config.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            width = int(multiplier * width)
        step = int(config.get("block_multiple_of", 256))
        width = step * ((width + step - 1) // step)
    return width


def _lfm2_args_from_hf(config: dict) -> dict[str, Any]:
    if int(config.get("conv_L_cache", 3)) != 3:
        raise ValueError("conv_L_cache other than 3 is not supported (ExecuTorch's ShortConvBlock fixes it at 3)")
    if config.get("conv_bias"):
        raise ValueError("conv_bias=true is not supported (ExecuTorch's ShortConvBlock has no biases)")
    params = _rope_params(config)
    if _rope_type(params) != "default":
        raise ValueError(f"rope type '{_rope_type(params)}' is not supported for lfm2")
    n = int(config["num_hidden_layers"])
    layer_types = config.get("layer_types")
    if layer_types is None:
        full = config.get("full_attn_idxs")
        full = set(range(n) if full is None else full)
        layer_types = ["full_attention" if i in full else "conv" for i in range(n)]
    if len(layer_types) != n or set(layer_types) - {"conv", "full_attention"}:
        raise ValueError(f"layer_types must be {n} of 'conv' / 'full_attention', got {layer_types}")
    dim = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    return {
        "dim": dim,
        "n_layers": n,
        "n_heads": heads,
        "n_kv_heads": int(config.get("num_key_value_heads") or heads),
        "vocab_size": int(config["vocab_size"]),
        "hidden_dim": _lfm2_hidden_dim(config),
        "head_dim": dim // heads,
        "norm_eps": float(config.get("norm_eps", 1e-5)),
        "rope_theta": _theta(config, params, 1000000.0),
        "use_hf_rope": True,
        "use_qk_norm": True,
        "qk_norm_before_rope": True,
        "layer_types": list(layer_types),
    }


LFM2_HF_TO_META: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.embedding_norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.out_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.self_attn.q_layernorm.weight": "layers.{}.attention.q_norm_fn.weight",
    "model.layers.{}.self_attn.k_layernorm.weight": "layers.{}.attention.k_norm_fn.weight",
    "model.layers.{}.operator_norm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.ffn_norm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.feed_forward.w1.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.feed_forward.w2.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.feed_forward.w3.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.conv.conv.weight": "layers.{}.conv.conv.weight",
    "model.layers.{}.conv.out_proj.weight": "layers.{}.conv.out_proj.weight",
}


def _lfm2_weights(name: str, get, args: dict) -> Pairs | None:
    if name.endswith("conv.in_proj.weight"):
        layer, tensor = name.split(".")[2], get()
        third = tensor.shape[0] // 3  # transformers chunks B, C, x in this order
        return [
            (f"layers.{layer}.conv.{part}_proj.weight", tensor[i * third : (i + 1) * third])
            for i, part in enumerate(("B", "C", "x"))
        ]
    target = map_name(name, LFM2_HF_TO_META)
    return None if target is None else [(target, get())]


# -- Qwen3.5 -----------------------------------------------------------------------


def _qwen3_5_text(config: dict) -> dict:
    """The text model's config (``text_config`` of the multimodal checkpoints, else the config)."""
    text = config.get("text_config")
    if isinstance(text, dict):
        return {"tie_word_embeddings": config.get("tie_word_embeddings", False), **text}
    return config


def _qwen3_5_args_from_hf(config: dict) -> dict[str, Any]:
    text = _qwen3_5_text(config)
    params = _rope_params(text)
    if _rope_type(params) != "default":
        raise ValueError(f"rope type '{_rope_type(params)}' is not supported for qwen3_5")
    if text.get("attention_bias"):
        raise ValueError("attention_bias=true is not supported for qwen3_5")
    n = int(text["num_hidden_layers"])
    layer_types = text.get("layer_types")
    if layer_types is None:
        every = int(text.get("full_attention_interval", 4))
        layer_types = ["linear_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    if len(layer_types) != n or set(layer_types) - {"linear_attention", "full_attention"}:
        raise ValueError(f"layer_types must be {n} of 'linear_attention' / 'full_attention', got {layer_types}")
    args = _llama_args_from_hf(_plain_rope({**text, "attention_bias": False}, _theta(text, params, 10000000.0)))
    args.update(
        partial_rotary_factor=float(params.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))),
        use_hf_rope=True,
        use_qk_norm=True,
        qk_norm_before_rope=True,
        attention_type="mha",
        use_q_gate=True,
        rms_norm_add_unit_offset=True,
        linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
        linear_key_head_dim=int(text["linear_key_head_dim"]),
        linear_value_head_dim=int(text["linear_value_head_dim"]),
        linear_num_key_heads=int(text["linear_num_key_heads"]),
        linear_num_value_heads=int(text["linear_num_value_heads"]),
        layer_types=list(layer_types),
    )
    return args


QWEN3_5_HF_TO_META: dict[str, str] = {
    **{k: v for k, v in HF_TO_META.items() if "bias" not in k},
    "model.layers.{}.linear_attn.in_proj_qkv.weight": "layers.{}.attention.in_proj_qkv.weight",
    "model.layers.{}.linear_attn.in_proj_z.weight": "layers.{}.attention.in_proj_z.weight",
    "model.layers.{}.linear_attn.in_proj_b.weight": "layers.{}.attention.in_proj_b.weight",
    "model.layers.{}.linear_attn.in_proj_a.weight": "layers.{}.attention.in_proj_a.weight",
    "model.layers.{}.linear_attn.conv1d.weight": "layers.{}.attention.conv1d.weight",
    "model.layers.{}.linear_attn.dt_bias": "layers.{}.attention.dt_bias",
    "model.layers.{}.linear_attn.A_log": "layers.{}.attention.A_log",
    "model.layers.{}.linear_attn.norm.weight": "layers.{}.attention.norm.weight",
    "model.layers.{}.linear_attn.out_proj.weight": "layers.{}.attention.out_proj.weight",
}

_QWEN3_5_TEXT = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")


def _qwen3_5_weights(name: str, get, args: dict) -> Pairs | None:
    if name.startswith("model.language_model."):
        name = "model." + name[len("model.language_model.") :]
    if not name.startswith(_QWEN3_5_TEXT):
        return []  # vision tower, multi-token prediction head: not part of the text model
    if name.endswith("linear_attn.conv1d.bias"):
        return []  # ExecuTorch's Gated DeltaNet conv has no bias (transformers': bias=False)
    target = map_name(name, QWEN3_5_HF_TO_META)
    return None if target is None else [(target, get())]


# -- registration ------------------------------------------------------------------------


def _family(name: str, description: str, from_hf: Callable, weights: Callable | None, **kw) -> Family:
    return _register(Family(name=name, description=description, from_hf=from_hf, hf_weights=weights, **kw))


_family(
    "phi_4_mini",
    "Phi-4-mini (3.8B): fused qkv / gate_up, LongRoPE, partial HF rotary (0.75), tied embeddings",
    _phi3_args_from_hf,
    _phi3_weights,
    hf_rope=True,
    hf_model_types=("phi3",),
    # Phi-4-mini-instruct: <|endoftext|> = 199999 is BOS, <|end|> = 200020 ends a turn.
    default_metadata={"get_bos_id": 199999, "get_eos_ids": [200020, 199999]},
    gguf_archs=("phi3",),  # read back into HF layout by gguf_hybrid
)
_family(
    "lfm2",
    "LFM2 / LFM2.5 (350M, 700M, 1.2B): short-convolution and attention layers, q/k norm, HF rotary",
    _lfm2_args_from_hf,
    _lfm2_weights,
    hf_rope=True,
    hf_model_types=("lfm2",),
    # LFM2: <|startoftext|> = 1, <|im_end|> = 7.
    default_metadata={"get_bos_id": 1, "get_eos_ids": [7]},
    gguf_archs=("lfm2",),
)
_family(
    "qwen3_5",
    "Qwen3.5 (0.8B, 2B, 4B) text: Gated DeltaNet and gated attention layers, (1 + w) RMS norms",
    _qwen3_5_args_from_hf,
    _qwen3_5_weights,
    hf_rope=True,
    hf_model_types=("qwen3_5", "qwen3_5_text"),
    gguf_archs=("qwen35",),
)
