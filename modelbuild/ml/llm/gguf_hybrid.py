"""GGUF files of Phi-4-mini (``phi3``), LFM2 (``lfm2``) and Qwen3.5 (``qwen35``), read back into HF layout.

llama.cpp's converter writes these architectures from the Hugging Face
checkpoint under its own tensor names, with a few transforms of its own.
Reading undoes exactly those, giving an HF ``config.json`` dict and
HF-named tensors; the family's HF path (``hybrid_families``:
``model_args_from_hf`` and the ``hf_weights`` splitter) then does the rest,
the same code that reads safetensors, so the two formats cannot drift apart.

What each converter does, hence what is undone here:

- ``phi3`` (``Phi3MiniModel``): names only; ``attn_qkv`` and ``ffn_up`` keep
  HF's fused ``qkv_proj`` / ``gate_up_proj`` (no q/k permutation: Phi-3 runs
  HF's rotary layout). LongRoPE becomes two tensors, ``rope_factors_short`` and
  ``rope_factors_long`` (one factor per rotary pair), plus
  ``rope.scaling.original_context_length`` and ``rope.scaling.attn_factor``;
  the rotary fraction is ``rope.dimension_count / head_dim``.
- ``lfm2`` (``LFM2Model``): the convolution kernel ``[dim, 1, L]`` is stored
  squeezed to ``[dim, L]``; which layers are convolutions is said by a
  per-layer ``attention.head_count_kv`` of 0; ``feed_forward_length`` is the
  already auto-adjusted MLP width; ``shortconv.l_cache`` is ``conv_L_cache``.
- ``qwen35`` (``Qwen3_5TextModel``, via Qwen3-Next's converter): the RMS norms
  scaled by ``1 + w`` are stored as ``1 + w`` (all but the Gated DeltaNet's own
  ``ssm_norm``); ``A_log`` is stored as ``ssm_a = -exp(A_log)``; ``dt_bias`` as
  ``ssm_dt.bias``; the conv kernel squeezed; and, when there are more value
  heads than key heads, every value-head axis of the linear-attention weights
  reordered from grouped-by-key-head to tiled (``_LinearAttentionVReorderBase``).
  Which layers are full attention is ``full_attention_interval``. Blocks past
  ``block_count - nextn_predict_layers`` (multi-token prediction) are skipped,
  as the HF path skips ``mtp.*``.

Imports no torch at module level (the transforms import it when called).

Example::

    config = hf_config_from_gguf(fields)                 # {"model_type": "lfm2", ...}
    hf = hf_tensors_from_gguf("lfm2", tensors, config)   # {"model.layers.0.conv.conv.weight": ..., ...}
"""

from __future__ import annotations

from typing import Any

from .families import map_name

__all__ = ["HF_ROUTED_ARCHS", "hf_config_from_gguf", "hf_tensors_from_gguf"]

#: GGUF architectures read through the family's HF path.
HF_ROUTED_ARCHS = ("phi3", "lfm2", "qwen35")

_PHI3: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_qkv.weight": "model.layers.{}.self_attn.qkv_proj.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.gate_up_proj.weight",  # fused gate and up
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}

_LFM2: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "token_embd_norm.weight": "model.embedding_norm.weight",  # LFM2's final norm, despite the name
    "output.weight": "lm_head.weight",
    "blk.{}.shortconv.conv.weight": "model.layers.{}.conv.conv.weight",
    "blk.{}.shortconv.in_proj.weight": "model.layers.{}.conv.in_proj.weight",
    "blk.{}.shortconv.out_proj.weight": "model.layers.{}.conv.out_proj.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.out_proj.weight",
    "blk.{}.attn_q_norm.weight": "model.layers.{}.self_attn.q_layernorm.weight",
    "blk.{}.attn_k_norm.weight": "model.layers.{}.self_attn.k_layernorm.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.operator_norm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.ffn_norm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.feed_forward.w1.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.feed_forward.w3.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.feed_forward.w2.weight",
}

