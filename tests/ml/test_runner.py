"""Runtime evidence: the tiny model's .pte loads in ExecuTorch's TextLLMRunner and generates.

- fp32 (XNNPACK): greedy tokens from the runner equal the greedy tokens of the
  original implementation, ``transformers`` ``LlamaForCausalLM`` on the same
  synthetic HF checkpoint.
- 8da4w (group 32): the linears are delegated to XNNPACK and the .pte still
  generates (its tokens may differ from fp32: that is quantization).

The runner's Python callback gets each decoded piece as ``str``, which a
byte-level base token (a lone byte >= 0x80) cannot be; the runner therefore
gets a copy of the checkpoint's tokenizer with those base tokens renamed to
``<0xHH>`` (same ids for any ASCII text; see ``llm_artifacts.printable_tokenizer``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "steps"))

import llm_artifacts as A  # noqa: E402

pytestmark = pytest.mark.ml

PROMPT = "The quick brown fox"
MAX_NEW = 12


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


def _eager_greedy(checkpoint: Path, prompt_ids: list[int], max_new: int, eos: set[int]) -> list[int]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(torch.tensor([ids])).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt in eos:
                break
    return out


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


def test_fp32_pte_generates_the_eager_greedy_tokens(fp32_pte, runner_tokenizer):
    import json

    from tokenizers import Tokenizer

    program = json.loads((fp32_pte / "program.json").read_text())
    meta = program["metadata"]
    eos = set(meta.get("get_eos_ids", []))
    tok = Tokenizer.from_file(str(runner_tokenizer))

    pieces, stats = _runner_pieces(fp32_pte / "model.pte", runner_tokenizer)
    # The tokenizer template adds BOS in eager; the runner adds it with num_bos=1 (get_bos_id).
    prompt_ids = tok.encode(PROMPT).ids
    assert stats.num_prompt_tokens == len(prompt_ids)
    expected = _eager_greedy(A.tiny_checkpoint(), prompt_ids, MAX_NEW, eos)
    expected_pieces = [tok.decode([i], skip_special_tokens=False) for i in expected]
    assert len(pieces) >= 3, f"too short a continuation to compare: {pieces}"
    assert pieces == expected_pieces


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
