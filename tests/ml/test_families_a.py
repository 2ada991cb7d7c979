"""Issue 15 part A families (llama2, llama3, llama3_1, qwen2_5, qwen3): HF and GGUF vs transformers.

Each family's tiny checkpoint is written by the real libraries: transformers
builds the model from the family's synthetic ``tiny`` config
(``synthetic_sizes_a``) and saves it with ``save_pretrained``; the GGUF file
is written through the ``gguf`` package with llama.cpp's tensor names,
permutation (llama only) and metadata (``write_gguf_from_hf``). Weights are
drawn large enough that attention is sharp, so a rotary layout mistake
changes the logits visibly. Conversions must match transformers' eager
logits at atol 1e-4 in fp32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

from modelbuild.ml.filetree import detect_format
from modelbuild.ml.llm.checkpoint import CheckpointError, load_checkpoint
from modelbuild.ml.llm.gguf_io import read_gguf, write_gguf_from_hf
from modelbuild.ml.llm.model import load_llm
from modelbuild.ml.llm.synthetic import SIZES, write_synthetic_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))

import families_a_artifacts as FA  # noqa: E402

pytestmark = pytest.mark.ml

SEQ = 24
ATOL = 1e-4
CASES, GGUF_ARCH, TEMPLATE = FA.CASES, FA.GGUF_ARCH, FA.TEMPLATE
make_hf, gguf_of = FA.make_hf, FA.gguf_of


def tokens(vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (1, SEQ), generator=torch.Generator().manual_seed(1))


def reference_logits(hf: Path) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens()).logits


def converted_logits(path: Path) -> torch.Tensor:
    model, _, _ = load_llm(path, "fp32", max_seq_len=SEQ, generate_full_logits=True)
    with torch.no_grad():
        return model(tokens())


@pytest.fixture(scope="module")
def hf_dirs() -> dict[str, Path]:
    """Every case's HF checkpoint, made once per session (lazily, by case)."""

    class Lazy(dict):
        def __missing__(self, case):
            return FA.hf_checkpoint(case)

    return Lazy()


