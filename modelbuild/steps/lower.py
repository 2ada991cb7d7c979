"""The ``lower`` step: exported-program -> pte (an ExecuTorch program for one backend).

Recipe example::

    [targets.tiny-llama-pte]
    step = "lower"
    inputs = { program = "tiny-llama-export" }
    backend = "xnnpack"

    [targets.llama-1b-coreml-pte]
    step = "lower"
    inputs = { program = "llama-1b-coreml-export" }
    backend = "coreml"
    compute_units = "cpu_and_ne"
    minimum_deployment_target = "iOS18"
    coreml_quantize = "b4w"

The artifact holds ``model.pte`` (with the runtime metadata methods the LLM
runner reads), ``partition.json`` (ops delegated per backend and ops left on
the portable CPU path, counted from the lowered program), ``program.json``
(what package and validate need: kind, backend, metadata, tokenizer, ...) and
the tokenizer file, so that downstream steps need only this artifact; with
``etrecord`` (on by default when a profile or validate target consumes it,
see :mod:`modelbuild.devtools`) also ExecuTorch's ``etrecord.bin``.

Backends are plugins (:mod:`modelbuild.backends`, entry point group
``modelbuild.backends``): ``backend`` names one, and the backend's own keys
(``compute_units``, ``xnnpack_ops``, ``vulkan_force_fp16``, ...) sit flat in the
target. The action key holds ``backend`` and that backend's keys only.
"""

from __future__ import annotations

import shutil
from typing import Mapping

from modelbuild.backends import lower_params_model, registry
from modelbuild.devtools import ETRECORD_FILE, with_etrecord
from modelbuild.errors import StepError
from modelbuild.step import Input, Step, StepContext

__all__ = ["LowerStep", "default_metadata"]


def default_metadata(info) -> dict:
    """The runner metadata of ``info``, with the LLM defaults export_llm writes filled in."""
    meta = dict(info.metadata)
    if info.kind == "llm":
        defaults = {
            "get_max_seq_len": info.max_seq_len,
            "get_max_context_len": info.max_context_len or info.max_seq_len,
            "use_kv_cache": info.use_kv_cache,
            "use_sdpa_with_kv_cache": info.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": info.enable_dynamic_shape,
        }
        for key, value in defaults.items():
            if value is not None:
                meta.setdefault(key, value)
    return meta


class LowerStep(Step):
    """Lower an exported program to an ExecuTorch .pte for one backend."""

    name = "lower"
    version = 1
    description = "Lower an exported program to an ExecuTorch .pte (" + ", ".join(registry().names()) + ")"
    inputs = {"program": Input(kinds=("exported-program",), doc="the exported (optionally quantized) program", in_memory=True)}
    output = "pte"
    toolchain = ("torch", "executorch", "torchao", "coremltools") + tuple(
        sorted({d for b in registry() for d in b.toolchain} - {"torch", "executorch", "torchao", "coremltools"})
    )
    #: The backends are imported by entry point name: their code enters the fingerprint this way.
    code_modules = registry().modules()

    #: ``backend`` plus every registered backend's keys (modelbuild.backends.registry).
    Params = with_etrecord(lower_params_model())  # + ``etrecord`` (modelbuild.devtools)

    def check(self, params, input_kinds: Mapping[str, str | list[str]]) -> None:
        params.check_other_backends()
        registry().get(params.backend).check(params.backend_params())

    def run(self, ctx: StepContext) -> None:
        from modelbuild.ml.lower import BackendUnavailable, LowerOptions, lower_program
        from modelbuild.ml.program import INFO_FILE, ProgramInfo, load_program, register_ops

        p = ctx.params
        backend = registry().get(p.backend)
        own = p.backend_params()
        program = ctx.inputs["program"]
        # Judge the program from its small model.json before loading its weights.
        info = ProgramInfo.from_json(program.file(INFO_FILE).read_text())
        if backend.deprecated:
            ctx.log(f"warning: {backend.deprecated}")
        try:
            notes = backend.check_program(own, info)
        except StepError as err:
            raise StepError(f"{program.target}: {err}") from None
        for line in notes:
            ctx.log(line)
        if p.etrecord:
            # etrecord.bin serializes the program as given, and one handed over in
            # memory carries what torch.export.load drops: the fake tensors'
            # storage offsets of views and slices (symbolic in the KV-cache
            # updates) and unbacked-symbol hints, about 550 bytes of model.json
            # on the tiny llama. Load the file, so the artifact is the same bytes
            # fused or not (the .pte is the same either way).
            ep, info, _ = load_program(program.path)
        else:
            ep, info, _ = ctx.input_value("program", load_program)  # in memory when fused
            register_ops(info)  # what loading registers (out-variants), also when handed over
        metadata = default_metadata(info)
        try:
            result = lower_program(ep, LowerOptions(p.backend, own), ctx.out / "model.pte",
                                   constant_methods=metadata, info=info,
                                   etrecord=ctx.out / ETRECORD_FILE if p.etrecord else None)
        except BackendUnavailable as err:
            raise StepError(str(err)) from None
        for line in result.log:
            ctx.log(line)

        partition = dict(result.partition)
        partition["backend"] = p.backend
        ctx.write_json("partition.json", partition)
        note = backend.notes(own, info, partition)
        warning = f"; {note}" if note else ""

        if info.tokenizer:
            src = program.file(info.tokenizer)
            if not src.exists():
                raise StepError(f"the exported program names tokenizer {info.tokenizer!r} but does not contain it")
            shutil.copyfile(src, ctx.out / info.tokenizer)

        summary = {
            "kind": info.kind,
            "family": info.family,
            "dtype": info.dtype,
            "backend": p.backend,
            "lower": own.model_dump(mode="json"),
            "deprecated_backend": bool(backend.deprecated),
            "metadata": metadata,
            "tokenizer": info.tokenizer,
            "max_seq_len": info.max_seq_len,
            "max_context_len": info.max_context_len,
            "use_kv_cache": info.use_kv_cache,
            "use_sdpa_with_kv_cache": info.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": info.enable_dynamic_shape,
            "input_names": info.input_names,
            "output_names": info.output_names,
            "model_args": info.model_args,
            "quantization": info.quantization,
            "source": info.source,
            "pte_bytes": result.size,
            "format_version": 1,
        }
        if info.chat_template:
            summary["chat_template"] = info.chat_template  # for package's metadata.json
        ctx.write_json("program.json", summary)
        totals = partition["totals"]
        ctx.summary = (
            f"{p.backend}{' (deprecated upstream)' if backend.deprecated else ''}: "
            f"{result.size / 1e6:.2f} MB, {totals['delegated']} ops delegated, "
            f"{totals['portable']} on the portable CPU path{warning}"
        )
        ctx.log(ctx.summary)
