"""Write the ``reference`` artifact: the original model's outputs, computed once.

Layout (all JSON deterministic, arrays as ``.npy``)::

    reference.json       what was run and what came out (see below)
    prompt_<i>.logits.npy  logits over prompt + greedy continuation  (LLM)
    eval.logits.npy        logits over the eval text                  (LLM)
    input_<s>_<k>.npy      seeded random inputs, sample s, input k     (module)
    output_<s>_<k>.npy     the module's outputs                        (module)

``reference.json`` (``format_version`` 1) holds ``kind`` ("llm" or
"module"), the implementation that ran, and for LLMs per prompt the rendered
prompt, its token ids, the greedy continuation and the logits file; for the
eval text its token ids, per-token NLL and perplexity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from modelbuild.step import write_json

from . import metrics

__all__ = ["FORMAT_VERSION", "EVAL_TEXT", "llm_reference", "module_reference", "read_reference"]

FORMAT_VERSION = 1
EVAL_TEXT = Path(__file__).resolve().parents[2] / "data" / "eval_text.txt"


def read_reference(path: Path) -> dict:
    """Read reference.json, checking its format version."""
    ref = json.loads((path / "reference.json").read_text())
    if ref.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"reference.json format_version {ref.get('format_version')}, expected {FORMAT_VERSION}")
    return ref


def llm_reference(
    checkpoint: Path,
    out: Path,
    *,
    prompts: list[str],
    max_new_tokens: int,
    chat_template: bool,
    eval_tokens: int,
    seed: int,
    dtype: str = "fp32",
    log: Callable[[str], None] = print,
) -> dict:
    """Run the checkpoint's original model on the prompts and the eval text."""
    import torch

    from .eager import load_eager_lm

    torch.manual_seed(seed)  # greedy decoding is deterministic; the seed is for completeness
    lm = load_eager_lm(checkpoint, dtype)
    log(f"reference: {lm.implementation}, vocab {lm.vocab_size}, context {lm.context_len}")
    runs = []
    for i, text in enumerate(prompts):
        rendered = lm.render_prompt(text, chat_template)
        templated = rendered != text
        ids = lm.encode(rendered, templated=templated)
        greedy = lm.greedy(ids, max_new_tokens)
        seq = ids + greedy
        logits = lm.logits(seq).astype(np.float32)
        name = f"prompt_{i}.logits.npy"
        np.save(out / name, logits)
        # The runner tokenizes the prompt text itself and adds only the BOS tokens
        # it is told to (GenerationConfig.num_bos): say how many make its ids ours.
        bos_text = getattr(lm._tokenizer, "bos_token", None) or ""
        leading_bos = bool(ids) and lm.bos_id is not None and ids[0] == lm.bos_id
        runner_num_bos = int(leading_bos and not (bos_text and rendered.startswith(bos_text)))
        runs.append({
            "prompt": text, "rendered": rendered, "runner_num_bos": runner_num_bos,
            "chat_template": templated, "prompt_ids": ids, "greedy_ids": greedy,
            "greedy_text": lm.decode(greedy), "logits": name,
            "hit_eos": bool(greedy and greedy[-1] in lm.eos_ids),
        })
        log(f"reference: prompt {i}: {len(ids)} prompt tokens, {len(greedy)} greedy tokens")
    eval_ids = lm.encode(EVAL_TEXT.read_text())[: min(eval_tokens, lm.context_len)]
    eval_logits = lm.logits(eval_ids).astype(np.float32)
    np.save(out / "eval.logits.npy", eval_logits)
    nll = metrics.nll_per_token(eval_logits, eval_ids)
    ref = {
        "format_version": FORMAT_VERSION,
        "kind": "llm",
        "implementation": lm.implementation,
        "model": lm.info,
        "vocab_size": lm.vocab_size,
        "context_len": lm.context_len,
        "bos_id": lm.bos_id,
        "eos_ids": lm.eos_ids,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "prompts": runs,
        "eval": {"text": EVAL_TEXT.name, "ids": eval_ids, "nll": nll,
                 "perplexity": metrics.perplexity(nll), "logits": "eval.logits.npy"},
    }
    write_json(out / "reference.json", ref)
    return ref


def _random_like(t, gen):
    import torch

    if t.dtype.is_floating_point:
        return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, t.shape, generator=gen).bool()
    # Integer inputs are usually indices: stay within what the example used.
    high = max(int(t.max().item()) + 1, 2) if t.numel() else 2
    return torch.randint(0, high, t.shape, generator=gen, dtype=t.dtype)


def to_numpy(t) -> np.ndarray:
    """A tensor as numpy (bf16/fp16 widened to fp32)."""
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def flatten_outputs(out) -> list:
    """The tensors of a module's output, in pytree order."""
    import torch
    from torch.utils import _pytree

    leaves, _ = _pytree.tree_flatten(out)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def module_reference(program: Path, out: Path, *, seed: int, samples: int,
                     log: Callable[[str], None] = print) -> dict:
    """Run an exported generic module eagerly on seeded random inputs."""
    import torch

    from modelbuild.ml.program import load_program

    ep, info, example = load_program(program)
    module = ep.module()
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for s in range(samples):
        inputs = tuple(_random_like(t, gen) for t in example)
        with torch.no_grad():
            outputs = flatten_outputs(module(*inputs))
        in_files, out_files = [], []
        for k, t in enumerate(inputs):
            name = f"input_{s}_{k}.npy"
            np.save(out / name, to_numpy(t))
            in_files.append(name)
        for k, t in enumerate(outputs):
            name = f"output_{s}_{k}.npy"
            np.save(out / name, to_numpy(t))
            out_files.append(name)
        runs.append({"inputs": in_files, "outputs": out_files})
    log(f"reference: {samples} samples of {len(example)} inputs")
    ref = {
        "format_version": FORMAT_VERSION,
        "kind": "module",
        "implementation": "torch.export program, eager (ep.module())",
        "model": {"dtype": info.dtype, "family": info.family, "source": info.source},
        "input_names": info.input_names,
        "output_names": info.output_names,
        "inputs": [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for t in example],
        "seed": seed,
        "samples": runs,
    }
    write_json(out / "reference.json", ref)
    return ref