@pytest.fixture(scope="module")
def references(hf_dirs) -> dict[str, torch.Tensor]:
    class Lazy(dict):
        def __missing__(self, case):
            self[case] = reference_logits(hf_dirs[case])
            return self[case]

    return Lazy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_checkpoint_matches_transformers(case, hf_dirs, references):
    family, _ = CASES[case]
    ckpt = load_checkpoint(hf_dirs[case])
    assert ckpt.family.name == family
    assert ckpt.chat_template == TEMPLATE
    torch.testing.assert_close(converted_logits(hf_dirs[case]), references[case], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gguf_checkpoint_matches_transformers(case, hf_dirs, references):
    family, overrides = CASES[case]
    hf = hf_dirs[case]
    gdir = FA.gguf_checkpoint(case)
    fields, tensors = read_gguf(gdir / "model.gguf")
    assert fields["general.architecture"] == GGUF_ARCH[family]
    # Tied checkpoints carry no output.weight (the loader reuses the embedding).
    tied = {**SIZES[family]["tiny"], **overrides}["tie_word_embeddings"]
    assert ("output.weight" in tensors) is not tied
    assert fields["tokenizer.chat_template"] == TEMPLATE
    ckpt = load_checkpoint(gdir)
    assert ckpt.family.name == family and ckpt.format == "gguf"
    assert ckpt.model_args == load_checkpoint(hf).model_args
    assert ckpt.chat_template == TEMPLATE
    torch.testing.assert_close(converted_logits(gdir), references[case], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["llama3_1", "qwen2_5"])
def test_the_wrong_gguf_permutation_is_caught(case, hf_dirs, references, tmp_path, monkeypatch):
    """llama.cpp permutes q/k for the llama architecture only: leaving it out (llama) or adding it (qwen2) shows."""
    from modelbuild.ml.llm import gguf_write

    family, _ = CASES[case]
    wrong = () if GGUF_ARCH[family] == "llama" else ("llama", "qwen2")
    monkeypatch.setattr(gguf_write, "PERMUTED_ARCHS", wrong)
    gdir = gguf_of(hf_dirs[case], tmp_path / "gguf", family)
    monkeypatch.undo()
    assert (converted_logits(gdir) - references[case]).abs().max() > 100 * ATOL


def test_llama3_1_rope_scaling_comes_back_from_rope_freqs(hf_dirs, tmp_path):
    gdir = gguf_of(hf_dirs["llama3_1"], tmp_path / "gguf")  # no family hint: inferred
    _, tensors = read_gguf(gdir / "model.gguf")
    assert "rope_freqs.weight" in tensors
    args = load_checkpoint(gdir).model_args
    assert (args["use_scaled_rope"], args["rope_scale_factor"], args["high_freq_factor"]) == (True, 8, 4)
    # The rotary frequencies equal transformers' scaled inv_freq (short sequences cannot see scaling).
    model, _, _ = load_llm(gdir, "fp32", max_seq_len=8)
    freqs = torch.atan2(model.rope.freqs_sin[1], model.rope.freqs_cos[1])
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama3_1"], dtype=torch.float32)
    torch.testing.assert_close(freqs, ref.model.rotary_emb.inv_freq.float(), atol=1e-7, rtol=1e-5)


# -- mixed quantization types in one file ---------------------------------------------


def _kquant_blocks(rows: int, cols: int, qtype: str, seed: int):
    """Random but valid Q4_K / Q6_K blocks (the gguf package dequantizes these types but cannot quantize)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[getattr(GGMLQuantizationType, qtype)]
    n = rows * cols // block
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    if qtype == "Q4_K":  # d, dmin (f16) first: small, so the weights stay in a sane range
        data[:, 0:2] = np.full(n, 2e-4, np.float16).view(np.uint8).reshape(n, 2)
        data[:, 2:4] = np.full(n, 1e-3, np.float16).view(np.uint8).reshape(n, 2)
    else:  # Q6_K: d (f16) last
        data[:, -2:] = np.full(n, 5e-5, np.float16).view(np.uint8).reshape(n, 2)
    return data.reshape(rows, cols // block * size)


@pytest.mark.parametrize("family", ["llama3", "qwen2_5"])
def test_mixed_quantization_types_dequantize_with_gguf(family, tmp_path):
    """Q4_K, Q5_0, Q6_K, Q8_0, F16 and F32 in one file, each dequantized by the gguf package's own function.

    The reference is transformers with the very weights the file holds
    (dequantized by ``gguf.quants.dequantize`` here, mapped back to HF names
    and layout by explicit index), so the comparison stays at atol 1e-4.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    hf = make_hf(tmp_path / "hf", family, {"intermediate_size": 256}, seed=7)  # K-quants: rows of 256
    raw = {"blk.0.ffn_down.weight": (_kquant_blocks(64, 256, "Q4_K", 1), "Q4_K"),
           "blk.1.ffn_down.weight": (_kquant_blocks(64, 256, "Q6_K", 2), "Q6_K")}
    qtypes = {"blk.*.attn_q.weight": "Q5_0", "blk.*.attn_k.weight": "Q8_0", "blk.*.ffn_gate.weight": "F16",
              "token_embd.weight": "Q8_0"}
    gdir = gguf_of(hf, tmp_path / "gguf", family, qtype="F32", qtypes=qtypes, raw=raw)
    reader = GGUFReader(str(gdir / "model.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert {types["blk.0.ffn_down.weight"], types["blk.1.ffn_down.weight"], types["blk.0.attn_q.weight"],
            types["blk.0.attn_k.weight"], types["blk.0.ffn_gate.weight"], types["blk.0.attn_v.weight"]} == {
        "Q4_K", "Q6_K", "Q5_0", "Q8_0", "F16", "F32"}

    # transformers with the file's weights
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    cfg = model.config
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA if GGUF_ARCH[family] == "llama" else MODEL_ARCH.QWEN2, 2)
    by_name = {t.name: t for t in reader.tensors}
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = by_name[names.get_name(name, try_suffixes=(".weight", ".bias"))]
            w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(p.shape)
            if GGUF_ARCH[family] == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                w = _hf_rows(w, heads)
            p.copy_(w)
        ref = model(tokens()).logits
    got = converted_logits(gdir)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    # and the quantized file really differs from the fp32 weights it came from
    assert not torch.allclose(got, reference_logits(hf), atol=ATOL, rtol=0)


def _hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta interleaved rows -> HF rotate-half rows, by explicit index (independent of the loader)."""
    hd = w.shape[0] // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for j in range(hd // 2):
            out[h * hd + j] = w[h * hd + 2 * j]
            out[h * hd + hd // 2 + j] = w[h * hd + 2 * j + 1]
    return out


# -- tokenizers ------------------------------------------------------------------------

TEXT = "Where did you come from?  It's 1899, they'll say.\n\nHow long did the crossing take? 12345 ✓"


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm", "gpt2", "gpt-4o", "qwen35"])
def test_gguf_bpe_tokenizer_keeps_its_pre_tokenizer(pre, tmp_path):
    from tokenizers import Tokenizer

    from modelbuild.ml.llm.gguf_io import _gguf_tokenizer, read_gguf_fields
    from modelbuild.ml.llm.tokenizer import build_bpe_tokenizer

    hf = tmp_path / "hf"
    write_synthetic_checkpoint(hf, "llama3", "tiny", 0)
    (hf / "tokenizer.json").write_text(build_bpe_tokenizer(512, bos="<|begin_of_text|>", pre=pre))
    write_gguf_from_hf(hf, tmp_path / "m.gguf")
    fields = read_gguf_fields(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.pre"] == pre
    text, _ = _gguf_tokenizer(fields)
    original, rebuilt = Tokenizer.from_file(str(hf / "tokenizer.json")), Tokenizer.from_str(text)
    assert rebuilt.pre_tokenizer.pre_tokenize_str(TEXT) == original.pre_tokenizer.pre_tokenize_str(TEXT)
    assert rebuilt.encode(TEXT).ids == original.encode(TEXT).ids
    assert rebuilt.decode(rebuilt.encode(TEXT).ids, skip_special_tokens=True) == TEXT


def test_gguf_bpe_unknown_pre_tokenizer_is_refused(tmp_path):
    from modelbuild.ml.llm.gguf_io import _gguf_tokenizer

    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": [],
              "tokenizer.ggml.pre": "tekken"}
    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'tekken' is not known"):
        _gguf_tokenizer(fields)


def test_gguf_sentencepiece_tokenizer_is_rebuilt(hf_dirs, tmp_path):
    """llama2's tokenizer.model -> GGUF ("llama" tokens, scores, types) -> a tokenizer.model again."""
    import sentencepiece as spm

    hf = hf_dirs["llama2"]
    gdir = FA.gguf_checkpoint("llama2")
    fields, _ = read_gguf(gdir / "model.gguf")
    assert fields["tokenizer.ggml.model"] == "llama"
    _, _, tok_path = load_llm(gdir, "fp32", max_seq_len=8, tokenizer_dir=tmp_path / "tok")
    assert tok_path == tmp_path / "tok" / "tokenizer.model"
    original = spm.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    rebuilt = spm.SentencePieceProcessor(model_file=str(tok_path))
    assert rebuilt.vocab_size() == original.vocab_size()
    for text in (TEXT, " leading space", "tabs\tand\nnewlines", "ünïcödé bytes ✓✓"):
        assert rebuilt.encode(text) == original.encode(text)
        assert rebuilt.decode(rebuilt.encode(text)) == text
    assert (rebuilt.bos_id(), rebuilt.eos_id(), rebuilt.unk_id()) == (1, 2, 0)


# -- unsupported architectures ----------------------------------------------------------


def _gemma3_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    path.mkdir(parents=True)
    w = GGUFWriter(str(path / "gemma.gguf"), "gemma3")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_gguf_architecture_fails_in_one_line(tmp_path):
    gdir = _gemma3_gguf(tmp_path / "gemma")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(gdir)
    from modelbuild.ml.llm.families import gguf_archs

    supported = ", ".join(gguf_archs())  # llama, qwen2, qwen3, and part B's
    assert {"llama", "qwen2", "qwen3"} <= set(gguf_archs())
    assert str(err.value) == f"gemma.gguf: GGUF architecture 'gemma3' is not supported (supported: {supported})"


def test_unsupported_gguf_fails_at_the_start_of_export_with_nothing_written(tmp_path):
    from modelbuild.errors import StepError
    from modelbuild.steps.export import ExportStep
    from modelbuild.testing import as_artifact, run_step

    gdir = _gemma3_gguf(tmp_path / "gemma")
    out = tmp_path / "out"
    with pytest.raises(StepError, match="GGUF architecture 'gemma3' is not supported") as err:
        run_step(ExportStep, {"max_seq_len": 8}, {"checkpoint": as_artifact(gdir, "checkpoint", "ckpt")}, out)
    assert "\n" not in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_family_that_contradicts_the_gguf_is_refused(hf_dirs, tmp_path):
    gdir = gguf_of(hf_dirs["qwen2_5"], tmp_path / "gguf", "llama3")
    with pytest.raises(CheckpointError, match="family 'llama3' does not match the file's GGUF architecture 'qwen2'"):
        load_checkpoint(gdir)


def test_synthetic_sizes_load_in_transformers_and_convert(tmp_path):
    """The synthetic writer's tiny checkpoints (std 0.02 weights) are valid for transformers and the loader."""
    for family in ("llama2", "qwen2_5", "qwen3"):
        path = tmp_path / family
        fields = write_synthetic_checkpoint(path, family, "tiny", seed=0)
        (path / "checkpoint.json").write_text(json.dumps(fields))
        assert load_checkpoint(path).family.name == family
        torch.testing.assert_close(converted_logits(path), reference_logits(path), atol=1e-5, rtol=0)


def test_stories_pt_checkpoint_matches_transformers(hf_dirs, references, tmp_path):
    """export_llm's stories110m input: llama2.c's one ``stories110M.pt`` (Meta names under
    ``model``) + params.json, read as Meta layout with ``family = "llama2"`` declared."""
    ckpt = load_checkpoint(hf_dirs["llama2"])
    src = tmp_path / "stories"
    src.mkdir()
    torch.save({"model": {k: v.clone() for k, v in ckpt.state_dict.items()}}, src / "stories110M.pt")
    args = ckpt.model_args
    params = {k: args[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps")}
    params["multiple_of"] = 32
    (src / "params.json").write_text(json.dumps(params))
    (src / "checkpoint.json").write_text(json.dumps({"family": "llama2"}))  # no "format": detected
    assert detect_format(["params.json", "stories110M.pt", "tokenizer.model"]) == "meta"
    loaded = load_checkpoint(src)
    assert loaded.format == "meta" and loaded.family.name == "llama2"
    torch.testing.assert_close(converted_logits(src), references["llama2"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["llama2", "llama3_1"])
def test_meta_checkpoint_matches_transformers(case, hf_dirs, references, tmp_path):
    """consolidated.00.pth + params.json as Meta ships them (use_scaled_rope, no scale factor: 8 for llama3_1)."""
    hf = hf_dirs[case]
    ckpt = load_checkpoint(hf)
    meta = tmp_path / "meta"
    meta.mkdir()
    torch.save({k: v.clone() for k, v in ckpt.state_dict.items()}, meta / "consolidated.00.pth")
    args = ckpt.model_args
    params = {k: args[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta")}
    params.update(ffn_dim_multiplier=1.0, multiple_of=32, use_scaled_rope=bool(args.get("use_scaled_rope")))
    (meta / "params.json").write_text(json.dumps(params))
    (meta / "checkpoint.json").write_text(json.dumps({"format": "meta", "family": case}))
    loaded = load_checkpoint(meta).model_args
    assert loaded.get("rope_scale_factor") == (8 if case == "llama3_1" else None)
    torch.testing.assert_close(converted_logits(meta), references[case], atol=ATOL, rtol=0)
