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

__all__ = [
    "Family",
    "FAMILIES",
    "gguf_archs",
    "get_family",
    "family_for_hf_config",
    "family_for_gguf",
    "UNSUPPORTED_HF_MODEL_TYPES",
    "HF_TO_META",
    "GGUF_TO_META",
]

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
    "blk.{}.attn_q.bias": "layers.{}.attention.wq.bias",
    "blk.{}.attn_k.bias": "layers.{}.attention.wk.bias",
    "blk.{}.attn_v.bias": "layers.{}.attention.wv.bias",
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


def _qwen2_args_from_hf(config: dict) -> dict[str, Any]:
    if config.get("use_sliding_window"):
        raise ValueError("use_sliding_window=true is not supported by ExecuTorch's qwen2_5 definition")
    # Qwen2 always has q/k/v biases (its config has no attention_bias key); HF rotary layout.
    args = _llama_args_from_hf({**config, "attention_bias": True})
    args.update(use_hf_rope=True)
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
    #: ModelArgs the family always sets (GGUF metadata does not say them), e.g. Qwen3's q/k norm.
    fixed_args: dict[str, Any] = field(default_factory=dict)
    #: HF ``config.json`` ``model_type`` values this family reads (family inference, contradiction check).
    hf_model_types: tuple[str, ...] = ("llama",)
    #: HF weight converter ``(name, tensor, model_args) -> [(meta name, tensor), ...]`` ([] skips the
    #: weight, None means unknown); None: ``HF_TO_META`` plus the q/k un-permutation. See hybrid_families.
    hf_weights: Callable[[str, Any, dict], Any] | None = None

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
        args.update(self.fixed_args)
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
        hf_model_types=("qwen3",),
        fixed_args={"use_qk_norm": True, "qk_norm_before_rope": True, "use_hf_rope": True},
    )
)

# -- FAMA (issue 15 part A): the other llama variants export_llm knows, and Qwen2.5 ----------

_LLAMA3_METADATA = {"get_bos_id": 128000, "get_eos_ids": [128009, 128001]}

_register(
    Family(
        name="llama2",
        description="Llama 2 (7B, 13B): plain rope (theta 10000), SentencePiece vocabulary of 32000",
        from_hf=_llama_args_from_hf,
        default_metadata={"get_bos_id": 1, "get_eos_ids": [2]},
    )
)
_register(
    Family(
        name="llama3",
        description="Llama 3 (8B, 70B): GQA, rope theta 500000 without scaling, vocabulary 128256",
        from_hf=_llama_args_from_hf,
        default_metadata=_LLAMA3_METADATA,
    )
)
_register(
    Family(
        name="llama3_1",
        description="Llama 3.1 (8B, 70B): llama3 rope scaling with factor 8",
        from_hf=_llama_args_from_hf,
        # export_llama keeps ModelArgs' rope_scale_factor (8) for llama3 and llama3_1.
        meta_overrides={"rope_scale_factor": 8},
        default_metadata=_LLAMA3_METADATA,
    )
)
_register(
    Family(
        name="qwen2_5",
        description="Qwen2.5 (0.5B, 1.5B, Coder 32B): q/k/v biases, HF rotary layout, tied output in the small sizes",
        from_hf=_qwen2_args_from_hf,
        hf_rope=True,
        default_metadata={"get_bos_id": 151643, "get_eos_ids": [151645, 151643]},
        gguf_archs=("qwen2",),
        hf_model_types=("qwen2",),
        fixed_args={"attention_qkv_bias": True, "use_hf_rope": True},
    )
)


def _llama_variant(vocab: int, rope_factor: float | None, dim: int = 0) -> str:
    """Which llama-architecture family a checkpoint is, from its vocabulary and rope scaling.

    The variants share the architecture; what differs is the vocabulary
    (SentencePiece 32000 for Llama 2, tiktoken 128256 for Llama 3, 49152 for
    SmolLM2) and llama3 rope scaling (none for 3.0, factor 8 for 3.1, 32 for 3.2).
    Anything else is read as ``llama3_2``, the default before these variants existed.
    """
    if vocab == 49152:
        return "smollm2"
    if vocab == 32000:
        return "llama2"
    if vocab == 128256:
        if rope_factor is None:
            return "llama3"
        if float(rope_factor) == 8.0:
            return "llama3_1"
    return "llama3_2"


