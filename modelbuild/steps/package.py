"""The ``package`` step: pte -> package (what an app needs, in one directory).

Layout (the ExecuTorch iOS/Android LLM demo apps take the .pte and the
tokenizer side by side)::

    model.pte          the program (renamed with ``pte_name``)
    <tokenizer>        tokenizer.json / tokenizer.model, as the checkpoint had it
    metadata.json      model name, backend, bos/eos ids, max sequence length,
                       quantization, file sizes and sha256, source provenance
    model.bpte         with bundle_io: ExecuTorch's bundled program (the .pte plus
                       the reference's inputs and expected outputs, for an
                       on-device check; needs the ``reference`` input)
    etrecord.bin       with etrecord = true: the pte's ETRecord

Recipe example::

    [targets.tiny-llama]
    step = "package"
    inputs = { pte = "tiny-llama-pte" }
    model_name = "tiny-llama"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

__all__ = ["PackageStep"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pass_on(src: Path, dst: Path, ctx: StepContext) -> None:
    """Put an input file into the package without copying its bytes where that is safe.

    A gigabyte ``.pte`` is the same bytes as the ``pte`` artifact's: a
    reflink, or a hardlink to the input, costs nothing, and storing the
    package then finds the blob already there. A hardlink is taken only for
    an input with no write permission (a store blob or its ``out/`` link;
    the store makes both read-only), so the package's file, which is the
    same inode, cannot be written through either; a writable input is cloned
    or copied. ``MODELBUILD_MATERIALIZE=copy`` asks for copies.
    """
    from modelbuild.ml.filetree import place

    read_only = not (src.stat().st_mode & 0o222)
    method = place(src, dst, link=read_only)
    ctx.log(f"{dst.name}: {method} of {src.name}")


def _devtools_files(ctx: StepContext, pte, program: dict, files: dict) -> dict:
    """etrecord.bin and model.bpte when asked for (added to ``files``); the metadata.json entries they bring."""
    from modelbuild.devtools import ETRECORD_FILE

    extras: dict = {}
    if ctx.params.etrecord:
        src = pte.file(ETRECORD_FILE)
        if not src.exists():
            raise StepError(f"{pte.target} has no {ETRECORD_FILE}: set etrecord = true on it")
        _pass_on(src, ctx.out / ETRECORD_FILE, ctx)
        files[ETRECORD_FILE] = {"bytes": src.stat().st_size, "sha256": _sha256(src)}
        extras["etrecord"] = ETRECORD_FILE
    if ctx.params.bundle_io:
        from modelbuild.ml.profile.bundled import write_bundled_program
        from modelbuild.ml.profile.inputs import program_calls

        ref = ctx.inputs["reference"]
        try:
            calls = program_calls(ref.path, program, ctx.params.bundle_cases)
            info = write_bundled_program(pte.file("model.pte"), calls, ctx.out / "model.bpte")
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            raise StepError(f"bundle_io: {err}") from err
        info["reference"] = ref.target
        files["model.bpte"] = {"bytes": info.pop("bytes"), "sha256": _sha256(ctx.out / "model.bpte")}
        extras["bundled_program"] = info
    return extras


class PackageStep(Step):
    """Bundle a .pte, its tokenizer and a metadata.json for an app."""

    name = "package"
    version = 1
    description = "Bundle model.pte, the tokenizer and metadata.json for an app (e.g. the iOS demo app)"
    inputs = {
        "pte": Input(kinds=("pte",), doc="the lowered program"),
        "reference": Input(kinds=("reference",), optional=True,
                           doc="with bundle_io: the reference whose inputs and outputs go into model.bpte"),
    }
    output = "package"

    class Params(Params):
        model_name: str = Field(
            "",
            description="The model's display name in metadata.json (default: the target name).",
        )
        pte_name: str = Field(
            "model.pte",
            description="File name of the program inside the package.",
        )
        bundle_io: bool = Field(
            False,
            description="Also write model.bpte: ExecuTorch's bundled program (the .pte with the reference's "
            "inputs and expected outputs), for an on-device check. Needs the ``reference`` input.",
        )
        bundle_cases: int = Field(4, ge=1, le=1024, description="With bundle_io: test cases bundled (LLM: "
                                  "tokens of the first prompt, in order; module: samples).")
        etrecord: bool = Field(False, description="Also ship the pte's etrecord.bin (asks lower for one).")

    def asks(self, params) -> dict:
        """With ``etrecord = true``, the pte must carry its ETRecord (modelbuild.devtools)."""
        return {"pte": {"etrecord": True}} if params.etrecord else {}

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        name = params.pte_name
        if not name.endswith(".pte") or "/" in name or "\\" in name or name.startswith("."):
            raise RecipeError(f"pte_name must be a plain file name ending in .pte, got {name!r}", key="pte_name")
        if name == "metadata.json":
            raise RecipeError("pte_name collides with metadata.json", key="pte_name")
        if params.bundle_io and "reference" not in input_kinds:
            raise RecipeError("bundle_io needs the reference input: inputs = { pte = ..., reference = ... }",
                              key="bundle_io")
        if "reference" in input_kinds and not params.bundle_io:
            raise RecipeError("input 'reference' is used only with bundle_io = true", key="inputs")

    def run(self, ctx: StepContext) -> None:
        pte = ctx.inputs["pte"]
        program_json = pte.file("program.json")
        if not pte.file("model.pte").exists() or not program_json.exists():
            raise StepError(f"{pte.target} is not a complete pte artifact (model.pte and program.json expected)")
        program = json.loads(program_json.read_text())
        pte_out = ctx.out / ctx.params.pte_name
        _pass_on(pte.file("model.pte"), pte_out, ctx)
        files = {ctx.params.pte_name: {"bytes": pte_out.stat().st_size, "sha256": _sha256(pte_out)}}

        tokenizer = program.get("tokenizer")
        if tokenizer:
            src = pte.file(tokenizer)
            if not src.exists():
                raise StepError(f"{pte.target}: program.json names tokenizer {tokenizer!r} but the artifact lacks it")
            _pass_on(src, ctx.out / tokenizer, ctx)
            files[tokenizer] = {"bytes": src.stat().st_size, "sha256": _sha256(src)}
        elif program.get("kind") == "llm":
            raise StepError(f"{pte.target}: an LLM package needs a tokenizer, and the program has none")
        extras = _devtools_files(ctx, pte, program, files)

        meta = program.get("metadata", {})
        eos = meta.get("get_eos_ids", meta.get("get_eos_id"))
        metadata = {
            "format_version": 1,
            "model_name": ctx.params.model_name or ctx.target,
            "kind": program.get("kind"),
            "family": program.get("family"),
            "backend": program.get("backend"),
            "dtype": program.get("dtype"),
            "pte": ctx.params.pte_name,
            "tokenizer": tokenizer,
            "bos_id": meta.get("get_bos_id"),
            "eos_ids": eos if isinstance(eos, list) or eos is None else [eos],
            "max_seq_len": meta.get("get_max_seq_len", program.get("max_seq_len")),
            "max_context_len": meta.get("get_max_context_len", program.get("max_context_len")),
            "use_kv_cache": program.get("use_kv_cache"),
            "quantization": program.get("quantization", []),
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
            "source": program.get("source", {}),
        }
        if program.get("chat_template"):
            metadata["chat_template"] = program["chat_template"]  # the checkpoint's, for the app's prompts
        metadata.update(extras)
        ctx.write_json("metadata.json", metadata)
        ctx.summary = f"{metadata['model_name']}: {metadata['total_bytes'] / 1e6:.2f} MB ({', '.join(sorted(files))})"
        ctx.log(ctx.summary)
