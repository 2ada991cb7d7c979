"""The ``export`` step: ``torch.export`` an LLM checkpoint or any ``nn.Module``.

Two modes (LLM defaults follow ``export_llm``'s: fp32, max_seq_len 128,
no KV cache, dynamic shapes on):

- **LLM** (a ``checkpoint`` input): the checkpoint (HF, Meta or GGUF layout)
  is mapped onto ExecuTorch's llama ``Transformer`` and exported exactly as
  ExecuTorch's ``export_llm`` does for the same options (forward signature,
  example inputs, dynamic shapes, custom SDPA / KV-cache source transforms,
  runtime metadata defaults), so that the lowered ``.pte`` runs in
  ``TextLLMRunner``. The tokenizer is copied into the artifact.
- **module** (``module = "pkg.mod:factory"``): ``factory()`` returns an
  ``nn.Module`` or ``(module, example_inputs)``; example inputs may instead
  come from ``example_inputs`` (shapes and dtypes, filled from ``seed``), and
  ``dynamic_dims`` marks dynamic dimensions per input.

The artifact (kind ``exported-program``) is written with
``modelbuild.ml.program.save_program``: ``program.pt2``, ``example_inputs.pt``,
``model.json`` (ProgramInfo) and the tokenizer. It is byte-for-byte
reproducible.

Example recipes::

    [targets.tiny-llama-export]
    step = "export"
    inputs = { checkpoint = "tiny-llama-ckpt" }
    dtype = "fp32"
    max_seq_len = 128
    use_kv_cache = true
    use_sdpa_with_kv_cache = true
    metadata = { get_bos_id = 0, get_eos_ids = [1, 2] }

    [targets.mlp-export]
    step = "export"
    module = "models.mlp:make_mlp"
    example_inputs = [{ shape = [4, 16], dtype = "float32" }]
    dynamic_dims = [{ 0 = { name = "batch", min = 1, max = 64 } }]
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, ResolveContext, Step, StepContext

__all__ = ["ExportStep", "TensorSpec", "DimSpec"]

_LLM_ONLY = (
    "max_seq_len", "max_context_len", "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape", "metadata", "strict",
    "backend", "backend_options",
)
_MODULE_ONLY = ("example_inputs", "dynamic_dims", "module_sources", "seed")


def _check_backend(params) -> None:
    """The export step's ``backend``: a registered backend whose transforms fit the other options."""
    if params.backend is None:
        if params.backend_options:
            raise RecipeError("backend_options needs a backend", key="backend_options")
        return
    from modelbuild.backends import registry
    from modelbuild.errors import closest

    reg = registry()
    if params.backend not in reg:
        raise RecipeError(f"unknown backend {params.backend!r} (installed: {', '.join(reg.names())})",
                          key="backend", suggestion=closest(params.backend, reg.names()))
    backend = reg.get(params.backend)
    backend.export_options(params.backend_options)
    if not params.use_kv_cache:
        raise RecipeError(f"backend {params.backend!r}: its source transforms apply to KV-cache LLMs "
                          "(set use_kv_cache = true, or leave backend out)", key="backend")
    if backend.static_shapes and params.enable_dynamic_shape:
        # As export_llm: "Dynamic shape is not supported with coreml or qnn backends."
        raise RecipeError(f"backend {params.backend!r} takes static shapes only: set enable_dynamic_shape = false",
                          key="enable_dynamic_shape")


def _backend_options(params) -> dict[str, Any]:
    if params.backend is None:
        return {}
    from modelbuild.backends import get_backend

    return get_backend(params.backend).export_options(params.backend_options)


class TensorSpec(BaseModel):
    """One example input: a shape and a dtype, filled with seeded values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[int]
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool"] = "float32"
    #: Integer inputs: values drawn from [low, high).
    low: int = 0
    high: int = 2


class DimSpec(BaseModel):
    """A dynamic dimension: its name (shared names tie dimensions together) and range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    min: int = 1
    max: int