_QWEN35: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.post_attention_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",  # query and gate, per head
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.attn_q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "blk.{}.attn_qkv.weight": "model.layers.{}.linear_attn.in_proj_qkv.weight",
    "blk.{}.attn_gate.weight": "model.layers.{}.linear_attn.in_proj_z.weight",
    "blk.{}.ssm_beta.weight": "model.layers.{}.linear_attn.in_proj_b.weight",
    "blk.{}.ssm_alpha.weight": "model.layers.{}.linear_attn.in_proj_a.weight",
    "blk.{}.ssm_conv1d.weight": "model.layers.{}.linear_attn.conv1d.weight",
    "blk.{}.ssm_dt.bias": "model.layers.{}.linear_attn.dt_bias",
    "blk.{}.ssm_a": "model.layers.{}.linear_attn.A_log",
    "blk.{}.ssm_norm.weight": "model.layers.{}.linear_attn.norm.weight",
    "blk.{}.ssm_out.weight": "model.layers.{}.linear_attn.out_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}

_NAMES = {"phi3": _PHI3, "lfm2": _LFM2, "qwen35": _QWEN35}
#: Tensors that are configuration, not weights.
_CONFIG_TENSORS = {"rope_factors_short.weight", "rope_factors_long.weight"}


def _f32(value) -> float:
    from .families import _f32 as shortest

    return shortest(value)