def gguf_archs() -> dict[str, list[str]]:
    """GGUF ``general.architecture`` -> the families that read it (first: the default)."""
    out: dict[str, list[str]] = {}
    for fam in FAMILIES.values():
        for arch in fam.gguf_archs:
            out.setdefault(arch, []).append(fam.name)
    return dict(sorted(out.items()))


def family_for_gguf(fields: dict, hint: str | None = None, rope_factor: float | None = None) -> Family:
    """The family for a GGUF file's metadata (``general.architecture``, vocabulary); ``hint`` wins if it fits.

    Raises ValueError naming the architecture found and the supported ones,
    or a hint that does not read this architecture.
    """
    arch = str(fields.get("general.architecture"))
    by_arch = gguf_archs()
    supported = ", ".join(by_arch)
    if arch not in by_arch:
        raise ValueError(f"GGUF architecture '{arch}' is not supported (supported: {supported})")
    if hint:
        family = get_family(hint)
        if arch not in family.gguf_archs:
            raise ValueError(
                f"family '{hint}' does not match the file's GGUF architecture '{arch}' "
                f"(families reading '{arch}': {', '.join(by_arch[arch])})"
            )
        return family
    if arch != "llama":
        return FAMILIES[by_arch[arch][0]]
    vocab = fields.get("llama.vocab_size") or len(fields.get("tokenizer.ggml.tokens", []))
    if fields.get("tokenizer.ggml.pre") == "smollm":
        return FAMILIES["smollm2"]
    return FAMILIES[_llama_variant(int(vocab), rope_factor)]


def get_family(name: str) -> Family:
    """The family called ``name`` (ValueError listing the known ones otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family '{name}' (known: {', '.join(sorted(FAMILIES))})") from None


#: HF ``model_type`` values that are known and refused, with the reason (docs/models.md lists them).
UNSUPPORTED_HF_MODEL_TYPES: dict[str, str] = {
    "smollm3": "SmolLM3's NoPE layers (no_rope_layers) are not implemented by ExecuTorch's llama Transformer "
    "(ModelArgs.no_rope_layer_interval is read only by the Qualcomm static_llama), and export_llm has no "
    "smollm3 model type",
}


def family_for_hf_config(config: dict, hint: str | None = None) -> Family:
    """The family for an HF ``config.json`` dict (``model_type``, vocabulary, rope scaling).

    ``hint`` (a recipe's or checkpoint.json's ``family``) picks among the
    families that read the config's ``model_type``; one that does not read
    it is a ValueError, as is a refused or unknown ``model_type``.
    """
    model_type = str(config.get("model_type", "llama"))
    if model_type in UNSUPPORTED_HF_MODEL_TYPES:
        raise ValueError(f"model_type '{model_type}' is not supported: {UNSUPPORTED_HF_MODEL_TYPES[model_type]}")
    readers = [f for f in FAMILIES.values() if model_type in f.hf_model_types]
    if hint:
        family = get_family(hint)
        if family not in readers:
            fits = ", ".join(f.name for f in readers) or "none"
            raise ValueError(
                f"family '{hint}' does not match config.json model_type '{model_type}' (families reading it: {fits})"
            )
        return family
    if not readers:
        known = sorted({t for f in FAMILIES.values() for t in f.hf_model_types})
        raise ValueError(f"model_type '{model_type}' is not supported (supported: {', '.join(known)})")
    if model_type != "llama":
        return readers[0]
    # The llama families share model_type "llama": vocabulary and rope scaling tell them apart.
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    factor = scaling.get("factor") if (scaling or {}).get("rope_type", scaling.get("type")) == "llama3" else None
    return FAMILIES[_llama_variant(int(config.get("vocab_size", 0)), factor)]


# Families whose HF weights need more than a rename register themselves (after Family exists).
from . import hybrid_families  # noqa: E402,F401
