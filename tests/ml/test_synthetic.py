"""Synthetic checkpoints: shapes, determinism, tokenizer, and the light import path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelbuild.ml.llm.synthetic import SIZES, tensor_specs, write_synthetic_checkpoint
from modelbuild.ml.llm.tokenizer import build_bpe_tokenizer

pytestmark = pytest.mark.ml


def _n_params(config: dict) -> int:
    total = 0
    for _, shape, _ in tensor_specs(config):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def test_sizes_and_families_import_without_torch():
    code = (
        "import sys\n"
        "from modelbuild.ml.llm.synthetic import SIZES\n"
        "from modelbuild.ml.llm.families import FAMILIES\n"
        "import modelbuild.ml.llm as llm\n"
        "assert llm.SIZES is SIZES and 'llama3_2' in llm.FAMILIES\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_shapes_have_the_published_parameter_counts():
    # Llama 3.2 1B: 1,235,814,400 parameters (tied embeddings); SmolLM2-135M: 134,515,008.
    assert _n_params(SIZES["llama3_2"]["1b"]) == 1_235_814_400
    assert _n_params(SIZES["smollm2"]["135m"]) == 134_515_008
    one_b = SIZES["llama3_2"]["1b"]
    assert one_b["rope_scaling"]["rope_type"] == "llama3" and one_b["rope_theta"] == 500000.0
    assert one_b["tie_word_embeddings"] is True


def test_write_is_byte_for_byte_deterministic(tmp_path):
    a = write_synthetic_checkpoint(tmp_path / "a", "llama3_2", "tiny", seed=7)
    b = write_synthetic_checkpoint(tmp_path / "b", "llama3_2", "tiny", seed=7)
    assert a == b == {
        "format": "hf",
        "family": "llama3_2",
        "synthetic": True,
        "architecture": "llama3_2",
        "size": "tiny",
        "seed": 7,
    }
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # and in a fresh process (hash seeds, thread scheduling of the BPE trainer)
    code = (
        "from pathlib import Path; from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint; "
        f"write_synthetic_checkpoint(Path({str(tmp_path / 'p')!r}), 'llama3_2', 'tiny', seed=7)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in names:
        assert (tmp_path / "p" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    write_synthetic_checkpoint(tmp_path / "c", "llama3_2", "tiny", seed=8)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (tmp_path / "a" / "model.safetensors").read_bytes()


def test_weights_are_seeded_and_scaled(tmp_path):
    from safetensors import safe_open

    write_synthetic_checkpoint(tmp_path, "smollm2", "tiny", seed=0)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")
        norm = f.get_tensor("model.layers.0.input_layernorm.weight")
    assert "lm_head.weight" not in keys  # tied, like the real model
    assert emb.shape == (512, 64)
    assert 0.015 < float(emb.std()) < 0.025
    assert bool((norm == 1).all())


def test_transformers_loads_the_checkpoint(tmp_path):
    import torch
    import transformers

    write_synthetic_checkpoint(tmp_path, "llama3_2", "tiny", seed=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tok("The keeper wrote in his notebook.")["input_ids"]
    assert ids[0] == 0  # <|begin_of_text|>, prepended like Llama 3
    assert tok.decode(ids, skip_special_tokens=True) == "The keeper wrote in his notebook."
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512)


@pytest.mark.parametrize("arch", ["llama3_2", "smollm2"])
def test_tokenizer_round_trips_in_the_executorch_runner_library(tmp_path, arch):
    from pytorch_tokenizers import CppHFTokenizer

    write_synthetic_checkpoint(tmp_path, arch, "tiny", seed=0)
    config = json.loads((tmp_path / "config.json").read_text())
    tok = CppHFTokenizer()
    tok.load(str(tmp_path))  # the directory: tokenizer.json + tokenizer_config.json
    eos = config["eos_token_id"]
    assert tok.bos_tok() == config["bos_token_id"]
    assert tok.eos_tok() == (eos[0] if isinstance(eos, list) else eos)
    from tokenizers import Tokenizer

    text = "Hello, world! 42 ships passed; Ünïcödé ✓ 漢字 and\ttabs\n"
    ids = tok.encode(text, 1, 0)
    assert ids[0] == config["bos_token_id"]
    assert max(ids) < config["vocab_size"]
    # The runner's C++ encoder agrees with the reference implementation, which round-trips.
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ids == reference.encode(text).ids
    assert reference.decode(ids, skip_special_tokens=True) == text
    # The C++ decoder (per token; the binding returns str, so ASCII only here).
    ascii_text = "The light has not failed. Tomorrow I will start a new notebook."
    ascii_ids = tok.encode(ascii_text, 0, 0)
    assert "".join(tok.decode(i) for i in ascii_ids) == ascii_text


def test_large_vocab_tokenizer_puts_specials_at_llama3_ids(tmp_path):
    from pytorch_tokenizers import CppHFTokenizer

    from modelbuild.ml.llm.synthetic import _SPECIALS_LLAMA3_LARGE
    from modelbuild.ml.llm.tokenizer import tokenizer_config

    (tmp_path / "tokenizer.json").write_text(build_bpe_tokenizer(512, _SPECIALS_LLAMA3_LARGE, "<|begin_of_text|>"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config("<|begin_of_text|>", "<|eot_id|>")))
    tok = CppHFTokenizer()
    tok.load(str(tmp_path))
    assert (tok.bos_tok(), tok.eos_tok()) == (128000, 128009)
    ids = tok.encode("Would you like some tea?", 1, 0)
    assert ids[0] == 128000 and max(ids[1:]) < 512


def test_unknown_architecture_or_size(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'gpt9'"):
        write_synthetic_checkpoint(tmp_path, "gpt9", "tiny", 0)
    with pytest.raises(ValueError, match="known: 1b, tiny"):
        write_synthetic_checkpoint(tmp_path, "llama3_2", "70b", 0)
