"""GGUF files of Phi-4-mini (``phi3``), LFM2 (``lfm2``) and Qwen3.5 (``qwen35``) against transformers.

Each family's tiny model is built by transformers with weights large enough
that attention is sharp and a layout mistake shows, saved with
``save_pretrained``, and written to GGUF through the ``gguf`` package with
llama.cpp's tensor names, metadata keys and transforms (``write_gguf_from_hf``:
phi3 keeps the fused ``attn_qkv`` / ``ffn_up`` and stores LongRoPE as
``rope_factors_*`` tensors; lfm2 squeezes the convolution kernel and marks
convolution layers with 0 KV heads; qwen35 stores ``1 + w`` norms,
``-exp(A_log)`` and value heads in tiled order). Loading the file must give
transformers' eager logits at atol 1e-4 in fp32.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import transformers

from modelbuild.ml.llm.checkpoint import CheckpointError, load_checkpoint
from modelbuild.ml.llm.gguf_io import read_gguf, read_gguf_fields, write_gguf_from_hf
from modelbuild.ml.llm.model import load_llm
from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybrid_models import CAUSAL_LM, sharp_model  # noqa: E402

pytestmark = pytest.mark.ml

SEQ = 16
ATOL = 1e-4
ARCH = {"phi_4_mini": "phi3", "lfm2": "lfm2", "qwen3_5": "qwen35"}
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|end|>{% endfor %}"

_ROOT = Path(tempfile.mkdtemp(prefix="modelbuild-gguf-hybrid-"))
atexit.register(shutil.rmtree, _ROOT, True)


@lru_cache(maxsize=None)
def hf_checkpoint(family: str) -> Path:
    """The tiny model with sharp random weights, saved by transformers, with the family's synthetic tokenizer."""
    model = sharp_model(family)
    path = _ROOT / f"hf-{family}"
    model.save_pretrained(path, safe_serialization=True)
    synthetic = _ROOT / f"synthetic-{family}"
    write_synthetic_checkpoint(synthetic, family, "tiny", seed=0)
    (path / "tokenizer.json").write_bytes((synthetic / "tokenizer.json").read_bytes())
    tok_cfg = json.loads((synthetic / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "chat_template": TEMPLATE}))
    return path


@lru_cache(maxsize=None)
def gguf_dir(family: str, qtype: str = "F32") -> Path:
    """A directory holding only ``model.gguf`` (no checkpoint.json: the family is inferred from the file)."""
    out = _ROOT / f"gguf-{family}-{qtype}"
    out.mkdir()
    qtypes = {"blk.*.ffn_up.weight": "Q5_0"} if qtype != "F32" else None  # mixed, as llama-quantize does
    write_gguf_from_hf(hf_checkpoint(family), out / "model.gguf", qtype=qtype, qtypes=qtypes)
    return out


def _tokens() -> torch.Tensor:
    return torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(1))


@lru_cache(maxsize=None)
def reference_logits(family: str) -> torch.Tensor:
    model = CAUSAL_LM[family].from_pretrained(hf_checkpoint(family), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(_tokens()).logits


def converted_logits(path: Path) -> torch.Tensor:
    model, _, _ = load_llm(path, "fp32", max_seq_len=SEQ, generate_full_logits=True)
    with torch.no_grad():
        return model(_tokens())


def _assert_same_args(got: dict, want: dict) -> None:
    """Equal ModelArgs; floats as the file stores them (float32)."""
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        numeric = isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float))
        assert got[key] == (pytest.approx(value, rel=1e-6) if numeric else value), key


