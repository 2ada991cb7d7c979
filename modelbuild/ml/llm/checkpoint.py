"""Checkpoint loaders: HF, Meta and GGUF layouts -> ExecuTorch llama weights.

Every loader returns a :class:`LoadedCheckpoint`: the family, ExecuTorch
``ModelArgs`` keyword arguments (a JSON-able dict), a state dict in the names
and rotary layout ExecuTorch's ``Transformer`` expects, the tokenizer file
and provenance.

Rotary layouts, and why each loader does what it does:

- Meta (``consolidated.00.pth``): q/k rows in Meta's interleaved-pair layout,
  which ExecuTorch's default rope uses. Loaded as is.
- Hugging Face (``*.safetensors``): ``transformers``' conversion script
  permutes q/k rows so that "rotate half" works; we undo it
  (:func:`hf_to_meta_qk`) unless the family runs ExecuTorch's HF rope.
- GGUF (llama.cpp): its converter applies the same un-permutation to HF
  weights, so GGUF q/k are already in Meta's layout. Loaded as is.

Nothing here unpickles arbitrary code: ``torch.load(weights_only=True)`` for
``.pth``, safetensors and GGUF are plain tensor containers. Tensors are
memory-mapped where the format allows.

Example::

    ckpt = load_checkpoint(Path("out/tiny-llama-ckpt"), dtype="fp32")
    ckpt.model_args["dim"], ckpt.tokenizer, sorted(ckpt.state_dict)[:2]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .families import HF_TO_META, Family, family_for_hf_config, get_family, map_name

__all__ = [
    "LoadedCheckpoint",
    "CheckpointError",
    "load_checkpoint",
    "detect_format",
    "hf_to_meta_qk",
    "meta_to_hf_qk",
    "TORCH_DTYPES",
]

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read (one clear line)."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint mapped onto ExecuTorch's llama Transformer."""

    family: Family
    format: str
    model_args: dict[str, Any]
    state_dict: dict[str, Any]
    tokenizer: Path | None = None
    #: Extra tokenizer files to ship next to it (tokenizer_config.json).
    tokenizer_extras: list[Path] = field(default_factory=list)
    #: tokenizer.json text rebuilt from GGUF metadata (when there is no file).
    tokenizer_json: str | None = None
    #: SentencePiece tokenizer.model bytes rebuilt from GGUF metadata (tokenizer.ggml.model = "llama").
    tokenizer_model: bytes | None = None
    #: The chat template (GGUF tokenizer.chat_template, HF tokenizer_config.json), for the package metadata.
    chat_template: str | None = None
    #: Runtime metadata the checkpoint implies (bos/eos ids).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Provenance from checkpoint.json (format, family, synthetic, source, revision, ...).
    source: dict[str, Any] = field(default_factory=dict)
    #: dtype of the stored weights ("fp32", "bf16", ...).
    checkpoint_dtype: str = "fp32"

    def write_tokenizer(self, dest: Path) -> Path | None:
        """Copy (or write) the tokenizer and its extras into ``dest``; return its path."""
        import shutil

        dest.mkdir(parents=True, exist_ok=True)
        if self.tokenizer_json is not None:
            out = dest / "tokenizer.json"
            out.write_text(self.tokenizer_json, encoding="utf-8")
            return out
        if self.tokenizer_model is not None:
            out = dest / "tokenizer.model"
            out.write_bytes(self.tokenizer_model)
            return out
        if self.tokenizer is None:
            return None
        for extra in self.tokenizer_extras:
            shutil.copyfile(extra, dest / extra.name)
        out = dest / self.tokenizer.name
        shutil.copyfile(self.tokenizer, out)
        return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def detect_format(path: Path) -> str:
    """``"hf"``, ``"meta"`` or ``"gguf"`` for a checkpoint directory (or a .gguf file)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise CheckpointError(f"{path.name}: not a checkpoint directory or .gguf file")
    info = path / "checkpoint.json"
    if info.exists():
        fmt = _read_json(info).get("format")
        if fmt in ("hf", "meta", "gguf"):
            return fmt
    if (path / "config.json").exists() and list(path.glob("*.safetensors")):
        return "hf"
    if (path / "params.json").exists() and _meta_weights(path):
        return "meta"
    if list(path.glob("*.gguf")):
        return "gguf"
    raise CheckpointError(
        f"{path}: no checkpoint found (expected config.json + *.safetensors, "
        "params.json + consolidated.00.pth (or one *.pt), or one *.gguf)"
    )


def load_checkpoint(path: Path, dtype: str | None = None) -> LoadedCheckpoint:
    """Load the checkpoint at ``path``; cast floating weights to ``dtype`` if given."""
    path = Path(path)
    fmt = detect_format(path)
    source = _read_json(path / "checkpoint.json") if path.is_dir() and (path / "checkpoint.json").exists() else {}
    loader = {"hf": _load_hf, "meta": _load_meta, "gguf": _load_gguf}[fmt]
    ckpt = loader(path, source.get("family"))
    ckpt.source = {k: v for k, v in source.items() if k != "files"} or {"format": fmt}
    if dtype is not None:
        import torch

        target = getattr(torch, TORCH_DTYPES[dtype])
        ckpt.state_dict = {
            k: (v.to(target) if v.is_floating_point() and v.dtype != target else v) for k, v in ckpt.state_dict.items()
        }
    return ckpt


# -- rotary layout ---------------------------------------------------------


def hf_to_meta_qk(w, n_heads: int):
    """Undo the HF q/k row permutation (rotate-half -> interleaved pairs)."""
    rows, cols = w.shape[0], w.shape[-1]
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf_qk(w, n_heads: int):
    """The HF permutation (interleaved pairs -> rotate-half); inverse of :func:`hf_to_meta_qk`."""
    rows, cols = w.shape[0], w.shape[-1]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _dtype_name(t) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(t.dtype, "fp32")


def _tie_output(sd: dict) -> None:
    # ExecuTorch's Transformer has its own output Linear: tied checkpoints
    # share the embedding (the .pte then stores it twice, as export_llm does).
    if "output.weight" not in sd and "tok_embeddings.weight" in sd:
        sd["output.weight"] = sd["tok_embeddings.weight"]


# -- Hugging Face ----------------------------------------------------------


def _load_hf(path: Path, family_hint: str | None) -> LoadedCheckpoint:
    from safetensors import safe_open

    config = _read_json(path / "config.json")
    try:
        family = family_for_hf_config(config, family_hint)
        args = family.model_args_from_hf(config)
    except ValueError as e:
        raise CheckpointError(f"config.json: {e}") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: config.json but no *.safetensors weights")
    sd: dict[str, Any] = {}
    unknown = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:  # memory-mapped
            for name in f.keys():
                if family.hf_weights is not None:  # the family renames / splits its own weights
                    pairs = family.hf_weights(name, lambda name=name: f.get_tensor(name), args)
                    if pairs is None and not name.endswith("rotary_emb.inv_freq"):
                        unknown.append(name)
                    sd.update(pairs or [])
                    continue
                target = map_name(name, HF_TO_META)
                if target is None:
                    if not name.endswith("rotary_emb.inv_freq"):
                        unknown.append(name)
                    continue
                t = f.get_tensor(name)
                if not family.hf_rope and target.endswith(("attention.wq.weight", "attention.wq.bias")):
                    t = hf_to_meta_qk(t.reshape(t.shape[0], -1), args["n_heads"]).reshape(t.shape)
                elif not family.hf_rope and target.endswith(("attention.wk.weight", "attention.wk.bias")):
                    t = hf_to_meta_qk(t.reshape(t.shape[0], -1), args["n_kv_heads"]).reshape(t.shape)
                sd[target] = t
    if unknown:
        raise CheckpointError(f"unexpected weights for family {family.name}: {', '.join(unknown[:5])}")
    _tie_output(sd)
    # tokenizer.json (HF fast tokenizers); SentencePiece / tiktoken models otherwise.
    tokenizer = next((p for p in (path / "tokenizer.json", path / "tokenizer.model") if p.exists()), None)
    extras = [p for p in (path / "tokenizer_config.json",) if p.exists()]
    return LoadedCheckpoint(
        family=family,
        format="hf",
        model_args=args,
        state_dict=sd,
        tokenizer=tokenizer,
        tokenizer_extras=extras,
        metadata=_hf_metadata(path, config),
        checkpoint_dtype=_dtype_name(sd["tok_embeddings.weight"]),
        chat_template=_hf_chat_template(path),
    )


def _hf_chat_template(path: Path) -> str | None:
    """tokenizer_config.json's ``chat_template`` (a string), or ``chat_template.jinja`` beside it."""
    cfg = path / "tokenizer_config.json"
    template = _read_json(cfg).get("chat_template") if cfg.exists() else None
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    return template if isinstance(template, str) else None


