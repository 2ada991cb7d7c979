"""Issue 15 part B families: phi_4_mini, lfm2, qwen3_5 (and smollm3, refused).

Evidence per family, on tiny checkpoints (hidden 64, 2-4 layers, vocabulary 512):

- the HF conversion matches transformers' eager model (``Phi3ForCausalLM``,
  ``Lfm2ForCausalLM``, ``Qwen3_5ForCausalLM``) at atol 1e-4 in fp32, on a
  checkpoint transformers itself wrote (``save_pretrained``) with weights large
  enough that a layout mistake shows, and on the synthetic ``tiny`` size;
- the export step's program is ``export_llm``'s for the same ExecuTorch model
  type, operator for operator, with bit-identical outputs (ExecuTorch's own
  ``convert_weights`` makes its checkpoint where it imports: lfm2, qwen3_5;
  phi_4_mini's imports torchtune, which is not installed, so our converted
  weights are used there and the weight mapping rests on the logits test);
- greedy tokens of each family's fp32 ``.pte`` through ``TextLLMRunner`` equal
  transformers' greedy tokens: ``tests/ml/test_runner.py``, for every family.

Everything heavy is built once per test run (``llm_artifacts._once``) and shared by the tests.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import torch
import transformers

from modelbuild.ml.llm.checkpoint import CheckpointError, load_checkpoint
from modelbuild.ml.llm.model import load_llm
from modelbuild.ml.llm.synthetic import SIZES, write_synthetic_checkpoint
from modelbuild.steps.export import ExportStep
from modelbuild.testing import as_artifact, run_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "steps"))

import llm_artifacts as A  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybrid_models import CAUSAL_LM, sharp_model  # noqa: E402

pytestmark = pytest.mark.ml

FAMILIES = ["phi_4_mini", "lfm2", "qwen3_5"]
MODEL_CLASS = {"phi_4_mini": "phi_4_mini", "lfm2": "lfm2_350m", "qwen3_5": "qwen3_5_0_8b"}
SEQ = 24
ATOL = 1e-4


@lru_cache(maxsize=None)
def hf_checkpoint(family: str) -> Path:
    """The family's tiny model, random weights (sharp attention), written by ``save_pretrained``,
    with the synthetic tiny tokenizer of the family (BOS 1, EOS 2, as the configs say)."""
    def build(path: Path) -> None:
        model = sharp_model(family)
        model.save_pretrained(path, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).write_bytes((synthetic_checkpoint(family) / name).read_bytes())

    return A._once(f"hf-{family}-b-seed0-gen5", build)


@lru_cache(maxsize=None)
def synthetic_checkpoint(family: str) -> Path:
    def build(out: Path) -> None:
        fields = write_synthetic_checkpoint(out, family, "tiny", seed=0)
        (out / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))

    return A._once(f"synthetic-{family}-tiny-seed0", build)


@lru_cache(maxsize=None)
def exported(family: str) -> Path:
    """The tiny HF checkpoint through the export step like ``export_llm -kv --use_sdpa_with_kv_cache``.

    Strict tracing, the step's default: non-strict differs by one operator for LFM2's
    convolution slice (``aten.slice.Tensor`` where strict traces ``aten.alias.default``).
    """
    params = dict(max_seq_len=SEQ, use_kv_cache=True, use_sdpa_with_kv_cache=True, enable_dynamic_shape=True)
    ckpt = hf_checkpoint(family)
    name = f"export-{ckpt.name}" + "".join(f"-{k}={params[k]}" for k in sorted(params))
    return A._once(name, lambda out: run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", "ckpt")}, out))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(1))


def _reference_logits(family: str, path: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = CAUSAL_LM[family].from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def _converted_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    model, _, _ = load_llm(path, "fp32", max_seq_len=tokens.shape[1], generate_full_logits=True)
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_checkpoint_matches_transformers(family):
    path = hf_checkpoint(family)
    assert load_checkpoint(path).family.name == family  # inferred from config.json alone
    tokens = _tokens()
    ref = _reference_logits(family, path, tokens)
    got = _converted_logits(path, tokens)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_tiny_matches_transformers(family):
    path = synthetic_checkpoint(family)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert isinstance(loaded, CAUSAL_LM[family])  # the config.json transformers reads is the family's
    tokens = _tokens()
    with torch.no_grad():
        ref = loaded(tokens).logits
    torch.testing.assert_close(_converted_logits(path, tokens), ref, atol=ATOL, rtol=0)


def test_qwen3_5_multimodal_layout_reads_the_text_model(tmp_path):
    """The hub's Qwen3.5 is Qwen3_5ForConditionalGeneration: nested text_config, model.language_model.*
    weights beside model.visual.* (skipped, never read)."""
    from safetensors.torch import load_file, save_file

    hf = hf_checkpoint("qwen3_5")
    text = json.loads((hf / "config.json").read_text())
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
              "tie_word_embeddings": text.pop("tie_word_embeddings"), "text_config": text}
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = {k.replace("model.", "model.language_model.", 1): v for k, v in load_file(str(hf / "model.safetensors")).items()}
    weights["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    weights["mtp.fc.weight"] = torch.zeros(2, 2)
    save_file(weights, str(tmp_path / "model.safetensors"))
    assert load_checkpoint(tmp_path).family.name == "qwen3_5"
    tokens = _tokens()
    torch.testing.assert_close(
        _converted_logits(tmp_path, tokens), _reference_logits("qwen3_5", hf, tokens), atol=ATOL, rtol=0
    )


def test_synthetic_sizes_have_the_real_shapes():
    from modelbuild.ml.llm.synthetic import tensor_specs

    def count(config):
        total = 0
        for _, shape, _ in tensor_specs(config):
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    # Parameter counts of the published models (tied embeddings counted once).
    assert count(SIZES["phi_4_mini"]["3.8b"]) == 3_836_021_760
    assert count(SIZES["lfm2"]["350m"]) == 354_483_968
    # ExecuTorch's lfm2_350m config says hidden_dim 4608 for intermediate_size 6656.
    assert load_args("lfm2", SIZES["lfm2"]["350m"])["hidden_dim"] == 4608


def load_args(family: str, config: dict) -> dict:
    from modelbuild.ml.llm.families import get_family

    return get_family(family).model_args_from_hf(config)


def test_phi_longrope_args_follow_transformers():
    """The LongRoPE attention factor and frequencies are transformers' (checked on the rope tables)."""
    path = hf_checkpoint("phi_4_mini")
    model, args, _ = load_llm(path, "fp32", max_seq_len=16)
    ref = transformers.Phi3ForCausalLM.from_pretrained(path, dtype=torch.float32)
    rotary = ref.model.rotary_emb
    pos = torch.arange(16)[None]
    cos, sin = rotary(torch.zeros(1, 16, 64), pos)
    torch.testing.assert_close(model.rope.freqs_cos[:16], cos[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.rope.freqs_sin[:16], sin[0], atol=1e-6, rtol=1e-6)
    assert args.rope_scaling_attention_factor == pytest.approx(rotary.attention_scaling)


def test_smollm3_is_refused_with_the_reason(tmp_path):
    config = transformers.SmolLM3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    transformers.SmolLM3ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'smollm3' is not supported: .*NoPE"):
        load_checkpoint(tmp_path)


# -- the same program as export_llm ------------------------------------------------


def _meta_layout(family: str, hf: Path, dest: Path) -> Path:
    """consolidated.00.pth by ExecuTorch's own converter where it imports, params.json from our args."""
    ckpt = load_checkpoint(hf)
    ours = {k: v.contiguous().clone() for k, v in ckpt.state_dict.items()}
    if family in ("lfm2", "qwen3_5"):
        from safetensors.torch import load_file

        if family == "lfm2":
            from executorch.examples.models.lfm2.convert_weights import lfm_2_to_meta as convert
        else:
            from executorch.examples.models.qwen3_5.convert_weights import qwen_3_5_to_meta as convert
        theirs = convert(load_file(str(hf / "model.safetensors")))
        assert sorted(theirs) == sorted(ours)  # our weight mapping is ExecuTorch's
        for name, t in theirs.items():
            assert torch.equal(t, ours[name]), name
        ours = {k: v.contiguous().clone() for k, v in theirs.items()}
    dest.mkdir(parents=True)
    torch.save(ours, dest / "consolidated.00.pth")
    (dest / "params.json").write_text(json.dumps(ckpt.model_args))
    return dest


@pytest.mark.parametrize("family", FAMILIES)
def test_same_program_as_executorch_export_llm(family, tmp_path):
    from executorch.examples.models.llama.export_llama_lib import _prepare_for_llama_export
    from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType

    from modelbuild.ml.program import load_program

    hf = hf_checkpoint(family)
    meta = _meta_layout(family, hf, tmp_path / "meta")
    config = LlmConfig()
    config.base.model_class = ModelType(MODEL_CLASS[family])
    config.base.checkpoint = str(meta / "consolidated.00.pth")
    config.base.params = str(meta / "params.json")
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True
    config.model.enable_dynamic_shape = True
    config.export.max_seq_length = SEQ
    config.export.max_context_length = SEQ
    config.export.output_dir = str(tmp_path / "et")
    theirs = _prepare_for_llama_export(config).export()
    theirs.run_canonical_optimizations()

    ep, info, example = load_program(exported(family))
    assert info.family == family
    assert {k: v for k, v in info.metadata.items() if k not in ("get_bos_id", "get_eos_ids")} == theirs.metadata

    def ops(gm):
        return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]

    their_gm = theirs.pre_autograd_graph_module
    their_gm.graph.eliminate_dead_code()
    assert ops(ep.module()) == ops(their_gm)
    tokens = torch.tensor([[0, 5, 77]])
    with torch.no_grad():
        a = ep.module()(tokens, {"input_pos": torch.tensor([0])})
        b = their_gm(tokens, {"input_pos": torch.tensor([0])})
    torch.testing.assert_close(a, b, atol=0, rtol=0)
