"""Weight conversion: HF, Meta and GGUF checkpoints vs. the transformers reference.

A small random llama (transformers ``LlamaForCausalLM``, saved with
``save_pretrained``) is the reference. Its weights are drawn large enough
that attention is sharp, so a rotary layout mistake changes the logits
visibly; the last tests prove that by breaking the permutation on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch
import transformers

from modelbuild.ml.llm import checkpoint as ckpt_mod  # noqa: E402
from modelbuild.ml.llm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from modelbuild.ml.llm.gguf_io import read_gguf, write_gguf_from_hf  # noqa: E402
from modelbuild.ml.llm.model import load_llm  # noqa: E402
from modelbuild.ml.llm.tokenizer import build_bpe_tokenizer, tokenizer_config  # noqa: E402

pytestmark = pytest.mark.ml

VOCAB = 512
SEQ = 24
ATOL = 1e-4


def _config(rope_scaling: bool, tied: bool) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        # = what Meta's params.json (ffn_dim_multiplier 1.0, multiple_of 32) gives for dim 64
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": VOCAB,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0 if rope_scaling else 10000.0,
        "tie_word_embeddings": tied,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if rope_scaling:
        cfg["rope_scaling"] = {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        }
    return cfg


def _make_hf(path: Path, rope_scaling: bool, tied: bool, seed: int = 0) -> Path:
    cfg = _config(rope_scaling, tied)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms: not all ones, so swapped norms would show
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:  # large enough for sharp attention
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path, safe_serialization=True)
    (path / "tokenizer.json").write_text(build_bpe_tokenizer(VOCAB))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config()))
    return path


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))


def _reference_logits(path: Path) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(_tokens()).logits


def _converted_logits(path: Path) -> torch.Tensor:
    model, args, _ = load_llm(path, "fp32", max_seq_len=SEQ, generate_full_logits=True)
    with torch.no_grad():
        return model(_tokens())


def _meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows, by explicit index (independent of the loader)."""
    hd = w.shape[0] // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for j in range(hd // 2):
            out[h * hd + 2 * j] = w[h * hd + j]
            out[h * hd + 2 * j + 1] = w[h * hd + hd // 2 + j]
    return out


def _write_meta(hf: Path, dest: Path, cfg: dict) -> Path:
    """consolidated.00.pth + params.json + tokenizer, as Meta ships Llama 3.2."""
    from safetensors.torch import load_file

    sd = load_file(str(hf / "model.safetensors"))
    names = {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj.weight": "attention.wq.weight",
        "self_attn.k_proj.weight": "attention.wk.weight",
        "self_attn.v_proj.weight": "attention.wv.weight",
        "self_attn.o_proj.weight": "attention.wo.weight",
        "mlp.gate_proj.weight": "feed_forward.w1.weight",
        "mlp.down_proj.weight": "feed_forward.w2.weight",
        "mlp.up_proj.weight": "feed_forward.w3.weight",
        "input_layernorm.weight": "attention_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
    }
    meta = {}
    for key, t in sd.items():
        if key in names:
            meta[names[key]] = t
            continue
        _, _, layer, *rest = key.split(".")
        rest = ".".join(rest)
        if rest == "self_attn.q_proj.weight":
            t = _meta_rows(t, cfg["num_attention_heads"])
        elif rest == "self_attn.k_proj.weight":
            t = _meta_rows(t, cfg["num_key_value_heads"])
        meta[f"layers.{layer}.{per_layer[rest]}"] = t.clone()
    if "output.weight" not in meta:  # Meta checkpoints store the output weight
        meta["output.weight"] = meta["tok_embeddings.weight"].clone()
    dest.mkdir()
    torch.save(meta, dest / "consolidated.00.pth")
    params = {
        "dim": cfg["hidden_size"],
        "ffn_dim_multiplier": 1.0,
        "multiple_of": 32,
        "n_heads": cfg["num_attention_heads"],
        "n_kv_heads": cfg["num_key_value_heads"],
        "n_layers": cfg["num_hidden_layers"],
        "norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "use_scaled_rope": "rope_scaling" in cfg,
        "vocab_size": cfg["vocab_size"],
    }
    (dest / "params.json").write_text(json.dumps(params))
    (dest / "tokenizer.json").write_text((hf / "tokenizer.json").read_text())
    return dest


@pytest.fixture(scope="module")
def hf_scaled(tmp_path_factory) -> Path:
    """Tied embeddings, llama3 rope scaling (the Llama 3.2 shape of things)."""
    return _make_hf(tmp_path_factory.mktemp("hf_scaled"), rope_scaling=True, tied=True)


@pytest.fixture(scope="module")
def hf_plain(tmp_path_factory) -> Path:
    """Untied output, plain rope (what the GGUF writer handles without rope_freqs)."""
    return _make_hf(tmp_path_factory.mktemp("hf_plain"), rope_scaling=False, tied=False, seed=3)


def test_hf_checkpoint_matches_transformers(hf_scaled):
    ref = _reference_logits(hf_scaled)
    got = _converted_logits(hf_scaled)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama3_2", "smollm2"])
def test_hf_v4_style_config_matches_transformers(tmp_path, arch):
    # The synthetic writer emits config.json as the Hub has it (rope_scaling,
    # rope_theta); transformers 5 saves rope_parameters. Both must convert.
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    fields = write_synthetic_checkpoint(tmp_path, arch, "tiny", seed=0)
    (tmp_path / "checkpoint.json").write_text(json.dumps(fields))  # as fetch writes it
    assert load_checkpoint(tmp_path).family.name == arch
    torch.testing.assert_close(_converted_logits(tmp_path), _reference_logits(tmp_path), atol=ATOL, rtol=0)


def test_hf_untied_checkpoint_matches_transformers(hf_plain):
    torch.testing.assert_close(_converted_logits(hf_plain), _reference_logits(hf_plain), atol=ATOL, rtol=0)


def test_meta_checkpoint_matches_transformers(hf_scaled, tmp_path):
    meta = _write_meta(hf_scaled, tmp_path / "meta", _config(rope_scaling=True, tied=True))
    ckpt = load_checkpoint(meta)
    assert ckpt.format == "meta"
    assert ckpt.model_args["rope_scale_factor"] == 32  # llama3_2, as export_llama sets it
    torch.testing.assert_close(_converted_logits(meta), _reference_logits(hf_scaled), atol=ATOL, rtol=0)


def test_gguf_checkpoint_matches_transformers(hf_plain, tmp_path):
    gdir = tmp_path / "gguf"
    gdir.mkdir()
    write_gguf_from_hf(hf_plain, gdir / "model.gguf")
    fields, tensors = read_gguf(gdir / "model.gguf")
    assert fields["general.architecture"] == "llama"
    assert "blk.0.attn_q.weight" in tensors and "token_embd.weight" in tensors
    torch.testing.assert_close(_converted_logits(gdir), _reference_logits(hf_plain), atol=ATOL, rtol=0)


def test_gguf_with_llama3_rope_scaling_matches_transformers(hf_scaled, tmp_path):
    # llama.cpp writes llama3 rope scaling as a rope_freqs tensor of divisors.
    gdir = tmp_path / "gguf"
    gdir.mkdir()
    write_gguf_from_hf(hf_scaled, gdir / "model.gguf")
    _, tensors = read_gguf(gdir / "model.gguf")
    assert "rope_freqs.weight" in tensors
    assert load_checkpoint(gdir).model_args == load_checkpoint(hf_scaled).model_args
    torch.testing.assert_close(_converted_logits(gdir), _reference_logits(hf_scaled), atol=ATOL, rtol=0)
    _assert_same_rope(gdir, hf_scaled)


def _assert_same_rope(path: Path, hf: Path) -> None:
    """The converted model's rotary frequencies equal transformers' (scaled) inv_freq.

    Short test sequences cannot see llama3 scaling (it changes only long
    wavelengths), so the frequencies are compared directly.
    """
    model, _, _ = load_llm(path, "fp32", max_seq_len=8)
    freqs = torch.atan2(model.rope.freqs_sin[1], model.rope.freqs_cos[1])
    ref = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32)
    inv_freq = ref.model.rotary_emb.inv_freq
    torch.testing.assert_close(freqs, inv_freq.float(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("source", ["saved", "synthetic"])
def test_llama3_rope_scaling_matches_transformers(hf_scaled, tmp_path, source):
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    if source == "synthetic":  # transformers-4 style config.json, as on the Hub
        write_synthetic_checkpoint(tmp_path, "llama3_2", "tiny", seed=0)
        path = tmp_path
    else:  # transformers-5 save_pretrained (rope_parameters)
        path = hf_scaled
    assert load_checkpoint(path).model_args["use_scaled_rope"] is True
    _assert_same_rope(path, path)


def test_gguf_q8_0_is_dequantized(hf_plain, tmp_path):
    gdir = tmp_path / "gguf"
    gdir.mkdir()
    write_gguf_from_hf(hf_plain, gdir / "model.gguf", qtype="Q8_0")
    ref = _reference_logits(hf_plain)
    got = _converted_logits(gdir)
    # 8-bit weights: close, not exact; a layout error would be far off (see below).
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.allclose(got, ref, atol=ATOL, rtol=0)


def test_gguf_tokenizer_is_rebuilt(hf_plain, tmp_path):
    from tokenizers import Tokenizer

    gdir = tmp_path / "gguf"
    gdir.mkdir()
    write_gguf_from_hf(hf_plain, gdir / "model.gguf")
    _, _, tok_path = load_llm(gdir, "fp32", max_seq_len=8, tokenizer_dir=tmp_path / "tok")
    assert tok_path == tmp_path / "tok" / "tokenizer.json"
    text = "Where did you come from? How long did the crossing take? 1899 ✓"
    original = Tokenizer.from_file(str(hf_plain / "tokenizer.json"))
    rebuilt = Tokenizer.from_file(str(tok_path))
    assert rebuilt.encode(text).ids == original.encode(text).ids
    assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=True) == text


def test_wrong_hf_permutation_is_caught(hf_scaled, monkeypatch):
    ref = _reference_logits(hf_scaled)
    # Pretend HF q/k were already in Meta's layout (the classic mistake).
    monkeypatch.setattr(ckpt_mod, "hf_to_meta_qk", lambda w, n_heads: w)
    got = _converted_logits(hf_scaled)
    assert (got - ref).abs().max() > 100 * ATOL


def test_wrong_gguf_permutation_is_caught(hf_plain, tmp_path, monkeypatch):
    ref = _reference_logits(hf_plain)
    gdir = tmp_path / "gguf"
    gdir.mkdir()
    # A GGUF writer that forgot llama.cpp's q/k permutation.
    monkeypatch.setattr(ckpt_mod, "hf_to_meta_qk", lambda w, n_heads: w)
    write_gguf_from_hf(hf_plain, gdir / "model.gguf")
    monkeypatch.undo()
    got = _converted_logits(gdir)
    assert (got - ref).abs().max() > 100 * ATOL


def test_torch_load_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "meta"
    d.mkdir()
    with open(d / "consolidated.00.pth", "wb") as f:
        pickle.dump({"tok_embeddings.weight": Evil()}, f)
    (d / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 1, "vocab_size": 4}))
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint"):
        load_checkpoint(d)


