"""GGUF writing for ``phi3``, ``lfm2`` and ``qwen35``, as llama.cpp's converter classes do it.

The metadata keys and tensor transforms of ``Phi3MiniModel``, ``LFM2Model``
and ``Qwen3_5TextModel`` (``convert_hf_to_gguf.py``); tensor names come from
the ``gguf`` package's ``TensorNameMap`` in :func:`.gguf_write.write_gguf_from_hf`,
which calls these hooks. The tests write their GGUF evidence with it;
:mod:`.gguf_hybrid` reads such files back.

- phi3: LongRoPE as ``rope_factors_short`` / ``rope_factors_long`` tensors,
  ``rope.scaling.attn_factor`` = ``sqrt(1 + ln(scale) / ln(original))``,
  ``rope.scaling.original_context_length``, ``attention.sliding_window`` 0
  for Phi-4; fused ``qkv_proj`` / ``gate_up_proj`` written as they are.
- lfm2: per-layer ``attention.head_count_kv`` (0 for a convolution layer),
  ``shortconv.l_cache``, the auto-adjusted ``feed_forward_length``; the
  convolution kernel squeezed to 2-D.
- qwen35: ``ssm.*`` sizes, ``full_attention_interval``,
  ``rope.dimension_sections``; norms as ``1 + w`` (not the linear
  attention's), ``A_log`` as ``-exp(A_log)``, ``dt_bias`` as ``ssm_dt.bias``,
  value heads reordered from grouped to tiled when there are more of them than
  key heads. Layer types other than every ``full_attention_interval``-th
  layer cannot be expressed and are refused.

Imports no torch at module level.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["HYBRID_ARCH_OF_MODEL_TYPE", "KEEP_F32", "write_hparams", "extra_tensors", "converted"]

#: HF ``model_type`` -> the GGUF architecture llama.cpp writes for it.
HYBRID_ARCH_OF_MODEL_TYPE = {"phi3": "phi3", "lfm2": "lfm2", "qwen3_5_text": "qwen35", "qwen3_5": "qwen35"}
#: GGUF tensors llama.cpp keeps in F32 whatever the requested type (the convolution kernels).
KEEP_F32 = (".shortconv.conv.weight", ".ssm_conv1d.weight")


def _rope(config: dict) -> dict:
    return dict(config.get("rope_parameters") or config.get("rope_scaling") or {})


def text_config(config: dict) -> dict:
    """The text model's config (Qwen3.5's multimodal ``text_config``, else ``config``)."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def write_hparams(w, config: dict, arch: str) -> None:
    """The architecture's metadata keys (block count, heads, rope, ...), as the converter writes them."""
    config = text_config(config)
    rope = _rope(config)
    dim, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    w.add_context_length(int(config.get("max_position_embeddings", 4096)))
    w.add_embedding_length(dim)
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_head_count(n_heads)
    w.add_rope_freq_base(theta)
    if arch == "phi3":
        fraction = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
        original = config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        if original is not None:
            w.add_rope_scaling_orig_ctx_len(int(original))
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count_kv(n_kv)
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
        w.add_rope_dimension_count(int(fraction * dim) // n_heads)
        w.add_sliding_window(int(config.get("sliding_window") or 0))  # 0 tells Phi-4 from Phi-3
        if rope.get("long_factor"):
            scale = int(config["max_position_embeddings"]) / int(original)
            kind = str(rope.get("rope_type", rope.get("type", ""))).lower()
            if kind not in ("su", "longrope"):
                raise ValueError(f"phi3 rope type '{kind}' is not written here (longrope only)")
            attn = math.sqrt(1 + math.log(scale) / math.log(int(original))) if scale > 1 else 1.0
            w.add_rope_scaling_attn_factors(attn)
    elif arch == "lfm2":
        from .hybrid_families import _lfm2_hidden_dim

        w.add_head_count_kv([n_kv if t != "conv" else 0 for t in config["layer_types"]])
        w.add_vocab_size(int(config["vocab_size"]))
        w.add_shortconv_l_cache(int(config.get("conv_L_cache", 3)))
        w.add_layer_norm_rms_eps(float(config.get("norm_eps", 1e-5)))
        w.add_feed_forward_length(_lfm2_hidden_dim(config))
    elif arch == "qwen35":
        head_dim = int(config.get("head_dim") or dim // n_heads)
        every = int(config.get("full_attention_interval", 4))
        n = int(config["num_hidden_layers"])
        types = config.get("layer_types")
        if types is not None and list(types) != [
            "full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)
        ]:
            raise ValueError(f"layer_types {types} are not every {every}th layer full attention "
                             "(llama.cpp's qwen35 keeps only full_attention_interval)")
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count_kv(n_kv)
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_ssm_conv_kernel(int(config["linear_conv_kernel_dim"]))
        w.add_ssm_state_size(int(config["linear_key_head_dim"]))
        w.add_ssm_group_count(int(config["linear_num_key_heads"]))
        w.add_ssm_time_step_rank(int(config["linear_num_value_heads"]))
        w.add_ssm_inner_size(int(config["linear_value_head_dim"]) * int(config["linear_num_value_heads"]))
        w.add_full_attention_interval(every)
        fraction = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.25)))
        w.add_rope_dimension_count(int(head_dim * fraction))
        sections = list(rope.get("mrope_section", [11, 11, 10]))
        w.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))
    else:
        raise ValueError(f"no hybrid GGUF writer for architecture '{arch}'")


