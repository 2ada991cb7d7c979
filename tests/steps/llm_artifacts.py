"""Tiny LLM artifacts for the quantize/lower/package/runner tests, built once per session.

Each builder is memoized, so test files that import this module share the
work: one synthetic tiny llama3_2 checkpoint, one export (fp32, KV cache,
custom SDPA, dynamic shapes), and the lowered programs derived from it.

Everything here imports torch (inside the builders), so the tests that use
these artifacts carry the ``ml`` marker; tests/ml_guard.py fails them if not.
An import error of our own code is a failure, never a skip.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from modelbuild.testing import as_artifact, run_step

MAX_SEQ_LEN = 64
SEED = 0

_ROOT = Path(tempfile.mkdtemp(prefix="modelbuild-llm-artifacts-"))
atexit.register(shutil.rmtree, _ROOT, True)


@lru_cache(maxsize=None)
def tiny_checkpoint() -> Path:
    """A synthetic llama3_2 'tiny' HF checkpoint plus checkpoint.json."""
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    out = _ROOT / "ckpt"
    fields = write_synthetic_checkpoint(out, "llama3_2", "tiny", SEED)
    (out / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
    return out


@lru_cache(maxsize=None)
def tiny_export(use_sdpa_with_kv_cache: bool = True, enable_dynamic_shape: bool = True, use_kv_cache: bool = True) -> Path:
    """The tiny model exported like ``export_llm -kv --use_sdpa_with_kv_cache``."""
    ckpt = tiny_checkpoint()
    name = f"export-kv{int(use_kv_cache)}-sdpa{int(use_sdpa_with_kv_cache)}-dyn{int(enable_dynamic_shape)}"
    out = _ROOT / name
    params = {
        "dtype": "fp32",
        "max_seq_len": MAX_SEQ_LEN,
        "use_kv_cache": use_kv_cache,
        "use_sdpa_with_kv_cache": use_sdpa_with_kv_cache,
        "enable_dynamic_shape": enable_dynamic_shape,
    }
    from modelbuild.steps.export import ExportStep

    run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", "tiny-llama-ckpt")}, out)
    return out


def program_artifact(path: Path, target: str = "tiny-llama-export"):
    """An exported-program artifact handle whose digest names its content."""
    from modelbuild.artifacts import Artifact

    return Artifact(kind="exported-program", path=path, digest=f"test:{path.name}", target=target)


@lru_cache(maxsize=None)
def quantized(linear: str = "8da4w", group_size: int = 32, embedding_bits: int = 0) -> Path:
    from modelbuild.steps.quantize import QuantizeStep

    out = _ROOT / f"q-{linear}-g{group_size}-e{embedding_bits}"
    params = {"linear": linear, "group_size": group_size, "embedding_bits": embedding_bits}
    run_step(QuantizeStep, params, {"program": program_artifact(tiny_export())}, out)
    return out


@lru_cache(maxsize=None)
def lowered(program: Path, backend: str = "xnnpack", tag: str = "a", **params) -> Path:
    """Lower ``program`` (an exported-program dir) into a fresh pte artifact dir."""
    from modelbuild.steps.lower import LowerStep

    out = _ROOT / f"pte-{program.name}-{backend}-{tag}"
    run_step(LowerStep, {"backend": backend, **params}, {"program": program_artifact(program)}, out)
    return out


def printable_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of a byte-level BPE tokenizer.json whose every token decodes to printable ASCII.

    The runner's Python token callback receives each decoded piece as ``str``;
    a lone byte >= 0x80 (a byte-level base token) is not valid UTF-8 and makes
    the binding raise. Base tokens outside printable ASCII are renamed to
    ``<0xHH>``; merges never involve them for an ASCII corpus, so every ASCII
    text encodes to the same ids with either file. Returns ``dst``.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    data = json.loads(src.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    alphabet = ByteLevel.alphabet()
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    merged_chars = {c for merge in data["model"].get("merges", []) for c in "".join(merge if isinstance(merge, list) else merge.split(" "))}
    renamed = {}
    for token, index in vocab.items():
        if len(token) == 1 and token in alphabet:
            b = byte_of[token]
            if not (32 <= b < 127 or b in (9, 10, 13)):
                assert token not in merged_chars, f"base token {token!r} appears in a merge; cannot rename"
                renamed[token] = f"<0x{b:02X}>"
    data["model"]["vocab"] = {renamed.get(t, t): i for t, i in vocab.items()}
    assert len(data["model"]["vocab"]) == len(vocab), "renaming collided with an existing token"
    dst.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dst


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