def _hf_metadata(path: Path, config: dict) -> dict[str, Any]:
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    bos = gen.get("bos_token_id", config.get("bos_token_id"))
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    meta: dict[str, Any] = {}
    if isinstance(bos, int):
        meta["get_bos_id"] = bos
    if eos is not None:
        meta["get_eos_ids"] = sorted(set(eos if isinstance(eos, list) else [eos]))
    return meta


# -- Meta ------------------------------------------------------------------


def _meta_weights(path: Path) -> list[Path]:
    """The weight files of a Meta-layout checkpoint: Meta's ``consolidated*.pth`` shards, else
    a single ``*.pth`` / ``*.pt`` beside ``params.json`` (llama2.c's ``stories110M.pt``, which
    ``export_llm`` takes for ``stories110m``: Meta's tensor names under a ``model`` key)."""
    shards = sorted(path.glob("consolidated*.pth"))
    return shards or sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())


def _load_meta(path: Path, family_hint: str | None) -> LoadedCheckpoint:
    import torch

    shards = _meta_weights(path)
    if len(shards) != 1:
        raise CheckpointError(f"{path}: expected one consolidated.00.pth (or one *.pt), found {len(shards)} "
                              "(sharded Meta checkpoints are not supported)")
    params = _read_json(path / "params.json")
    family = get_family(family_hint or "llama3_2")
    try:
        # weights_only: plain tensors only, never arbitrary pickled code.
        sd = torch.load(shards[0], map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a refused pickle must read as one line
        raise CheckpointError(f"{shards[0].name}: not a plain tensor checkpoint ({type(e).__name__})") from None
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    sd = dict(sd)
    _tie_output(sd)
    args = family.model_args_from_meta(params)
    if "vocab_size" not in args or args["vocab_size"] <= 0:
        args["vocab_size"] = int(sd["tok_embeddings.weight"].shape[0])
    tokenizer = next((p for p in (path / "tokenizer.model", path / "tokenizer.json") if p.exists()), None)
    return LoadedCheckpoint(
        family=family,
        format="meta",
        model_args=args,
        state_dict=sd,
        tokenizer=tokenizer,
        metadata=dict(family.default_metadata),
        checkpoint_dtype=_dtype_name(sd["tok_embeddings.weight"]),
    )


# -- GGUF ------------------------------------------------------------------


def _load_gguf(path: Path, family_hint: str | None) -> LoadedCheckpoint:
    # The GGUF specifics (architectures, tokenizers, rope_freqs) live with the reader.
    from .gguf_io import load_gguf_checkpoint

    return load_gguf_checkpoint(path, family_hint)
