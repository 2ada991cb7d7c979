"""The inputs a program runs on when profiled or debugged, and the outputs expected of it.

Taken from a ``reference`` artifact (:mod:`modelbuild.ml.validation.reference`):

- a generic module: the reference's seeded random samples (``input_<s>_<k>.npy``)
  and the original module's outputs for them (``output_<s>_<k>.npy``);
- an LLM: the first prompt's tokens followed by the reference's greedy
  continuation, fed one token per call with its position (the decode path
  of a KV-cache program: ``forward(tokens [1, 1], input_pos [1])``), or the
  whole sequence in one call for a program without a KV cache. The expected
  output of a call is the reference's logits at that position.

Example::

    calls = program_calls(ref_dir, program_json, limit=8)
    calls[0].inputs      # (tensor([[128000]]), tensor([0]))
    calls[0].expected    # numpy logits of the reference at position 0 (LLM), or the sample's outputs
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Call", "program_calls", "describe_calls"]


@dataclass
class Call:
    """One ``forward`` call: its inputs (torch tensors) and what the reference computed for them."""

    inputs: tuple
    expected: list[np.ndarray]
    label: str
    #: A KV-cache LLM's decode call: the token's position (None for other programs).
    position: int | None = None


def _module_calls(ref_dir: Path, ref: dict, limit: int) -> list[Call]:
    import torch

    calls = []
    for s, sample in enumerate(ref["samples"][:limit]):
        inputs = tuple(torch.from_numpy(np.ascontiguousarray(np.load(ref_dir / f))) for f in sample["inputs"])
        expected = [np.load(ref_dir / f) for f in sample["outputs"]]
        calls.append(Call(inputs=inputs, expected=expected, label=f"sample {s}"))
    return calls


def _llm_calls(ref_dir: Path, ref: dict, program: dict[str, Any], limit: int) -> list[Call]:
    import torch

    run = ref["prompts"][0]
    ids = list(run["prompt_ids"]) + list(run["greedy_ids"])
    logits = np.load(ref_dir / run["logits"])
    meta = program.get("metadata") or {}
    use_kv = bool(meta.get("use_kv_cache", program.get("use_kv_cache", True)))
    if not use_kv:
        n = min(len(ids), int(meta.get("get_max_seq_len") or program.get("max_seq_len") or len(ids)))
        return [Call(inputs=(torch.tensor([ids[:n]], dtype=torch.long),), expected=[logits[n - 1]],
                     label=f"prompt 0, {n} tokens")]
    max_ctx = int(meta.get("get_max_context_len") or meta.get("get_max_seq_len") or program.get("max_seq_len") or 128)
    n = min(len(ids), limit, max_ctx - 1)
    return [Call(inputs=(torch.tensor([[ids[p]]], dtype=torch.long), torch.tensor([p], dtype=torch.long)),
                 expected=[logits[p]], label=f"prompt 0, position {p}", position=p) for p in range(n)]


def program_calls(ref_dir: Path, program: dict[str, Any], limit: int) -> list[Call]:
    """Up to ``limit`` forward calls (in order) for the program described by ``program`` (its program.json)."""
    from modelbuild.ml.validation.reference import read_reference

    ref = read_reference(Path(ref_dir))
    if ref["kind"] == "module":
        return _module_calls(Path(ref_dir), ref, limit)
    return _llm_calls(Path(ref_dir), ref, program, limit)


def describe_calls(calls: list[Call]) -> str:
    """A short description for reports: "4 calls (prompt 0, position 0 .. prompt 0, position 3)"."""
    if not calls:
        return "no calls"
    if len(calls) == 1:
        return f"1 call ({calls[0].label})"
    return f"{len(calls)} calls ({calls[0].label} .. {calls[-1].label})"


def program_json(pte_dir: Path) -> dict[str, Any]:
    """The pte artifact's program.json ({} when absent)."""
    f = Path(pte_dir) / "program.json"
    return json.loads(f.read_text()) if f.exists() else {}