def test_unsupported_config_says_why(tmp_path):
    cfg = _config(rope_scaling=False, tied=True)
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="rope type 'yarn' is not supported"):
        load_checkpoint(tmp_path)


# -- qwen3: q/k norms, HF rotary layout kept ------------------------------------


@pytest.fixture(scope="module")
def hf_qwen3(tmp_path_factory) -> Path:
    cfg = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**cfg)).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen) if p.dim() == 1 else 0.2 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("qwen3")
    model.save_pretrained(path, safe_serialization=True)
    return path


def _qwen3_reference(path: Path) -> torch.Tensor:
    model = transformers.Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(_tokens()).logits


def test_qwen3_checkpoint_matches_transformers(hf_qwen3):
    assert load_checkpoint(hf_qwen3).family.name == "qwen3"
    torch.testing.assert_close(_converted_logits(hf_qwen3), _qwen3_reference(hf_qwen3), atol=ATOL, rtol=0)


def test_qwen3_with_a_permutation_is_caught(hf_qwen3, monkeypatch):
    import dataclasses

    from modelbuild.ml.llm import families

    # Treating Qwen3 like llama (un-permuting q/k) must be visible.
    monkeypatch.setitem(families.FAMILIES, "qwen3", dataclasses.replace(families.FAMILIES["qwen3"], hf_rope=False))
    got = _converted_logits(hf_qwen3)
    assert (got - _qwen3_reference(hf_qwen3)).abs().max() > 100 * ATOL
