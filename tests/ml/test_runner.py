"""Runtime evidence: each family's fp32 .pte generates, in ExecuTorch's TextLLMRunner, transformers' greedy tokens.

- Every family (``FAMILIES``): its synthetic tiny checkpoint (matrices sharpened,
  ``llm_artifacts.family_checkpoint``) through the export step (fp32, KV cache,
  custom SDPA, static shapes) and the lower step (portable kernels); the
  runner's greedy tokens for a prompt equal those of ``generate(do_sample=False)``
  of the family's transformers model on the same checkpoint and prompt ids.
- llama3_2 again through XNNPACK with dynamic shapes (the shared tiny .pte the
  quantize/lower/profile tests use): the same check.
- 8da4w (group 32): the linears are delegated to XNNPACK and the .pte still
  generates (its tokens may differ from fp32: that is quantization).

Tokens are compared as the pieces the runner hands its Python callback, against
the same tokenizer library's (``pytorch_tokenizers``, the runner's own) decoding
of transformers' ids; the prompt ids are that library's encoding too, as the
runner encodes. The callback gets each piece as ``str``, which a byte-level
base token (a lone byte >= 0x80) cannot be; for a ``tokenizer.json`` the runner
therefore gets a copy with those base tokens renamed to ``<0xHH>`` (same ids
for any ASCII text; see ``llm_artifacts.printable_tokenizer``). A SentencePiece
``tokenizer.model`` (llama2) needs none: its byte pieces decode as ``<0xHH>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "steps"))

import llm_artifacts as A  # noqa: E402

pytestmark = pytest.mark.ml

PROMPT = "The quick brown fox"
MAX_NEW = 12
#: Every family export_llm builds with ExecuTorch's llama Transformer here; qwen2_5's check (from its
#: GGUF file) is tests/ml/test_families_a_export.py's.
FAMILIES = ["llama2", "llama3", "llama3_1", "llama3_2", "qwen3", "qwen3_5", "phi_4_mini", "smollm2", "lfm2"]


def _runner_pieces(pte: Path, tokenizer: Path, prompt: str = PROMPT, max_new: int = MAX_NEW):
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers llama:: ops)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(pte), str(tokenizer))
    pieces: list[str] = []
    stats = []
    config = GenerationConfig(echo=False, max_new_tokens=max_new, temperature=0.0, num_bos=1)
    runner.generate(prompt, config, token_callback=pieces.append, stats_callback=stats.append)
    return pieces, stats[-1]


def _runner_tokenizer(path: Path):
    """``path`` loaded by pytorch_tokenizers, the library the runner tokenizes with."""
    from pytorch_tokenizers.pytorch_tokenizers_cpp import HFTokenizer, SPTokenizer

    tok = SPTokenizer() if path.suffix == ".model" else HFTokenizer()
    tok.load(str(path))
    return tok


def _transformers_greedy(checkpoint: Path, prompt_ids: list[int], max_new: int, eos: list[int]) -> list[int]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    return out[0, len(prompt_ids):].tolist()


def assert_generates_the_transformers_greedy_tokens(pte: Path, checkpoint: Path, tmp_path: Path) -> None:
    """The .pte in ``pte`` (an artifact of the lower step) generates, through TextLLMRunner with the
    tokenizer it ships with, the greedy tokens transformers' model of ``checkpoint`` generates."""
    program = json.loads((pte / "program.json").read_text())
    meta = program["metadata"]
    tokenizer = pte / program["tokenizer"]  # tokenizer.json or (llama2) tokenizer.model
    if tokenizer.suffix == ".json":
        tokenizer = A.printable_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    tok = _runner_tokenizer(tokenizer)
    prompt_ids = tok.encode(PROMPT, 1, 0)  # as the runner encodes it (num_bos=1)
    assert prompt_ids[0] == meta["get_bos_id"] and prompt_ids.count(meta["get_bos_id"]) == 1
    assert len(prompt_ids) + MAX_NEW <= meta["get_max_context_len"]  # the runner is not cut short

    pieces, stats = _runner_pieces(pte / "model.pte", tokenizer)
    assert stats.num_prompt_tokens == len(prompt_ids)
    expected = _transformers_greedy(checkpoint, prompt_ids, MAX_NEW, meta["get_eos_ids"])
    assert len(expected) >= 8, f"too short a continuation to compare: {expected}"
    assert pieces == [tok.decode(i) for i in expected], (expected, pieces)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_pte_generates_the_transformers_greedy_tokens(family, tmp_path):
    program = json.loads((A.family_pte(family) / "program.json").read_text())
    assert program["family"] == family and program["backend"] == "portable" and program["dtype"] == "fp32"
    assert_generates_the_transformers_greedy_tokens(A.family_pte(family), A.family_checkpoint(family), tmp_path)