class ExportStep(Step):
    """torch.export an LLM checkpoint (ExecuTorch llama definitions) or any nn.Module."""

    name = "export"
    version = 1
    description = "torch.export an LLM checkpoint or an nn.Module factory into an exported program"
    inputs = {
        "checkpoint": Input(
            kinds=("checkpoint",),
            optional=True,
            doc="the model checkpoint (HF, Meta or GGUF layout); leave out with `module`",
        )
    }
    output = "exported-program"
    toolchain = ("torch", "executorch", "safetensors", "gguf", "tokenizers", "sentencepiece", "numpy")
    keeps_value = True  # (ep, info, example) for quantize/lower in a fused session

    class Params(Params):
        dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="weights and activations dtype")
        max_seq_len: int = Field(128, ge=1, description="LLM: longest token sequence per forward call")
        max_context_len: int | None = Field(
            None, ge=1, description="LLM: KV-cache / rope length (default: max_seq_len)"
        )
        use_kv_cache: bool = Field(False, description="LLM: forward(tokens, {input_pos}) with a KV cache")
        use_sdpa_with_kv_cache: bool = Field(
            False, description="LLM: ExecuTorch's custom SDPA op updating the KV cache in place"
        )
        enable_dynamic_shape: bool = Field(
            True,
            description="LLM: dynamic token dimension (prefill many at once); export_llm's default. "
            "Core ML and QNN lowering need false",
        )
        metadata: dict[str, Any] = Field(
            default_factory=dict,
            description='LLM: runtime metadata merged over the defaults, e.g. {"get_bos_id": 128000}',
        )
        strict: bool = Field(
            True,
            description="LLM: trace with dynamo as export_llm does; false: non-strict tracing, same "
            "operators, several times faster and far less memory",
        )
        backend: str | None = Field(
            None,
            description="LLM: apply this backend's export-time source transforms, as export_llm does with "
            'backend.<name>.enabled; "coreml": the Core ML SDPA op (iOS18+) and Core ML KV cache (needs '
            "use_kv_cache, enable_dynamic_shape = false)",
        )
        backend_options: dict[str, Any] = Field(
            default_factory=dict,
            description='LLM: options of those transforms, e.g. {minimum_deployment_target = "iOS17"} for coreml',
        )
        module: str | None = Field(
            None, description='"pkg.mod:factory" returning an nn.Module or (module, example_inputs)'
        )
        example_inputs: list[TensorSpec] | None = Field(None, description="module: example inputs (shape, dtype)")
        dynamic_dims: list[dict[int, DimSpec] | None] | None = Field(
            None, description="module: per input, {dim index: {name, min, max}} (None = static)"
        )
        module_sources: list[str] | None = Field(
            None,
            description="module: project files whose content enters the key (default: the module's own "
            "file if the project holds it; [] for none)",
        )
        seed: int = Field(0, description="module: seed of the generated example inputs")

    # -- planning (no torch) -------------------------------------------------

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        has_ckpt = "checkpoint" in input_kinds
        if params.module is not None:
            if has_ckpt:
                raise RecipeError("give either a checkpoint input or `module`, not both", key="module")
            if ":" not in params.module or not all(params.module.split(":", 1)):
                raise RecipeError(f"module must be 'package.module:factory', got '{params.module}'", key="module")
            for key in _LLM_ONLY:
                if key in params.model_fields_set:
                    raise RecipeError(f"{key} applies only to LLM checkpoints, not to `module`", key=key)
            if params.dynamic_dims is not None:
                if params.example_inputs is not None and len(params.dynamic_dims) != len(params.example_inputs):
                    raise RecipeError(
                        f"dynamic_dims has {len(params.dynamic_dims)} entries for "
                        f"{len(params.example_inputs)} example inputs",
                        key="dynamic_dims",
                    )
                for entry in params.dynamic_dims:
                    for dim, spec in (entry or {}).items():
                        if spec.min > spec.max:
                            raise RecipeError(f"dimension {dim} ({spec.name}): min > max", key="dynamic_dims")
            return
        if not has_ckpt:
            raise RecipeError("export needs a `checkpoint` input (or `module` for a plain nn.Module)", key="inputs")
        for key in _MODULE_ONLY:
            if key in params.model_fields_set:
                raise RecipeError(f"{key} applies only to `module` exports", key=key)
        for key, value in params.metadata.items():
            problem = _metadata_problem(key, value)
            if problem:
                raise RecipeError(f"metadata.{key}: {problem}", key="metadata")
        if params.use_sdpa_with_kv_cache and not params.use_kv_cache:
            raise RecipeError("use_sdpa_with_kv_cache needs use_kv_cache = true", key="use_sdpa_with_kv_cache")
        if params.max_context_len is not None and params.max_context_len < params.max_seq_len:
            raise RecipeError(
                f"max_context_len ({params.max_context_len}) must be >= max_seq_len ({params.max_seq_len})",
                key="max_context_len",
            )
        if params.enable_dynamic_shape and params.max_seq_len < 3:
            raise RecipeError("enable_dynamic_shape needs max_seq_len >= 3", key="max_seq_len")
        _check_backend(params)

    def sources(self, params: Params) -> list[str]:
        """``module_sources``; the engine fills its default in :meth:`resolve` (before keying)."""
        if params.module is None or params.module_sources is None:
            return []
        return list(params.module_sources)

    def resolve(self, params: Params, ctx: ResolveContext) -> Params:
        """Default ``module_sources`` to the module's own file when the project holds it.

        Looked up under the project root, where ``run`` imports it from first,
        never in the working directory: the key depends on the project, not on
        where the command was started.
        """
        if params.module is None or params.module_sources is not None:
            return params
        found = _default_sources(params.module.split(":", 1)[0], ctx.project)
        return params.model_copy(update={"module_sources": found})

    # -- running ---------------------------------------------------------------

    def run(self, ctx: StepContext) -> None:
        if ctx.params.module is not None:
            self._run_module(ctx)
        else:
            self._run_llm(ctx)

    def _run_llm(self, ctx: StepContext) -> None:
        from modelbuild.ml.llm.checkpoint import CheckpointError
        from modelbuild.ml.llm.export import LLMExportOptions, export_llm
        from modelbuild.ml.program import save_program

        p = ctx.params
        opts = LLMExportOptions(
            dtype=p.dtype,
            max_seq_len=p.max_seq_len,
            max_context_len=p.max_context_len,
            use_kv_cache=p.use_kv_cache,
            use_sdpa_with_kv_cache=p.use_sdpa_with_kv_cache,
            enable_dynamic_shape=p.enable_dynamic_shape,
            metadata=dict(p.metadata),
            strict=p.strict,
            backend=p.backend,
            backend_options=_backend_options(p),
        )
        ckpt_art = ctx.inputs["checkpoint"]
        ctx.progress(0, 3, "loading checkpoint")
        try:
            ep, info, example, ckpt = export_llm(ckpt_art.path, opts, log=ctx.log)
        except CheckpointError as err:
            raise StepError(str(err)) from None
        ctx.progress(2, 3, "saving")
        tokenizer = ckpt.write_tokenizer(ctx.work / "tokenizer")
        if tokenizer is None:
            ctx.log("warning: the checkpoint has no tokenizer the runner can use; none is copied")
        started = time.monotonic()
        save_program(ctx.out, ep, info, example, tokenizer=tokenizer)
        ctx.log(f"saved the program ({time.monotonic() - started:.1f} s, peak RSS {_peak_rss_gb():.2f} GB)")
        ctx.keep_value(_as_loaded(ep, info, example))
        for extra in sorted((ctx.work / "tokenizer").glob("*")):
            if tokenizer is not None and extra.name != tokenizer.name:
                (ctx.out / extra.name).write_bytes(extra.read_bytes())
        size = (ctx.out / "program.pt2").stat().st_size
        kv = "kv+sdpa" if p.use_sdpa_with_kv_cache else ("kv" if p.use_kv_cache else "no kv")
        ctx.summary = f"{info.family} {p.dtype} {kv}, {info.model_args['n_layers']} layers, {size / 1e6:.1f} MB"
        ctx.progress(3, 3, "done")

    def _run_module(self, ctx: StepContext) -> None:
        import inspect

        import torch

        from modelbuild.ml.program import ProgramInfo, save_program

        p = ctx.params
        factory = _import_factory(p.module, ctx.project)
        made = factory()
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
            module, example = made[0], tuple(made[1])
        elif isinstance(made, torch.nn.Module):
            module, example = made, None
        else:
            raise StepError(f"{p.module} returned {type(made).__name__}, expected an nn.Module or (module, inputs)")
        if p.example_inputs is not None:
            example = _make_inputs(p.example_inputs, p.seed)
        if example is None:
            raise StepError(f"{p.module} returned no example inputs; set example_inputs in the recipe")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p.dtype]
        module = module.to(dtype=dtype).eval()
        example = tuple(x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in example)
        dynamic = None
        if p.dynamic_dims is not None:
            if len(p.dynamic_dims) != len(example):
                raise StepError(f"dynamic_dims has {len(p.dynamic_dims)} entries for {len(example)} inputs")
            dynamic = [
                None if entry is None else {str(k): v.model_dump() for k, v in sorted(entry.items())}
                for entry in p.dynamic_dims
            ]
        try:
            names = [n for n in inspect.signature(module.forward).parameters][: len(example)]
        except (TypeError, ValueError):
            names = [f"input_{i}" for i in range(len(example))]
        info = ProgramInfo(kind="module", dtype=p.dtype, dynamic_shapes=dynamic, input_names=names)
        with torch.no_grad():
            try:
                ep = torch.export.export(module, example, dynamic_shapes=info.torch_dynamic_shapes())
            except Exception as err:  # noqa: BLE001 - torch.export's errors are long; keep the first line
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise StepError(f"torch.export failed: {first}") from err
            ep = ep.run_decompositions({})
        outputs = [n for n in ep.graph_signature.user_outputs]
        info.output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
        save_program(ctx.out, ep, info, example)
        ctx.keep_value(_as_loaded(ep, info, example))
        ctx.summary = f"{type(module).__name__} {p.dtype}, {len(example)} input(s)"


