"""The ``package`` step: pte -> package (what an app needs, in one directory).

Layout (the ExecuTorch iOS/Android LLM demo apps take the .pte and the
tokenizer side by side)::

    model.pte          the program (renamed with ``pte_name``)
    <tokenizer>        tokenizer.json / tokenizer.model, as the checkpoint had it
    metadata.json      model name, backend, bos/eos ids, max sequence length,
                       quantization, file sizes and sha256, source provenance

Recipe example::

    [targets.tiny-llama]
    step = "package"
    inputs = { pte = "tiny-llama-pte" }
    model_name = "tiny-llama"
"""

from __future__ import annotations

import hashlib
import json
import shutil
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


class PackageStep(Step):
    """Bundle a .pte, its tokenizer and a metadata.json for an app."""

    name = "package"
    version = 1
    description = "Bundle model.pte, the tokenizer and metadata.json for an app (e.g. the iOS demo app)"
    inputs = {"pte": Input(kinds=("pte",), doc="the lowered program")}
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

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        name = params.pte_name
        if not name.endswith(".pte") or "/" in name or "\\" in name or name.startswith("."):
            raise RecipeError(f"pte_name must be a plain file name ending in .pte, got {name!r}", key="pte_name")
        if name == "metadata.json":
            raise RecipeError("pte_name collides with metadata.json", key="pte_name")

    def run(self, ctx: StepContext) -> None:
        pte = ctx.inputs["pte"]
        program_json = pte.file("program.json")
        if not pte.file("model.pte").exists() or not program_json.exists():
            raise StepError(f"{pte.target} is not a complete pte artifact (model.pte and program.json expected)")
        program = json.loads(program_json.read_text())
        pte_out = ctx.out / ctx.params.pte_name
        shutil.copyfile(pte.file("model.pte"), pte_out)
        files = {ctx.params.pte_name: {"bytes": pte_out.stat().st_size, "sha256": _sha256(pte_out)}}

        tokenizer = program.get("tokenizer")
        if tokenizer:
            src = pte.file(tokenizer)
            if not src.exists():
                raise StepError(f"{pte.target}: program.json names tokenizer {tokenizer!r} but the artifact lacks it")
            shutil.copyfile(src, ctx.out / tokenizer)
            files[tokenizer] = {"bytes": src.stat().st_size, "sha256": _sha256(src)}
        elif program.get("kind") == "llm":
            raise StepError(f"{pte.target}: an LLM package needs a tokenizer, and the program has none")

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
        ctx.write_json("metadata.json", metadata)
        ctx.summary = f"{metadata['model_name']}: {metadata['total_bytes'] / 1e6:.2f} MB ({', '.join(sorted(files))})"
        ctx.log(ctx.summary)