@pytest.fixture(scope="module")
def runner_tokenizer(tmp_path_factory) -> Path:
    ckpt = A.tiny_checkpoint()
    return A.printable_tokenizer(ckpt / "tokenizer.json", tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def fp32_pte() -> Path:
    return A.lowered(A.tiny_export(), "xnnpack")


@pytest.fixture(scope="module")
def q_pte() -> Path:
    return A.lowered(A.quantized("8da4w", 32), "xnnpack")


def test_printable_tokenizer_keeps_ids(runner_tokenizer):
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(A.tiny_checkpoint() / "tokenizer.json"))
    printable = Tokenizer.from_file(str(runner_tokenizer))
    text = "The quick brown fox, 42 times: jumps!\nover the lazy dog."
    assert printable.encode(text).ids == original.encode(text).ids
    assert printable.get_vocab_size() == original.get_vocab_size()
    pieces = [printable.decode([i], skip_special_tokens=False) for i in range(printable.get_vocab_size())]
    assert all(p.isascii() for p in pieces)
    assert len(set(pieces)) == len(pieces), "pieces must identify their token"


def test_fp32_xnnpack_pte_generates_the_transformers_greedy_tokens(fp32_pte, tmp_path):
    # llama3_2, XNNPACK, dynamic-shape prefill. The shared tiny checkpoint is not sharpened (the
    # quantize/validate tests depend on its weights): tied at normal(0, 0.02), its continuation
    # repeats one token, a weak check of llama3_2's arithmetic by itself. Its graph is llama3's
    # (FAMILIES) with a tied output and rope scale factor 32, which the logits tests check.
    assert_generates_the_transformers_greedy_tokens(fp32_pte, A.tiny_checkpoint(), tmp_path)


def test_8da4w_delegates_linears_to_xnnpack(q_pte):
    import json

    partition = json.loads((q_pte / "partition.json").read_text())
    xnn = partition["delegated"]["XnnpackBackend"]
    # 2 layers x (q, k, v, o, w1, w2, w3) + the output projection.
    assert xnn["aten.linear.default"] == 15
    assert xnn.get("torchao.dequantize_affine.default", 0) > 0
    assert "aten.linear.default" not in partition["portable"]
    program = json.loads((q_pte / "program.json").read_text())
    assert program["quantization"][-1]["linear"] == "8da4w"
    assert program["quantization"][-1]["group_size"] == 32


def test_8da4w_pte_generates(q_pte, fp32_pte, runner_tokenizer):
    pieces, stats = _runner_pieces(q_pte / "model.pte", runner_tokenizer)
    assert 1 <= len(pieces) <= MAX_NEW
    assert stats.num_generated_tokens >= len(pieces) - 1  # the runner does not count the prefill's token
    # 4-bit weights shrink the program.
    assert (q_pte / "model.pte").stat().st_size < 0.6 * (fp32_pte / "model.pte").stat().st_size


def test_runner_generates_with_the_shipped_tokenizer(fp32_pte):
    """The tokenizer copied into the pte artifact is one the runner loads and decodes with.

    No Python token callback here (the runner prints the pieces itself), so
    byte-level pieces that are not valid UTF-8 on their own are fine.
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(fp32_pte / "model.pte"), str(fp32_pte / "tokenizer.json"))
    stats = []
    config = GenerationConfig(echo=False, max_new_tokens=MAX_NEW, temperature=0.0, num_bos=1)
    runner.generate(PROMPT, config, stats_callback=stats.append)
    assert stats and stats[-1].num_generated_tokens >= 1