def _file_facts(family: str, fields: dict, tensors: dict) -> None:
    """What llama.cpp's converter writes for the family, seen in the file itself."""
    names = set(tensors)
    if family == "phi_4_mini":
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight", "output.weight"} <= names
        assert not names & {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"}  # fused, as in HF
        assert tensors["rope_factors_short.weight"].tolist() == pytest.approx([1 + 0.1 * i for i in range(6)])
        assert fields["phi3.rope.dimension_count"] == 12  # int(0.75 * 64) // 4
        assert fields["phi3.rope.scaling.original_context_length"] == 64
        assert tensors["blk.0.ffn_up.weight"].shape == (256, 64)  # gate and up
    elif family == "lfm2":
        assert fields["lfm2.attention.head_count_kv"] == [0, 2]  # layer 0 is a convolution
        assert fields["lfm2.shortconv.l_cache"] == 3
        assert tensors["blk.0.shortconv.conv.weight"].shape == (64, 3)  # squeezed
        assert "token_embd_norm.weight" in names and "output.weight" not in names  # final norm; tied
    else:
        assert fields["qwen35.full_attention_interval"] == 2
        assert fields["qwen35.ssm.time_step_rank"] == 4 and fields["qwen35.ssm.group_count"] == 2
        assert bool((tensors["blk.0.ssm_a"] < 0).all())  # -exp(A_log)
        assert {"blk.0.attn_gate.weight", "blk.1.post_attention_norm.weight", "blk.0.ssm_dt.bias"} <= names


@pytest.mark.parametrize("family", sorted(ARCH))
def test_gguf_checkpoint_matches_transformers(family):
    gdir = gguf_dir(family)
    fields, tensors = read_gguf(gdir / "model.gguf")
    assert fields["general.architecture"] == ARCH[family]
    _file_facts(family, fields, tensors)
    ckpt = load_checkpoint(gdir)
    assert (ckpt.family.name, ckpt.format) == (family, "gguf")  # inferred from general.architecture
    assert ckpt.chat_template == TEMPLATE
    _assert_same_args(ckpt.model_args, load_checkpoint(hf_checkpoint(family)).model_args)
    torch.testing.assert_close(converted_logits(gdir), reference_logits(family), atol=ATOL, rtol=0)


def test_phi3_fused_tensors_quantized_q8_0():
    """Q8_0 (and Q5_0 for ffn_up) on phi3's fused attn_qkv / ffn_up: each dequantized by the gguf package.

    The reference is transformers holding the very weights the file holds
    (dequantized here, copied by the gguf package's own name map, fused as
    transformers' Phi3 is), so the comparison stays at atol 1e-4.
    """
    import numpy as np
    from gguf import MODEL_ARCH, GGUFReader, get_tensor_name_map
    from gguf.quants import dequantize

    gdir = gguf_dir("phi_4_mini", "Q8_0")
    reader = GGUFReader(str(gdir / "model.gguf"))
    by_name = {t.name: t for t in reader.tensors}
    assert by_name["blk.0.attn_qkv.weight"].tensor_type.name == "Q8_0"
    assert by_name["blk.1.ffn_up.weight"].tensor_type.name == "Q5_0"
    model = transformers.Phi3ForCausalLM.from_pretrained(hf_checkpoint("phi_4_mini"), dtype=torch.float32).eval()
    names = get_tensor_name_map(MODEL_ARCH.PHI3, 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = by_name[names.get_name(name, try_suffixes=(".weight", ".bias"))]
            p.copy_(torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(p.shape))
        ref = model(_tokens()).logits
    got = converted_logits(gdir)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert not torch.allclose(got, reference_logits("phi_4_mini"), atol=ATOL, rtol=0)  # really quantized


def test_qwen35_value_head_reorder_is_undone(tmp_path, monkeypatch):
    """Written without llama.cpp's grouped -> tiled value-head reorder, the file reads as a different model."""
    from modelbuild.ml.llm import gguf_write_hybrid

    monkeypatch.setattr(gguf_write_hybrid, "_tiled", lambda t, *args: t)
    write_gguf_from_hf(hf_checkpoint("qwen3_5"), tmp_path / "model.gguf")
    monkeypatch.undo()
    assert (converted_logits(tmp_path) - reference_logits("qwen3_5")).abs().max() > 100 * ATOL


def test_contradicting_family_fails_at_the_start_of_export_with_nothing_written(tmp_path):
    """checkpoint.json names a family the GGUF's architecture contradicts: one line, before any weight is read."""
    from modelbuild.errors import StepError
    from modelbuild.steps.export import ExportStep
    from modelbuild.testing import as_artifact, run_step

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.gguf").symlink_to(gguf_dir("lfm2") / "model.gguf")
    (ckpt / "checkpoint.json").write_text(json.dumps({"format": "gguf", "family": "qwen3"}))
    out = tmp_path / "out"
    with pytest.raises(StepError) as err:
        run_step(ExportStep, {"max_seq_len": 8}, {"checkpoint": as_artifact(ckpt, "checkpoint", "ckpt")}, out)
    assert str(err.value) == ("model.gguf: family 'qwen3' does not match the file's GGUF architecture 'lfm2' "
                              "(families reading 'lfm2': lfm2)")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(CheckpointError, match="GGUF architecture 'lfm2'"):
        load_checkpoint(ckpt)
    assert read_gguf_fields(ckpt / "model.gguf")["general.architecture"] == "lfm2"


def test_qwen35_multi_token_prediction_blocks_are_skipped():
    """Newer converters append the MTP block after the text layers (``nextn_predict_layers``): not the text model."""
    from modelbuild.ml.llm.gguf_hybrid import hf_config_from_gguf, hf_tensors_from_gguf

    fields, tensors = read_gguf(gguf_dir("qwen3_5") / "model.gguf")
    config = hf_config_from_gguf(fields, tensors)
    plain = hf_tensors_from_gguf("qwen35", tensors, config)
    fields = {**fields, "qwen35.block_count": 3, "qwen35.nextn_predict_layers": 1}
    extra = {"blk.2.nextn.eh_proj.weight": torch.zeros(64, 128), "blk.2.attn_q.weight": torch.zeros(128, 64)}
    with_mtp = hf_config_from_gguf(fields, {**tensors, **extra})
    assert with_mtp == config
    assert sorted(hf_tensors_from_gguf("qwen35", {**tensors, **extra}, with_mtp)) == sorted(plain)