def _as_loaded(ep, info, example) -> tuple:
    """The value a fused consumer gets: what ``load_program`` of the saved files returns
    (the info through its JSON, as a reader of model.json sees it)."""
    from modelbuild.ml.program import ProgramInfo

    return ep, ProgramInfo.from_json(info.to_json()), tuple(example)


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _metadata_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be a .pte constant method, or None.

    The ExecuTorch emitter writes bool, int, float and str values and
    non-empty lists of one of bool, int or float.
    """
    if not key.isidentifier():
        return "the name must be an identifier (it becomes a method of the program)"
    if isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, list) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {bool, int, float}:
            return None
    return "must be a bool, int, float, string, or a non-empty list of one of bool, int or float"


def _default_sources(module: str, project: Path) -> list[str]:
    """The module's own file, as a project-relative path, when the project holds it.

    ``run`` imports the module with the project root first on ``sys.path``, so
    a project file is what runs (editing it rebuilds). A module the project
    does not hold is an installed one, versioned by its installation: none.
    Only the project is looked at, never the working directory or
    ``sys.path``, so the key is the same wherever the command starts.

    >>> _default_sources("no.such.module", Path("/nonexistent"))
    []
    """
    base = module.replace(".", "/")
    # A package directory wins over a same-named module file, as in Python's import system.
    return [c for c in (base + "/__init__.py", base + ".py") if (Path(project) / c).is_file()][:1]


def _import_factory(spec: str, project: Path):
    mod_name, _, attr = spec.partition(":")
    root = str(project)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise StepError(f"cannot import {mod_name}: {err}") from None
    finally:
        if added:
            sys.path.remove(root)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise StepError(f"{mod_name} has no attribute {attr}") from None
    if not callable(factory):
        raise StepError(f"{spec} is not callable")
    return factory


def _make_inputs(specs: list[TensorSpec], seed: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(spec.shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, spec.shape, generator=gen).bool())
        else:
            out.append(torch.randint(spec.low, spec.high, spec.shape, generator=gen, dtype=dtype))
    return tuple(out)
