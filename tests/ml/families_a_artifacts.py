"""Tiny checkpoints and exports of the issue-15 part A families, built once per test session.

The HF checkpoints are written by transformers (``save_pretrained``) from each
family's synthetic ``tiny`` config, with weights large enough that attention
is sharp; the GGUF files by the ``gguf`` package, as llama.cpp's converter
writes them. Every builder is memoized, so the conversion, export and runner
tests share them (nothing is exported twice).

Everything here imports torch (inside the builders): tests using it carry
the ``ml`` marker.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from modelbuild.testing import as_artifact, run_step

SEQ = 32
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

#: case -> (family, config overrides). qwen2_5 is tied in its small sizes, untied in the larger ones.
CASES = {
    "llama2": ("llama2", {}),
    "llama3": ("llama3", {}),
    "llama3_1": ("llama3_1", {}),
    "qwen2_5": ("qwen2_5", {}),
    "qwen2_5-untied": ("qwen2_5", {"tie_word_embeddings": False}),
    "qwen3": ("qwen3", {}),
}
GGUF_ARCH = {"llama2": "llama", "llama3": "llama", "llama3_1": "llama", "qwen2_5": "qwen2", "qwen3": "qwen3"}

_ROOT = Path(tempfile.mkdtemp(prefix="modelbuild-families-a-"))
atexit.register(shutil.rmtree, _ROOT, True)


def make_hf(path: Path, family: str, overrides: dict | None = None, seed: int = 0) -> Path:
    """The family's tiny checkpoint, built and saved by transformers, with the synthetic tokenizer."""
    import torch
    import transformers

    from modelbuild.ml.llm.synthetic import SIZES, write_synthetic_checkpoint

    cfg = {**SIZES[family]["tiny"], **(overrides or {})}
    write_synthetic_checkpoint(path, family, "tiny", seed)  # tokenizer files; the weights are replaced
    (path / "model.safetensors").unlink()
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # not all ones, so swapped norms would show
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:  # large enough for sharp attention
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path, safe_serialization=True)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "chat_template": TEMPLATE}))
    (path / "checkpoint.json").write_text(json.dumps({"format": "hf", "family": family}))
    return path


def gguf_of(hf: Path, dest: Path, family: str | None = None, **kwargs) -> Path:
    """A directory holding ``model.gguf`` written from ``hf`` (+ checkpoint.json naming ``family``)."""
    from modelbuild.ml.llm.gguf_io import write_gguf_from_hf

    dest.mkdir(parents=True, exist_ok=True)
    write_gguf_from_hf(hf, dest / "model.gguf", **kwargs)
    if family is not None:
        (dest / "checkpoint.json").write_text(json.dumps({"format": "gguf", "family": family}))
    return dest


@lru_cache(maxsize=None)
def hf_checkpoint(case: str) -> Path:
    family, overrides = CASES[case]
    return make_hf(_ROOT / f"hf-{case}", family, overrides)


@lru_cache(maxsize=None)
def gguf_checkpoint(case: str) -> Path:
    return gguf_of(hf_checkpoint(case), _ROOT / f"gguf-{case}", CASES[case][0])


@lru_cache(maxsize=None)
def exported(case: str, source: str = "hf") -> Path:
    """The case exported like ``export_llm -kv --use_sdpa_with_kv_cache`` (dynamic shapes, fp32)."""
    from modelbuild.steps.export import ExportStep

    ckpt = hf_checkpoint(case) if source == "hf" else gguf_checkpoint(case)
    out = _ROOT / f"export-{case}-{source}"
    params = {"max_seq_len": SEQ, "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True}
    run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", f"{case}-ckpt")}, out)
    return out


@lru_cache(maxsize=None)
def lowered(case: str, source: str = "hf", backend: str = "portable") -> Path:
    from modelbuild.artifacts import Artifact
    from modelbuild.steps.lower import LowerStep

    program = exported(case, source)
    out = _ROOT / f"pte-{case}-{source}-{backend}"
    art = Artifact(kind="exported-program", path=program, digest=f"test:{program.name}", target=f"{case}-export")
    run_step(LowerStep, {"backend": backend}, {"program": art}, out)
    return out