def hf_config_from_gguf(fields: dict[str, Any], tensors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HF ``config.json`` dict llama.cpp's converter read, rebuilt from GGUF metadata.

    ``tensors`` supplies Phi-3's LongRoPE factor tensors (``rope_factors_*``).
    KeyError names a missing key.
    """
    arch = str(fields["general.architecture"])

    def get(key, default: Any = KeyError):
        value = fields.get(f"{arch}.{key}", default)
        if value is KeyError:
            raise KeyError(f"{arch}.{key}")
        return value

    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv = get("attention.head_count_kv", n_heads)
    kv_list = [int(k) for k in kv] if isinstance(kv, (list, tuple)) else None
    # Newer converters append Qwen3.5's multi-token-prediction block(s) after the text layers.
    n_layers = int(get("block_count")) - int(get("nextn_predict_layers", 0))
    vocab = get("vocab_size", None) or len(fields.get("tokenizer.ggml.tokens", []))
    tied = tensors is not None and "output.weight" not in tensors
    config: dict[str, Any] = {
        "hidden_size": dim,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": max(kv_list) if kv_list else int(kv),
        "vocab_size": int(vocab),
        "intermediate_size": int(get("feed_forward_length")),
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
    }
    theta = _f32(get("rope.freq_base", 10000.0))
    eps = _f32(get("attention.layer_norm_rms_epsilon", 1e-5))
    if arch == "phi3":
        head_dim = dim // n_heads
        config.update(model_type="phi3", rms_norm_eps=eps, rope_theta=theta,
                      partial_rotary_factor=int(get("rope.dimension_count", head_dim)) / head_dim)
        if tensors is not None and "rope_factors_long.weight" in tensors:
            original = int(get("rope.scaling.original_context_length"))
            config["original_max_position_embeddings"] = original
            config["rope_scaling"] = {
                "rope_type": "longrope",
                "short_factor": [_f32(x) for x in tensors["rope_factors_short.weight"].reshape(-1).tolist()],
                "long_factor": [_f32(x) for x in tensors["rope_factors_long.weight"].reshape(-1).tolist()],
                "original_max_position_embeddings": original,
            }
            if f"{arch}.rope.scaling.attn_factor" in fields:
                config["rope_scaling"]["attention_factor"] = _f32(get("rope.scaling.attn_factor"))
    elif arch == "lfm2":
        if kv_list is None:  # a scalar: every layer is attention
            kv_list = [int(kv)] * n_layers
        config.update(
            model_type="lfm2",
            norm_eps=eps,
            rope_theta=theta,
            conv_L_cache=int(get("shortconv.l_cache", 3)),
            block_auto_adjust_ff_dim=False,  # feed_forward_length is the adjusted width already
            layer_types=["conv" if k == 0 else "full_attention" for k in kv_list],
        )
    elif arch == "qwen35":
        head_dim = int(get("attention.key_length", dim // n_heads))
        every = int(get("full_attention_interval", 4))
        n_v = int(get("ssm.time_step_rank"))
        config.update(
            model_type="qwen3_5_text",
            head_dim=head_dim,
            rms_norm_eps=eps,
            rope_parameters={"rope_type": "default", "rope_theta": theta,
                             "partial_rotary_factor": int(get("rope.dimension_count")) / head_dim},
            linear_conv_kernel_dim=int(get("ssm.conv_kernel")),
            linear_key_head_dim=int(get("ssm.state_size")),
            linear_num_key_heads=int(get("ssm.group_count")),
            linear_num_value_heads=n_v,
            linear_value_head_dim=int(get("ssm.inner_size")) // n_v,
            layer_types=["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n_layers)],
        )
    else:
        raise ValueError(f"GGUF architecture '{arch}' is not read through the HF path")
    return config


def _grouped(t, dim: int, n_k: int, per_k: int, head_dim: int):
    """Undo llama.cpp's value-head reorder along ``dim``: tiled ``[per_k, n_k, hd]`` -> grouped ``[n_k, per_k, hd]``."""
    shape = list(t.shape)
    t = t.reshape(*shape[:dim], per_k, n_k, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).reshape(shape)


def _qwen35_tensor(hf_name: str, t, config: dict):
    import torch

    if hf_name.endswith("norm.weight") and not hf_name.endswith("linear_attn.norm.weight"):
        t = t - 1.0  # stored as 1 + w
    elif hf_name.endswith("A_log"):
        t = torch.log(-t)  # stored as -exp(A_log)
    elif hf_name.endswith("conv1d.weight"):
        t = t.unsqueeze(1)  # [channels, K] -> Conv1d's [channels, 1, K]
    n_k, n_v = config["linear_num_key_heads"], config["linear_num_value_heads"]
    if n_k == n_v or n_v % n_k or ".linear_attn." not in hf_name:
        return t
    per_k, hk, hv = n_v // n_k, config["linear_key_head_dim"], config["linear_value_head_dim"]
    if hf_name.endswith(("in_proj_qkv.weight", "conv1d.weight")):
        qk = 2 * n_k * hk  # only the value rows (channels) were reordered
        return torch.cat([t[:qk], _grouped(t[qk:], 0, n_k, per_k, hv)], dim=0)
    if hf_name.endswith("in_proj_z.weight"):
        return _grouped(t, 0, n_k, per_k, hv)
    if hf_name.endswith(("in_proj_a.weight", "in_proj_b.weight", "dt_bias", "A_log")):
        return _grouped(t, 0, n_k, per_k, 1)
    if hf_name.endswith("out_proj.weight"):
        return _grouped(t, 1, n_k, per_k, hv)
    return t


def hf_tensors_from_gguf(arch: str, tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """HF-named tensors in HF layout from a GGUF file's (dequantized) tensors.

    ValueError names a tensor this architecture does not have.
    """
    table = _NAMES[arch]
    out: dict[str, Any] = {}
    n_layers = int(config["num_hidden_layers"])
    for name, t in tensors.items():
        if name in _CONFIG_TENSORS:
            continue
        parts = name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= n_layers:
            continue  # a multi-token-prediction block: not part of the text model (as mtp.* in HF)
        hf_name = map_name(name, table)
        if hf_name is None:
            raise ValueError(f"unexpected tensor {name} for GGUF architecture '{arch}'")
        if arch == "lfm2" and hf_name.endswith("conv.conv.weight"):
            t = t.unsqueeze(1)  # [dim, L] -> Conv1d's [dim, 1, L]
        elif arch == "qwen35":
            t = _qwen35_tensor(hf_name, t, config)
        out[hf_name] = t
    return out
