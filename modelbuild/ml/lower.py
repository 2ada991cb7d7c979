"""Lowering an exported program to an ExecuTorch ``.pte``, and what it delegated.

Used by the ``lower`` step (``modelbuild.steps.lower``); imports torch and
ExecuTorch, so only ``run`` imports it.

Example::

    from modelbuild.ml.lower import LowerOptions, lower_program
    result = lower_program(ep, LowerOptions("xnnpack"), Path("model.pte"), constant_methods=info.metadata)
    result.size  # bytes written
    result.partition["delegated"]  # {"XnnpackBackend": {"aten.linear.default": 15, ...}}

What is backend-specific (partitioners, program preparation, passes, a
context around the lowering) comes from the backend plugin
(:mod:`modelbuild.backends`). The Core ML one, for instance, lowers inside
:func:`modelbuild.ml.coreml.delegate.deterministic_coreml_delegate`, which
derives the delegate's otherwise random identifiers from content, so the same
input gives the same bytes.
"""

from __future__ import annotations

import ctypes
import operator
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelbuild.backends import BackendUnavailable, get_backend

__all__ = ["BackendUnavailable", "LowerOptions", "LowerResult", "lower_program", "partition_summary"]

#: Graph nodes that are shape bookkeeping, not kernels: left out of op counts.
_BOOKKEEPING = {
    "aten.sym_size.int",
    "aten._assert_scalar.default",
    "aten._local_scalar_dense.default",
    "aten.sym_constrain_range_for_size.default",
    "getitem",
}


@dataclass(frozen=True)
class LowerOptions:
    """What to lower to: a registered backend's name and its own ``Params``
    (:mod:`modelbuild.backends`; None = the backend's defaults)."""

    backend: str = "xnnpack"
    params: Any = None

    def resolved(self):
        """``(Backend, its Params instance)``."""
        backend = get_backend(self.backend)
        return backend, (self.params if self.params is not None else backend.Params())


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
    ep, options: LowerOptions, out: Path, *, constant_methods: dict[str, Any], info: Any = None,
    etrecord: Path | None = None,
) -> LowerResult:
    """Lower ``ep`` for ``options.backend`` and write the .pte to ``out``.

    The program is streamed to the file (``write_to_file``), never joined
    into one bytes object: for a 1B model that copy alone is gigabytes.

    ``constant_methods`` become the .pte's metadata methods (what the LLM
    runner reads: ``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``, ...).

    The backend (a plugin, :mod:`modelbuild.backends`) supplies the
    partitioners, the in-place preparation of ``ep``, a context around the
    lowering and the edge passes; ``info`` (the program's ``ProgramInfo``)
    is what its partitioners may consult.

    ``etrecord``, when given, is where ExecuTorch's ETRecord of this lowering goes
    (:mod:`modelbuild.ml.profile.etrecord`); the .pte bytes do not change.
    """
    import torch

    from .decompose import decompose_once
    from .profile.etrecord import graphs_of, keep_debug_handles
    from .program import no_stack_traces
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    log: list[str] = []
    backend, params = options.resolved()
    partitioners = backend.partitioners(params, info, log)
    backend.prepare(ep, params)
    with backend.lowering(params) as backend_notes, torch.no_grad(), no_stack_traces():
        with decompose_once() as skipped:  # what export already ran is not run again (same bytes)
            edge = to_edge_transform_and_lower(
                ep,
                partitioner=partitioners or None,
                compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
                constant_methods=dict(constant_methods) or None,
                generate_etrecord=etrecord is not None,  # ETRecord beside the .pte (same .pte bytes)
            )
        if skipped:
            log.append(f"skipped decomposition passes with nothing to do: {', '.join(skipped)}")
        release_memory()
        passes = backend.passes(params)  # default, as export_llm: linears left on CPU run as op_linear
        if passes:
            before = graphs_of(edge) if etrecord is not None else None
            edge = edge.transform(passes)
            if before is not None:  # so that the ETRecord still names the operators the passes rewrote
                keep_debug_handles(before, edge)
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
        if etrecord is not None:
            from .profile.etrecord import save_etrecord

            save_etrecord(program.get_etrecord(), etrecord)
    log.extend(backend_notes or [])
    return LowerResult(size=Path(out).stat().st_size, partition=partition, log=log)