def extra_tensors(config: dict, arch: str) -> list[tuple[str, Any]]:
    """Tensors the converter generates (Phi-3's LongRoPE factors), written before the weights."""
    import numpy as np

    rope = _rope(text_config(config))
    if arch != "phi3" or not rope.get("long_factor"):
        return []
    return [
        ("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32)),
        ("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32)),
    ]


def _tiled(t, dim: int, n_k: int, per_k: int, head_dim: int):
    """llama.cpp's value-head reorder along ``dim``: grouped ``[n_k, per_k, hd]`` -> tiled ``[per_k, n_k, hd]``."""
    shape = list(t.shape)
    t = t.reshape(*shape[:dim], n_k, per_k, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).reshape(shape)


def converted(arch: str, key: str, t, config: dict) -> tuple[str, Any] | None:
    """``(HF name to map, tensor)`` for one checkpoint tensor after the converter's transform; None skips it."""
    import torch

    config = text_config(config)
    if key.startswith("model.language_model."):
        key = "model." + key[len("model.language_model."):]
    if arch == "lfm2" and "conv.conv" in key:
        return key, t.squeeze(1)
    if arch != "qwen35":
        return key, t
    if key.startswith(("model.visual.", "mtp.")):
        return None
    n_k, n_v = int(config["linear_num_key_heads"]), int(config["linear_num_value_heads"])
    if ".linear_attn." in key and n_k != n_v:  # _LinearAttentionVReorderBase
        per_k, hk, hv = n_v // n_k, int(config["linear_key_head_dim"]), int(config["linear_value_head_dim"])
        if key.endswith(".in_proj_qkv.weight"):
            qk = 2 * n_k * hk
            t = torch.cat([t[:qk], _tiled(t[qk:], 0, n_k, per_k, hv)], dim=0)
        elif key.endswith(".in_proj_z.weight"):
            t = _tiled(t, 0, n_k, per_k, hv)
        elif key.endswith((".in_proj_a.weight", ".in_proj_b.weight", ".A_log", ".dt_bias")):
            t = _tiled(t, 0, n_k, per_k, 1)
        elif key.endswith(".conv1d.weight"):
            t = t.squeeze(1)
            qk = 2 * n_k * hk
            t = torch.cat([t[:qk], _tiled(t[qk:], 0, n_k, per_k, hv)], dim=0)
        elif key.endswith(".out_proj.weight"):
            t = _tiled(t, 1, n_k, per_k, hv)
    if key.endswith(".A_log"):  # Qwen3NextModel.modify_tensors
        return key, -torch.exp(t)
    if key.endswith(".dt_bias"):
        return key[: -len(".dt_bias")] + ".dt_proj.bias", t
    if "conv1d" in key:
        return key, t.reshape(t.shape[0], -1)
    if key.endswith("norm.weight") and not key.endswith("linear_attn.norm.weight"):
        return key, t + 1
    return key, t
