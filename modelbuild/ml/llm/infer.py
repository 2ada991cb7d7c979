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
    check_declared(Path("ckpts/x/model.gguf"), "qwen3")      # the same check, cheap enough for planning

Imports no torch (the ``gguf`` package, numpy-based, only for GGUF files).
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import FAMILIES, family_for_gguf, family_for_hf_config, get_family, gguf_archs

__all__ = ["FamilyMismatch", "infer_family", "check_declared", "check_local"]


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


def check_declared(path: Path, declared: str, label: str | None = None) -> None:
    """Raise :class:`FamilyMismatch` when ``path`` (a ``config.json`` or a ``.gguf`` file) contradicts ``declared``.

    Cheap enough for planning (``fetch`` calls it for local sources before
    anything runs): it reads ``config.json``, or a GGUF header only up to its
    ``general.architecture`` key (:mod:`.gguf_header`, no numpy). ``label``
    names the file in the message (default: its name). A file that cannot be
    read passes: the fetch itself reports it.
    """
    path = Path(path)
    label = label or path.name
    family = get_family(declared)
    if path.suffix != ".gguf":
        if path.exists():
            _from_hf(path, declared, label)
        return
    from .gguf_header import gguf_architecture

    try:
        arch = gguf_architecture(path)
    except (OSError, ValueError):
        return
    if arch not in family.gguf_archs:
        raise FamilyMismatch(_gguf_mismatch(declared, label, arch))


def check_local(root: Path, declared: str, source: str, files: list[str] | None = None) -> None:
    """:func:`check_declared` on what a fetch of the local ``source`` (at ``root``) will take.

    ``root`` is a ``.gguf`` file or a directory: its ``config.json``, else its
    only ``*.gguf``, counted only if the ``files`` patterns take it. Anything
    else (a Meta checkpoint, nothing there yet) is left to the fetch.
    """
    from modelbuild.ml.filetree import matches

    def taken(name: str) -> bool:
        return not files or matches(name, list(files))

    root = Path(root)
    if root.is_file():
        if root.suffix == ".gguf":
            check_declared(root, declared, label=source)
        return
    if (root / "config.json").is_file() and taken("config.json"):
        check_declared(root / "config.json", declared, label=f"{source.rstrip('/')}/config.json")
        return
    ggufs = sorted(p for p in root.glob("*.gguf") if taken(p.name)) if root.is_dir() else []
    if len(ggufs) == 1:
        check_declared(ggufs[0], declared, label=f"{source.rstrip('/')}/{ggufs[0].name}")


def _gguf_mismatch(declared: str, label: str, arch: str | None) -> str:
    readers = ", ".join(gguf_archs().get(str(arch), [])) or "no family"
    return f"family = '{declared}' contradicts {label}: its general.architecture '{arch}' is read by {readers}"


def _from_hf(config_path: Path, declared: str | None, label: str | None = None) -> tuple[str | None, str]:
    label = label or config_path.name
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
            f"family = '{declared}' contradicts {label}: its model_type '{model_type}' is read by {readers}"
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
    except ValueError:
        raise FamilyMismatch(_gguf_mismatch(declared, path.name, arch)) from None
    note = "" if inferred is None or inferred.name == declared else f" (the file alone suggests '{inferred.name}')"
    return declared, f"family '{declared}' as declared, consistent with {path.name}{note}"
