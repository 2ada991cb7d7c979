"""GGUF reading (with dequantization) and writing, with the ``gguf`` package.

:func:`read_gguf` returns the metadata fields (decoded to Python values) and
every tensor dequantized to a float32 torch tensor in its numpy (row-major)
shape, keyed by llama.cpp's tensor names.

:func:`write_gguf_from_hf` writes a llama-architecture GGUF file from an
HF-layout checkpoint the way llama.cpp's ``convert_hf_to_gguf.py`` does:
llama.cpp tensor names, q/k rows un-permuted to Meta's interleaved rotary
layout, and the BPE tokenizer as ``tokenizer.ggml.*`` ("gpt2" model). It is
what the weight-conversion tests use to make a GGUF file they can check.

Example::

    write_gguf_from_hf(Path("ckpt"), Path("model.gguf"), qtype="F32")
    fields, tensors = read_gguf(Path("model.gguf"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_gguf", "write_gguf_from_hf"]


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, tensors)`` of a GGUF file; tensors are float32 torch tensors."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
    from gguf.quants import dequantize

    reader = GGUFReader(str(path), "r")  # memory-mapped
    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or not field.types:
            continue
        value = field.contents()
        if field.types[0] == GGUFValueType.ARRAY and field.types[-1] != GGUFValueType.STRING:
            value = list(value)
        fields[name] = value
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dims fastest-first
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # A copy: the reader's arrays are read-only views of the mapped file.
        tensors[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))
    return fields, tensors


_HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _HF_TO_GGUF:
        return _HF_TO_GGUF[hf_name]
    parts = hf_name.split(".")
    # model.layers.{i}.<rest>
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"no GGUF name for {hf_name}")
    return f"blk.{parts[2]}." + _HF_TO_GGUF[".".join(parts[3:])]


def _llama3_rope_factors(config: dict, head_dim: int):
    """The ``rope_freqs`` tensor llama.cpp's converter writes for llama3 rope scaling."""
    import math

    import numpy as np

    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    base = float(config.get("rope_theta", scaling.get("rope_theta", 10000.0)))
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf_from_hf(hf_dir: Path, out: Path, qtype: str = "F32", name: str = "modelbuild") -> Path:
    """Write ``out`` (a llama GGUF) from the HF checkpoint in ``hf_dir``.

    ``qtype``: ``"F32"``, ``"F16"`` or ``"Q8_0"`` for 2-D weights (norms stay F32).
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.quants import quantize
    from safetensors import safe_open

    from .checkpoint import hf_to_meta_qk
    from .families import _rope_from_hf

    config = json.loads((hf_dir / "config.json").read_text())
    rope = _rope_from_hf(config)
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_heads)
    dim = config["hidden_size"]
    head_dim = config.get("head_dim") or dim // n_heads

    w = GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(dim)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[qtype])

    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {a["id"] for a in tok.get("added_tokens", [])}
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = TokenType.CONTROL if i in special else TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    gen_path = hf_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else config
    bos = gen.get("bos_token_id")
    eos = gen.get("eos_token_id")
    if bos is not None:
        w.add_bos_token_id(int(bos))
        w.add_add_bos_token(True)
    if eos is not None:
        w.add_eos_token_id(int(eos[0] if isinstance(eos, list) else eos))

    if rope.get("use_scaled_rope"):
        # llama.cpp stores llama3 rope scaling as per-frequency divisors.
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(config, head_dim))

    qt = getattr(GGMLQuantizationType, qtype)
    with safe_open(str(next(iter(sorted(hf_dir.glob("*.safetensors"))))), framework="pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key).float()
            if key.endswith("self_attn.q_proj.weight"):
                t = hf_to_meta_qk(t, n_heads)  # what llama.cpp's converter does
            elif key.endswith("self_attn.k_proj.weight"):
                t = hf_to_meta_qk(t, n_kv)
            arr = t.numpy().astype(np.float32)
            if arr.ndim == 1 or qtype == "F32":
                w.add_tensor(_gguf_name(key), arr)
            elif qtype == "F16":
                w.add_tensor(_gguf_name(key), arr.astype(np.float16))
            else:
                w.add_tensor(_gguf_name(key), quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
