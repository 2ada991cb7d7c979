"""GGUF reading (with dequantization), loading and writing, with the ``gguf`` package.

:func:`read_gguf` returns the metadata fields (decoded to Python values) and
every tensor dequantized to a float32 torch tensor in its numpy (row-major)
shape, keyed by llama.cpp's tensor names. Each tensor is dequantized by the
``gguf`` package's own function for its type, so one file may mix types
(llama.cpp's ``Q4_K_M`` files hold Q4_K, Q6_K and F32 tensors side by side).

:func:`load_gguf_checkpoint` maps such a file onto ExecuTorch's llama
``Transformer`` (a ``LoadedCheckpoint``). What real files differ in:

- the architecture (``general.architecture``): ``llama`` (Llama 2/3/3.1/3.2,
  SmolLM2), ``qwen2`` (Qwen2.5), ``qwen3``, renamed straight to ExecuTorch's
  names; ``phi3`` (Phi-4-mini), ``lfm2`` and ``qwen35`` (Qwen3.5), read back
  into HF layout (:mod:`.gguf_hybrid`) and through the family's HF path.
  Anything else fails at once with one line naming what was found and what
  is supported;
- the rotary layout: llama.cpp's converter un-permutes q/k rows for the llama
  architecture only (Meta's interleaved layout, what ExecuTorch's default
  rope wants); qwen2/qwen3 keep Hugging Face's layout, which their families
  run with ExecuTorch's HF rope. So both load as stored;
- tied or untied output: ``output.weight`` is there or the embedding is reused;
- the tokenizer: BPE (``tokenizer.ggml.model = "gpt2"``) rebuilt into a
  ``tokenizer.json`` with the splitting rules ``tokenizer.ggml.pre`` names, or
  SentencePiece (``"llama"``) rebuilt into a ``tokenizer.model``;
- ``tokenizer.chat_template``, carried to the package metadata.

:func:`write_gguf_from_hf` (in :mod:`.gguf_write`, re-exported here) writes
a GGUF file from an HF-layout checkpoint the way llama.cpp's converter does.

Example::

    write_gguf_from_hf(Path("ckpt"), Path("model.gguf"), qtype="Q8_0")
    fields, tensors = read_gguf(Path("model.gguf"))
    ckpt = load_gguf_checkpoint(Path("model.gguf"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_gguf", "read_gguf_fields", "load_gguf_checkpoint", "write_gguf_from_hf"]



def _fields(reader) -> dict[str, Any]:
    from gguf import GGUFValueType

    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or not field.types:
            continue
        value = field.contents()
        if field.types[0] == GGUFValueType.ARRAY and field.types[-1] != GGUFValueType.STRING:
            value = list(value)
        fields[name] = value
    return fields


def read_gguf_fields(path: Path) -> dict[str, Any]:
    """The metadata of a GGUF file (memory-mapped; no tensor is read)."""
    from gguf import GGUFReader

    return _fields(GGUFReader(str(path), "r"))


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, tensors)`` of a GGUF file; tensors are float32 torch tensors."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path), "r")  # memory-mapped
    fields = _fields(reader)
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dims fastest-first
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{Path(path).name}: tensor {t.name} has type {t.tensor_type.name}, which the gguf "
                             "package cannot dequantize") from None
        # A copy: the reader's arrays are read-only views of the mapped file.
        tensors[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))
    return fields, tensors


# -- loading -------------------------------------------------------------------


def load_gguf_checkpoint(path: Path, family_hint: str | None = None):
    """A ``LoadedCheckpoint`` from a ``.gguf`` file or a directory holding one.

    The architecture is checked before any tensor is dequantized, so an
    unsupported file fails at once (``CheckpointError``, one line).
    """
    from .checkpoint import CheckpointError, LoadedCheckpoint, _tie_output
    from .families import family_for_gguf
    from .gguf_hybrid import HF_ROUTED_ARCHS

    path = Path(path)
    file = path if path.is_file() else None
    if file is None:
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise CheckpointError(f"{path}: expected one *.gguf file, found {len(found)}")
        file = found[0]
    try:
        family = family_for_gguf(read_gguf_fields(file), family_hint)
    except ValueError as e:
        raise CheckpointError(f"{file.name}: {e}") from None
    try:
        fields, tensors = read_gguf(file)
        if fields.get("general.architecture") in HF_ROUTED_ARCHS:
            args, sd = _through_hf(family, fields, tensors)
        else:
            args = family.model_args_from_gguf(fields)
            sd = _renamed(family, tensors)
    except (KeyError, ValueError) as e:  # a missing key, an unexpected tensor
        raise CheckpointError(f"{file.name}: {e}") from None
    if "rope_freqs.weight" in tensors:
        args.update(_llama3_scaling_from_rope_freqs(tensors["rope_freqs.weight"], args, file.name))
        if not family_hint:  # the rope scale factor tells Llama 3.1 from 3.2
            family = family_for_gguf(fields, None, rope_factor=args.get("rope_scale_factor"))
    _tie_output(sd)
    metadata: dict[str, Any] = {}
    if "tokenizer.ggml.bos_token_id" in fields:
        metadata["get_bos_id"] = int(fields["tokenizer.ggml.bos_token_id"])
    if "tokenizer.ggml.eos_token_id" in fields:
        eos = {int(fields["tokenizer.ggml.eos_token_id"])}
        if "tokenizer.ggml.eot_token_id" in fields:  # chat models stop at end-of-turn too
            eos.add(int(fields["tokenizer.ggml.eot_token_id"]))
        metadata["get_eos_ids"] = sorted(eos)
    try:
        tokenizer_json, tokenizer_model = _gguf_tokenizer(fields)
    except ValueError as e:
        raise CheckpointError(f"{file.name}: {e}") from None
    template = fields.get("tokenizer.chat_template")
    return LoadedCheckpoint(
        family=family,
        format="gguf",
        model_args=args,
        state_dict=sd,
        tokenizer_json=tokenizer_json,
        tokenizer_model=tokenizer_model,
        chat_template=str(template) if template else None,
        metadata=metadata,
        checkpoint_dtype="fp32",
    )


def _renamed(family, tensors: dict) -> dict[str, Any]:
    """llama / qwen2 / qwen3 tensors: a rename to ExecuTorch's names (the layouts already agree)."""
    from .families import GGUF_TO_META, map_name

    sd: dict[str, Any] = {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            continue
        target = map_name(name, GGUF_TO_META)
        if target is None:
            raise ValueError(f"unexpected tensor {name} for family {family.name}")
        sd[target] = t
    return sd


def _through_hf(family, fields: dict, tensors: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """phi3 / lfm2 / qwen35: back to the HF config and weights, then the family's own HF path.

    The family's ``hf_weights`` splits the fused tensors exactly as it does
    for safetensors (see :mod:`.gguf_hybrid` for what llama.cpp changed).
    """
    from .gguf_hybrid import hf_config_from_gguf, hf_tensors_from_gguf

    config = hf_config_from_gguf(fields, tensors)
    args = family.model_args_from_hf(config)
    sd: dict[str, Any] = {}
    for name, t in hf_tensors_from_gguf(str(fields["general.architecture"]), tensors, config).items():
        pairs = family.hf_weights(name, lambda t=t: t, args)
        if pairs is None:
            raise ValueError(f"unexpected tensor {name} (HF name) for family {family.name}")
        sd.update(pairs)
    return args, sd


def _llama3_scaling_from_rope_freqs(factors, args: dict, where: str) -> dict[str, Any]:
    """ModelArgs rope scaling that reproduces llama.cpp's ``rope_freqs`` divisors.

    llama.cpp stores llama3 scaling as one divisor per frequency. ExecuTorch
    computes the same from (scale factor, high_freq_factor) with
    low_freq_factor 1 and an 8192 original context; the scale factor is the
    largest divisor, and the result is checked against the tensor so that
    nothing is silently approximated.
    """
    import math

    import torch

    from executorch.examples.models.llama.rope import apply_scaling

    from .checkpoint import CheckpointError

    hd = args["head_dim"]
    base = 1.0 / (args["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    factor = float(factors.max())
    factor_arg = int(factor) if factor.is_integer() else factor
    for high in (4, 2, 8, 1.5, 3, 16):
        expected = base / apply_scaling(base, factor_arg, high)
        if torch.allclose(expected.float(), factors.float(), rtol=1e-4, atol=1e-4):
            return {"use_scaled_rope": True, "rope_scale_factor": factor_arg, "high_freq_factor": high}
    if math.isclose(factor, 1.0):
        return {}
    raise CheckpointError(f"{where}: rope_freqs do not match llama3 rope scaling ExecuTorch can express")


def _gguf_tokenizer(fields: dict) -> tuple[str | None, bytes | None]:
    """``(tokenizer.json text, tokenizer.model bytes)`` rebuilt from GGUF metadata; one of them or neither."""
    from .tokenizer import sentencepiece_model_from_vocab, tokenizer_json_from_vocab

    model = fields.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in fields:
        return None, None
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    bos = fields.get("tokenizer.ggml.bos_token_id")
    if model == "gpt2":
        if "tokenizer.ggml.merges" not in fields:
            raise ValueError('a "gpt2" (BPE) tokenizer without tokenizer.ggml.merges')
        special = [i for i, ty in enumerate(types) if ty in (3, 4)]  # CONTROL, USER_DEFINED
        add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
        pre = str(fields.get("tokenizer.ggml.pre", "default"))
        text = tokenizer_json_from_vocab(
            tokens, list(fields["tokenizer.ggml.merges"]), special, bos if add_bos and bos is not None else None, pre
        )
        return text, None
    if model == "llama":
        scores = list(fields.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
        data = sentencepiece_model_from_vocab(
            tokens,
            scores,
            types,
            bos_id=bos,
            eos_id=fields.get("tokenizer.ggml.eos_token_id"),
            unk_id=fields.get("tokenizer.ggml.unknown_token_id"),
            add_space_prefix=bool(fields.get("tokenizer.ggml.add_space_prefix", True)),
        )
        return None, data
    raise ValueError(f"tokenizer.ggml.model '{model}' is not supported (supported: gpt2, llama)")


def write_gguf_from_hf(*args, **kwargs):
    """See :func:`modelbuild.ml.llm.gguf_write.write_gguf_from_hf`."""
    from .gguf_write import write_gguf_from_hf as _write

    return _write(*args, **kwargs)
