"""Tiny LLM artifacts for the quantize/lower/package/runner tests, built once per session.

Each builder is memoized, so test files that import this module share the
work: one synthetic tiny llama3_2 checkpoint, one export (fp32, KV cache,
custom SDPA, dynamic shapes), and the lowered programs derived from it; and, for the
runner's greedy-token check, each family's tiny checkpoint and its portable .pte.
Under pytest-xdist the workers of one run share them too: they live in the
directory tests/conftest.py names in ``MODELBUILD_TEST_SHARED``, and each is
built by the first worker that needs it, under a file lock, while the others
wait for it.

Everything here imports torch (inside the builders), so the tests that use
these artifacts carry the ``ml`` marker; tests/ml_guard.py fails them if not.
An import error of our own code is a failure, never a skip.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from modelbuild.testing import as_artifact, run_step

MAX_SEQ_LEN = 64
SEED = 0

if os.environ.get("MODELBUILD_TEST_SHARED"):
    _ROOT = Path(os.environ["MODELBUILD_TEST_SHARED"]) / "llm-artifacts"  # removed by the controller at the end
    _ROOT.mkdir(parents=True, exist_ok=True)
else:
    _ROOT = Path(tempfile.mkdtemp(prefix="modelbuild-llm-artifacts-"))
    atexit.register(shutil.rmtree, _ROOT, True)


def _once(name: str, build: Callable[[Path], None]) -> Path:
    """``_ROOT / name``, built by ``build`` unless another process of this run already did."""
    out = _ROOT / name
    with open(_ROOT / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = _ROOT / f"{name}.done"
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a half-built one from a worker that failed
            build(out)
            done.touch()
    return out


@lru_cache(maxsize=None)
def tiny_checkpoint() -> Path:
    """A synthetic llama3_2 'tiny' HF checkpoint plus checkpoint.json."""
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    def build(out: Path) -> None:
        fields = write_synthetic_checkpoint(out, "llama3_2", "tiny", SEED)
        (out / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))

    return _once("ckpt", build)


@lru_cache(maxsize=None)
def tiny_export(use_sdpa_with_kv_cache: bool = True, enable_dynamic_shape: bool = True, use_kv_cache: bool = True) -> Path:
    """The tiny model exported like ``export_llm -kv --use_sdpa_with_kv_cache``."""
    ckpt = tiny_checkpoint()
    name = f"export-kv{int(use_kv_cache)}-sdpa{int(use_sdpa_with_kv_cache)}-dyn{int(enable_dynamic_shape)}"
    params = {
        "dtype": "fp32",
        "max_seq_len": MAX_SEQ_LEN,
        "use_kv_cache": use_kv_cache,
        "use_sdpa_with_kv_cache": use_sdpa_with_kv_cache,
        "enable_dynamic_shape": enable_dynamic_shape,
    }
    from modelbuild.steps.export import ExportStep

    return _once(name, lambda out: run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", "tiny-llama-ckpt")}, out))


#: The greedy-token checks multiply every matrix of a family's synthetic tiny checkpoint by this.
#: At the synthetic normal(0, 0.02) the tied tiny models repeat one token forever and the untied
#: ones pick each argmax by 4e-4; at 0.2 the continuations vary and the top two logits of every
#: step stay at least 2e-3 apart (fp32 .pte and eager differ by ~1e-6).
SHARPEN = 10.0


@lru_cache(maxsize=None)
def family_checkpoint(family: str) -> Path:
    """The family's synthetic ``tiny`` HF checkpoint (its own tokenizer), matrices times :data:`SHARPEN`."""
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    def build(out: Path) -> None:
        from safetensors.torch import load_file, save_file

        fields = write_synthetic_checkpoint(out, family, "tiny", SEED)
        weights = load_file(str(out / "model.safetensors"))
        sharp = {name: t * SHARPEN if t.dim() >= 2 else t for name, t in weights.items()}  # norms, biases kept
        save_file(sharp, str(out / "model.tmp"), metadata={"format": "pt"})
        os.replace(out / "model.tmp", out / "model.safetensors")
        (out / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic", "sharpen": SHARPEN}, sort_keys=True))

    return _once(f"ckpt-{family}-tiny-seed{SEED}-x{SHARPEN:g}", build)


@lru_cache(maxsize=None)
def family_pte(family: str) -> Path:
    """:func:`family_checkpoint` through the export step (fp32, KV cache, custom SDPA, static shapes)
    and the lower step (portable kernels).

    Static shapes: the lowering takes about half the time of a dynamic-shape one, and the runner
    then prefills one token at a time (its other path; the dynamic one is covered by the llama3_2
    XNNPACK .pte here and the qwen2_5 one of tests/ml/test_families_a_export.py).
    """
    from modelbuild.steps.export import ExportStep

    ckpt = family_checkpoint(family)
    params = {"dtype": "fp32", "max_seq_len": MAX_SEQ_LEN, "use_kv_cache": True, "use_sdpa_with_kv_cache": True,
              "enable_dynamic_shape": False}
    name = f"export-{ckpt.name}" + "".join(f"-{k}={params[k]}" for k in sorted(params))
    program = _once(name, lambda out: run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", f"{family}-ckpt")}, out))
    return lowered(program, "portable")


def program_artifact(path: Path, target: str = "tiny-llama-export"):
    """An exported-program artifact handle whose digest names its content."""
    from modelbuild.artifacts import Artifact

    return Artifact(kind="exported-program", path=path, digest=f"test:{path.name}", target=target)


@lru_cache(maxsize=None)
def quantized(linear: str = "8da4w", group_size: int = 32, embedding_bits: int = 0) -> Path:
    from modelbuild.steps.quantize import QuantizeStep

    params = {"linear": linear, "group_size": group_size, "embedding_bits": embedding_bits}
    return _once(f"q-{linear}-g{group_size}-e{embedding_bits}",
                 lambda out: run_step(QuantizeStep, params, {"program": program_artifact(tiny_export())}, out))


@lru_cache(maxsize=None)
def lowered(program: Path, backend: str = "xnnpack", tag: str = "a", **params) -> Path:
    """Lower ``program`` (an exported-program dir) into a fresh pte artifact dir."""
    from modelbuild.steps.lower import LowerStep

    return _once(lowered_name(program, backend, tag, params),
                 lambda out: run_step(LowerStep, {"backend": backend, **params}, {"program": program_artifact(program)}, out))


def lowered_name(program: Path, backend: str, tag: str, params: dict) -> str:
    """The directory of ``lowered(program, backend, tag, **params)``: every argument is in it.

    Without the options in it, ``lowered(q, "xnnpack", xnnpack_ops="quantized_linears")``
    overwrote ``lowered(q, "xnnpack")`` in place (or, built once, stood in for it), and a
    later test reading the default one read another .pte (tests/test_fused_tiny.py).
    """
    return f"pte-{program.name}-{backend}-{tag}" + "".join(f"-{k}={params[k]}" for k in sorted(params))


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
