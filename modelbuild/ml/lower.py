"""Lowering an exported program to an ExecuTorch ``.pte``, and what it delegated.

Used by the ``lower`` step (``modelbuild.steps.lower``); imports torch and
ExecuTorch, so only ``run`` imports it.

Example::

    from modelbuild.ml.lower import LowerOptions, lower_program
    result = lower_program(ep, LowerOptions(backend="xnnpack"), Path("model.pte"), constant_methods=info.metadata)
    result.size  # bytes written
    result.partition["delegated"]  # {"XnnpackBackend": {"aten.linear.default": 15, ...}}

The Core ML delegate embeds random identifiers (``uuid4`` model identifiers,
the UUID keys of the ``.mlpackage`` manifest, a date); lowering runs inside
:func:`modelbuild.ml.coreml.delegate.deterministic_coreml_delegate`, which
derives them from the delegated model's content, so the same input gives the
same bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "BackendUnavailable", "LowerOptions", "LowerResult", "lower_program", "partition_summary"]

BACKENDS = ("xnnpack", "coreml", "mps", "portable")

#: Graph nodes that are shape bookkeeping, not kernels: left out of op counts.
_BOOKKEEPING = {
    "aten.sym_size.int",
    "aten._assert_scalar.default",
    "aten._local_scalar_dense.default",
    "aten.sym_constrain_range_for_size.default",
    "getitem",
}


class BackendUnavailable(RuntimeError):
    """The installed ExecuTorch cannot lower to the requested backend."""


@dataclass(frozen=True)
class LowerOptions:
    """What to lower to. Core ML fields are ignored by the other backends."""

    backend: str = "xnnpack"
    #: Core ML: "cpu_only" | "cpu_and_gpu" | "cpu_and_ne" | "all"
    compute_units: str = "cpu_only"
    #: Core ML: "iOS15" ... "iOS18"
    minimum_deployment_target: str = "iOS18"
    #: Core ML: "fp16" | "fp32"
    precision: str = "fp16"
    #: Core ML weight compression at conversion: None | "b4w" (int4 per block of 32) | "c4w" (int4 per channel)
    coreml_quantize: str | None = None
    #: XNNPACK: "all" (dynamically quantized linears first, then every op XNNPACK takes)
    #: | "quantized_linears" (only the dynamically quantized linears)
    xnnpack_ops: str = "all"
    #: XNNPACK: delegate bf16 ops too (otherwise a bf16 program's ops stay on the portable path)
    xnnpack_bf16: bool = False


@dataclass
class LowerResult:
    size: int
    partition: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def op_name(target: Any) -> str:
    """A stable, readable name for an FX call target (``aten.linear.default``)."""
    op = target
    if type(op).__name__ == "EdgeOpOverload":  # wraps the aten overload; its str() adds the schema
        op = op._op
    if getattr(op, "__module__", None) in ("_operator", "operator"):
        return "getitem" if op is operator.getitem else f"operator.{op.__name__}"
    if hasattr(op, "_schema"):
        return str(op)  # OpOverload: "aten.linear.default"
    return getattr(op, "__name__", str(op))


def partition_summary(graph_module) -> dict[str, Any]:
    """Count ops delegated per backend and ops left on the portable CPU path.

    Returns ``{"delegated": {backend_id: {op: n}}, "portable": {op: n},
    "delegates": {backend_id: number of delegate calls}, "totals": {...}}``,
    counted from the lowered (edge) program, with shape bookkeeping left out.
    """
    import torch

    delegated: dict[str, Counter] = {}
    calls: Counter = Counter()
    portable: Counter = Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.executorch_call_delegate:
            lowered = getattr(graph_module, node.args[0].target)
            backend = lowered.backend_id
            calls[backend] += 1
            counts = delegated.setdefault(backend, Counter())
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function":
                    name = op_name(inner.target)
                    if name not in _BOOKKEEPING and not name.startswith("operator."):
                        counts[name] += 1
            continue
        name = op_name(node.target)
        if name in _BOOKKEEPING or name.startswith("operator."):
            continue
        if name.startswith("auto_functionalized") and node.args:
            name = op_name(node.args[0])  # the mutating op it wraps, e.g. llama.update_cache
        portable[name] += 1
    n_delegated = sum(sum(c.values()) for c in delegated.values())
    n_portable = sum(portable.values())
    return {
        "delegated": {b: dict(sorted(c.items())) for b, c in sorted(delegated.items())},
        "delegates": dict(sorted(calls.items())),
        "portable": dict(sorted(portable.items())),
        "totals": {"delegated": n_delegated, "portable": n_portable},
    }


def _persist_buffers(ep) -> None:
    """Turn non-persistent buffers into persistent ones, in place.

    The Core ML partitioner keeps some ops from decomposing, which makes
    ``to_edge_transform_and_lower`` unlift the program; torch 2.13's unlifting
    then fails on non-persistent buffers (rope tables, masks) with a KeyError.
    The values are unchanged; only where the program keeps them moves.
    """
    from torch.export.graph_signature import InputKind

    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.BUFFER and spec.persistent is False and spec.target in ep._constants:
            ep._state_dict[spec.target] = ep._constants.pop(spec.target)
            spec.persistent = True


def _partitioners(options: LowerOptions, log: list[str]):
    backend = options.backend
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackDynamicallyQuantizedPartitioner,
            XnnpackPartitioner,
        )

        # export_llm's order: dynamically quantized linears first (-X), then the rest
        # (--xnnpack-extended-ops). enable_bf16 exists from ExecuTorch 1.5 on; pass it only when asked.
        extra = {"enable_bf16": True} if options.xnnpack_bf16 else {}
        try:
            partitioners = [XnnpackDynamicallyQuantizedPartitioner(**extra)]
            if options.xnnpack_ops == "all":
                partitioners.append(XnnpackPartitioner(**extra))
        except TypeError as err:
            raise BackendUnavailable(f"xnnpack_bf16 needs an ExecuTorch whose XNNPACK partitioner takes enable_bf16 ({err})") from None
        return partitioners
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        units = {
            "cpu_only": ct.ComputeUnit.CPU_ONLY,
            "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
            "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
            "all": ct.ComputeUnit.ALL,
        }[options.compute_units]
        target = getattr(ct.target, options.minimum_deployment_target)
        precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}[options.precision]
        quantizer_config = None
        if options.coreml_quantize == "b4w":
            quantizer_config = {
                "mode": "linear_symmetric",
                "dtype": "int4",
                "granularity": "per_block",
                "block_size": 32,
                "weight_threshold": 512,
            }
        elif options.coreml_quantize == "c4w":
            quantizer_config = {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_channel"}
        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=target,
            compute_precision=precision,
            compute_unit=units,
            model_type=CoreMLBackend.MODEL_TYPE.MODEL,
            op_linear_quantizer_config=quantizer_config,
        )
        # As export_llm: the OSS Core ML runtime does not manage state, so the
        # KV cache buffers stay with ExecuTorch.
        return [CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=False)]
    if backend == "mps":
        log.append(
            "warning: the MPS backend is deprecated upstream (ExecuTorch recommends Core ML on Apple "
            "hardware); its .pte runs only on macOS/iOS with the MPS delegate built in"
        )
        try:
            from executorch.backends.apple.mps.partition import MPSPartitioner
        except ImportError as err:
            raise BackendUnavailable(
                "the MPS backend is deprecated upstream and this ExecuTorch install does not ship it "
                f"(executorch.backends.apple.mps: {err}); use backend = \"coreml\""
            ) from None
        from executorch.exir.backend.compile_spec_schema import CompileSpec

        return [MPSPartitioner([CompileSpec("use_fp16", bytes([True]))])]
    if backend == "portable":
        return []
    raise ValueError(f"unknown backend {backend!r}")


def release_memory() -> None:
    """Free what the last lowering phase left behind, and give it back to the OS.

    FX graphs hold reference cycles, so intermediate programs (and the tensors
    they hold) wait for a full garbage collection; and glibc keeps freed heap
    pages in its arenas. Without this, the peak RSS of the same 135M lowering
    varied between 2.5 and 4.2 GB from run to run.
    """
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def lower_program(
    ep, options: LowerOptions, out: Path, *, constant_methods: dict[str, Any]
) -> LowerResult:
    """Lower ``ep`` for ``options.backend`` and write the .pte to ``out``.

    The program is streamed to the file (``write_to_file``), never joined
    into one bytes object: for a 1B model that copy alone is gigabytes.

    ``constant_methods`` become the .pte's metadata methods (what the LLM
    runner reads: ``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``, ...).
    """
    import torch
    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass

    from .coreml.delegate import deterministic_coreml_delegate
    from .program import no_stack_traces
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    log: list[str] = []
    partitioners = _partitioners(options, log)
    if options.backend == "coreml":
        _persist_buffers(ep)
    patch = deterministic_coreml_delegate() if options.backend == "coreml" else contextlib.nullcontext()
    with patch, torch.no_grad(), no_stack_traces():
        edge = to_edge_transform_and_lower(
            ep,
            partitioner=partitioners or None,
            compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
            constant_methods=dict(constant_methods) or None,
        )
        release_memory()
        # As export_llm: linears left on CPU run as op_linear rather than transpose + mm.
        edge = edge.transform([ConvertToLinearPass()])
        partition = partition_summary(edge.exported_program().graph_module)
        release_memory()
        program = edge.to_executorch(
            ExecutorchBackendConfig(
                extract_delegate_segments=True,
                do_quant_fusion_and_const_prop=True,
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            )
        )
        del edge  # the serialized program no longer needs the edge graphs
        release_memory()
        with open(out, "wb") as f:
            program.write_to_file(f)
    return LowerResult(size=Path(out).stat().st_size, partition=partition, log=log)
