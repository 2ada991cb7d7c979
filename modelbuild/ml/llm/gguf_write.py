"""GGUF writing from an HF checkpoint, as llama.cpp's ``convert_hf_to_gguf.py`` does it.

Tensor names come from the ``gguf`` package's own ``TensorNameMap``; q/k rows
are permuted to Meta's interleaved layout for the ``llama`` architecture only
(``LlamaModel.permute``), never for ``qwen2``/``qwen3``; the tokenizer is
written as ``tokenizer.ggml.*`` (SentencePiece ``"llama"`` from
``tokenizer.model``, else BPE ``"gpt2"`` from ``tokenizer.json`` with its
pre-tokenizer name), with the chat template; llama3 rope scaling becomes a
``rope_freqs`` tensor. ``phi3``, ``lfm2`` and ``qwen35`` take their metadata
keys and tensor transforms from :mod:`.gguf_write_hybrid` (llama.cpp's
``Phi3MiniModel``, ``LFM2Model``, ``Qwen3_5TextModel``). Per-tensor types
(``qtypes``) mix quantizations in one file as ``llama-quantize`` does. The conversion tests use it to make files
they can check; reading is :mod:`.gguf_io`.

Example::

    write_gguf_from_hf(Path("ckpt"), Path("model.gguf"), qtype="Q8_0", qtypes={"blk.*.ffn_down.weight": "Q5_0"})
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["write_gguf_from_hf", "GGUF_ARCH_OF_MODEL_TYPE", "PERMUTED_ARCHS"]

#: HF ``model_type`` -> the GGUF architecture llama.cpp's converter writes for it.
GGUF_ARCH_OF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
#: Architectures whose q/k rows llama.cpp's converter permutes (``LlamaModel.permute``).
PERMUTED_ARCHS = ("llama",)


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


def _write_llama_hparams(w, config: dict, arch: str) -> list:
    """llama / qwen2 / qwen3 metadata; returns the generated tensors (llama3's ``rope_freqs``)."""
    from .families import _rope_from_hf

    rope = _rope_from_hf(config)
    n_heads = config["num_attention_heads"]
    dim = config["hidden_size"]
    head_dim = config.get("head_dim") or dim // n_heads
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(dim)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(config.get("num_key_value_heads", n_heads))
    if arch != "qwen2" or config.get("head_dim"):  # the Qwen2 converter writes no key length
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(config["vocab_size"])
    if rope.get("use_scaled_rope"):  # llama.cpp stores llama3 rope scaling as per-frequency divisors
        return [("rope_freqs.weight", _llama3_rope_factors(config, head_dim))]
    return []


def _write_bpe_vocab(w, hf_dir: Path, pre: str | None) -> None:
    from gguf import TokenType

    from .tokenizer import pre_tokenizer_name

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
    w.add_tokenizer_pre(pre or pre_tokenizer_name(tok))
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    # As llama.cpp's SpecialVocab: tokenizer_config.json's add_bos_token, else
    # whether the post-processor's template starts with a special token.
    cfg_path = hf_dir / "tokenizer_config.json"
    add_bos = json.loads(cfg_path.read_text()).get("add_bos_token") if cfg_path.exists() else None
    if add_bos is None:
        post = tok.get("post_processor") or {}
        add_bos = post.get("type") == "TemplateProcessing" and "SpecialToken" in (post.get("single") or [{}])[0]
    w.add_add_bos_token(bool(add_bos))


def _write_spm_vocab(w, hf_dir: Path, vocab_size: int) -> dict[str, int]:
    """llama.cpp's ``_create_vocab_sentencepiece``: pieces, scores, types, padded to the model's vocabulary."""
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        ty = TokenType.NORMAL
        if sp.is_unknown(i):
            ty = TokenType.UNKNOWN
        elif sp.is_control(i):
            ty = TokenType.CONTROL
        elif sp.is_unused(i):
            ty = TokenType.UNUSED
        elif sp.is_byte(i):
            ty = TokenType.BYTE
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(int(ty))
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_bos_token(True)
    ids = {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
    w.add_unk_token_id(ids["unk"])
    return ids


def write_gguf_from_hf(
    hf_dir: Path,
    out: Path,
    qtype: str = "F32",
    name: str = "modelbuild",
    *,
    qtypes: Mapping[str, str] | None = None,
    raw: Mapping[str, tuple[Any, str]] | None = None,
    pre: str | None = None,
) -> Path:
    """Write ``out`` (a GGUF file) from the HF checkpoint in ``hf_dir``, as llama.cpp's converter would.

    ``qtype``: ``"F32"``, ``"F16"``, ``"BF16"``, ``"Q8_0"``, ``"Q5_0"``, ... for
    2-D weights (norms and biases stay F32); ``qtypes`` maps GGUF tensor names
    or globs (``"blk.*.attn_q.weight"``) to a type of their own, as
    ``llama-quantize`` mixes them. ``raw`` gives tensors written as they are:
    ``{gguf name: (block bytes as uint8 rows, type)}``, for types the gguf
    package can dequantize but not quantize (Q4_K, Q6_K). ``pre``: the
    pre-tokenizer name (default: recognized from tokenizer.json).
    The tokenizer is ``tokenizer.model`` (SentencePiece) if there is one, else
    ``tokenizer.json`` (BPE); ``tokenizer_config.json``'s ``chat_template`` is copied.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, MODEL_ARCH, GGMLQuantizationType, GGUFWriter, LlamaFileType, get_tensor_name_map
    from gguf.quants import quantize
    from safetensors import safe_open

    from . import gguf_write_hybrid as hybrid
    from .checkpoint import hf_to_meta_qk

    config = json.loads((hf_dir / "config.json").read_text())
    model_type = config.get("model_type", "llama")
    arch = GGUF_ARCH_OF_MODEL_TYPE.get(model_type) or hybrid.HYBRID_ARCH_OF_MODEL_TYPE.get(model_type)
    if arch is None:
        raise ValueError(f"no GGUF writer for model_type '{model_type}'")
    text = hybrid.text_config(config)
    n_heads = text["num_attention_heads"]
    n_kv = text.get("num_key_value_heads", n_heads)
    arch_enum = {"llama": MODEL_ARCH.LLAMA, "qwen2": MODEL_ARCH.QWEN2, "qwen3": MODEL_ARCH.QWEN3,
                 "phi3": MODEL_ARCH.PHI3, "lfm2": MODEL_ARCH.LFM2, "qwen35": MODEL_ARCH.QWEN35}[arch]
    names = get_tensor_name_map(arch_enum, text["num_hidden_layers"])

    w = GGUFWriter(str(out), arch)
    w.add_name(name)
    extras: list = []
    if arch in GGUF_ARCH_OF_MODEL_TYPE.values():
        extras = _write_llama_hparams(w, config, arch)
    else:
        hybrid.write_hparams(w, config, arch)
        extras = hybrid.extra_tensors(config, arch)
    w.add_file_type(getattr(LlamaFileType, "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"))

    special: dict[str, int] = {}
    if (hf_dir / "tokenizer.model").exists():
        special = _write_spm_vocab(w, hf_dir, config["vocab_size"])
    elif (hf_dir / "tokenizer.json").exists():
        _write_bpe_vocab(w, hf_dir, pre)
    gen_path = hf_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else config
    bos = gen.get("bos_token_id", special.get("bos"))
    eos = gen.get("eos_token_id", special.get("eos"))
    if bos is not None:
        w.add_bos_token_id(int(bos))
    if eos is not None:
        w.add_eos_token_id(int(eos[0] if isinstance(eos, list) else eos))
    tok_config = hf_dir / "tokenizer_config.json"
    template = json.loads(tok_config.read_text()).get("chat_template") if tok_config.exists() else None
    if template:
        w.add_chat_template(template)

    for extra_name, extra in extras:  # generated tensors come first, as in the converter
        w.add_tensor(extra_name, extra)

    qtypes = dict(qtypes or {})
    raw = dict(raw or {})
    files = sorted(hf_dir.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in sorted(f.keys()):
                t = f.get_tensor(key).float()
                if arch in hybrid.HYBRID_ARCH_OF_MODEL_TYPE.values():
                    done = hybrid.converted(arch, key, t, config)
                    if done is None:
                        continue
                    key, t = done
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ValueError(f"no GGUF name for {key}")
                if gguf_name in raw:
                    blocks, raw_type = raw.pop(gguf_name)
                    w.add_tensor(gguf_name, blocks, raw_dtype=getattr(GGMLQuantizationType, raw_type))
                    continue
                # llama.cpp's LlamaModel.permute, for the llama architecture only.
                if arch in PERMUTED_ARCHS and key.endswith("self_attn.q_proj.weight"):
                    t = hf_to_meta_qk(t, n_heads)
                elif arch in PERMUTED_ARCHS and key.endswith("self_attn.k_proj.weight"):
                    t = hf_to_meta_qk(t, n_kv)
                arr = t.numpy().astype(np.float32)
                kind = next((q for pat, q in qtypes.items() if fnmatch.fnmatchcase(gguf_name, pat)), qtype)
                block = GGML_QUANT_SIZES[getattr(GGMLQuantizationType, kind)][0] if kind not in ("F32", "F16") else 1
                if gguf_name.endswith(hybrid.KEEP_F32) or arr.shape[-1] % block:
                    kind = "F32"  # as the converter: convolution kernels and rows no block fits stay F32
                if arr.ndim == 1 or kind == "F32":
                    w.add_tensor(gguf_name, arr)
                elif kind == "F16":
                    w.add_tensor(gguf_name, arr.astype(np.float16))
                else:
                    qt = getattr(GGMLQuantizationType, kind)
                    w.add_tensor(gguf_name, quantize(arr, qt), raw_dtype=qt)
    if raw:
        raise ValueError(f"raw tensors not in the checkpoint: {', '.join(sorted(raw))}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
