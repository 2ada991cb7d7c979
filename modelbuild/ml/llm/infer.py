"""Which model family a fetched checkpoint is, from its own files (for the ``fetch`` step).

The mapping itself lives in :mod:`.families` (``family_for_hf_config``,
``family_for_gguf``); this module only reads what those need, cheaply:

- HF: ``config.json`` (``model_type``, ``architectures``, vocabulary, rope scaling);
- GGUF: the header's metadata (``general.architecture``, vocabulary, tokenizer
  pre-tokenizer) and, for llama files, the small ``rope_freqs`` tensor whose
  largest divisor is the llama3 rope scale factor; no weight is dequantized;
- Meta: ``params.json`` names no architecture, so only a declared family counts.

Example::

    infer_family(Path("out/ckpt"), "hf", declared=None)      # -> "phi_4_mini"
    infer_family(Path("out/ckpt"), "hf", declared="qwen3")   # ValueError: contradicts config.json

Imports no torch (the ``gguf`` package, numpy-based, only for GGUF files).
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import FAMILIES, family_for_gguf, family_for_hf_config, get_family

__all__ = ["FamilyMismatch", "infer_family"]


class FamilyMismatch(ValueError):
    """A declared family that the checkpoint's files contradict (the message names file and key)."""


def infer_family(root: Path, fmt: str, declared: str | None) -> tuple[str | None, str]:
    """``(family, why)`` for the checkpoint under ``root`` in layout ``fmt``.

    ``family`` is None when the files do not say (a Meta checkpoint without a
    declared family, an architecture no family reads); ``why`` is a short
    sentence for the step log. A ``declared`` family the files contradict
    raises :class:`FamilyMismatch`; an unknown ``declared`` name, ValueError.
    """
    root = Path(root)
    if declared is not None:
        get_family(declared)  # unknown names fail here, whatever the format
    if fmt == "hf":
        return _from_hf(root / "config.json", declared)
    if fmt == "gguf":
        files = sorted(root.glob("*.gguf"))
        if len(files) != 1:
            return declared, f"{len(files)} .gguf files: family not inferred"
        return _from_gguf(files[0], declared)
    return declared, "a Meta checkpoint names no architecture: " + (
        f"family '{declared}' as declared" if declared else "the loader's default family applies"
    )


def _from_hf(config_path: Path, declared: str | None) -> tuple[str | None, str]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return declared, f"{config_path.name} unreadable ({type(err).__name__}): family not inferred"
    model_type = config.get("model_type", "llama")
    try:
        inferred = family_for_hf_config(config)
    except ValueError as err:
        inferred, reason = None, str(err)
    if declared is None:
        if inferred is None:
            return None, f"{config_path.name}: {reason}"
        return inferred.name, f"family '{inferred.name}' inferred from {config_path.name} (model_type '{model_type}')"
    try:
        family_for_hf_config(config, declared)
    except ValueError:
        readers = ", ".join(f.name for f in FAMILIES.values() if model_type in f.hf_model_types) or "no family"
        raise FamilyMismatch(
            f"family = '{declared}' contradicts {config_path.name}: its model_type '{model_type}' is read by {readers}"
        ) from None
    note = "" if inferred is None or inferred.name == declared else f" (the files alone suggest '{inferred.name}')"
    return declared, f"family '{declared}' as declared, consistent with {config_path.name}{note}"


def _gguf_fields(path: Path) -> tuple[dict, float | None]:
    """The metadata fields of a GGUF file and the llama3 rope factor its ``rope_freqs`` imply (or None)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path), "r")  # memory-mapped; tensors are not read unless touched
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or not field.types:
            continue
        if field.types[0] != GGUFValueType.ARRAY:
            fields[name] = field.contents()
        elif name == "tokenizer.ggml.tokens":
            # Only the count matters here (the vocabulary size); decoding 150k strings does not.
            fields[name] = [None] * len(field.data)
        elif len(field.data) <= 4096 and field.types[-1] != GGUFValueType.STRING:
            fields[name] = list(field.contents())
    factor = None
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            factor = float(np.asarray(t.data, dtype=np.float32).max())
    return fields, factor


def _from_gguf(path: Path, declared: str | None) -> tuple[str | None, str]:
    try:
        fields, factor = _gguf_fields(path)
    except Exception as err:  # noqa: BLE001 - an unreadable header is for the loader to report in full
        return declared, f"{path.name}: GGUF header unreadable ({type(err).__name__}): family not inferred"
    arch = fields.get("general.architecture")
    try:
        inferred = family_for_gguf(fields, None, rope_factor=factor)
    except ValueError as err:
        inferred, reason = None, str(err)
    if declared is None:
        if inferred is None:
            return None, f"{path.name}: {reason}"
        return inferred.name, f"family '{inferred.name}' inferred from {path.name} (general.architecture '{arch}')"
    try:
        family_for_gguf(fields, declared, rope_factor=factor)
    except ValueError as err:
        raise FamilyMismatch(f"family = '{declared}' contradicts {path.name}: {err}") from None
    note = "" if inferred is None or inferred.name == declared else f" (the file alone suggests '{inferred.name}')"
    return declared, f"family '{declared}' as declared, consistent with {path.name}{note}"
