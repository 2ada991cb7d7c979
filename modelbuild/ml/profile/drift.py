"""Numerical debugging by operator: where does the lowered program part from its source?

:func:`measure_drift` runs the ``.pte`` once with ETDump and a debug buffer
(every instruction's output tensors recorded), runs the exported program
recorded in the ETRecord (the program the lowering started from) eagerly on
the same inputs, pairs the two sets of intermediate outputs through the
ETRecord's debug handles (ExecuTorch's ``Inspector.calculate_numeric_gap``)
and gives, per operator or delegate call in graph order, the cosine
similarity and largest absolute error of its output against the eager one.

The figures are threshold-free, so they can be cached with the
measurements; :func:`modelbuild.ml.profile.report.first_drift` later names
the first row below a tolerance ("first drift: aten.linear in
layers.3.attention.wo, cosine 0.91"). A delegate records only its outputs,
so inside an XNNPACK partition the culprit is the partition (named by the
ops it holds), not one of its ops; a ``portable`` lowering names the op.

What it can see: drift that lowering, the backend or the runtime introduce
(a kernel bug, a broken weight in the file, fp16 overflow in a delegate).
For a KV-cache LLM it looks at two decode calls, position 0 and a later one
(:data:`LATER_POSITION`, each on a fresh cache in both programs): at
position 0 the rotary embedding is the identity and attention sees one
cache entry, so drift in position-dependent code (rope tables, the cache
update's index, the mask) shows only at the later one. A drift that needs
real values already in the cache (a wrong read of earlier entries that
fresh, zeroed entries hide) is outside what one call can show.
What it cannot: drift already in the exported program (quantization is
compared against the quantized program); the validate report's cosine
against the original model covers that.

Example::

    drift = measure_drift(pte, etrecord, call.inputs, work)
    drift["ops"][0]   # {"op": "aten.linear", "module": "layers.0.fc", "cosine": 0.9999999, ...}
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

__all__ = ["measure_drift", "locate", "DEFAULT_DEBUG_BUFFER", "LATER_POSITION"]

#: Bytes for the recorded intermediate outputs (at least; grows with the memory plan).
DEFAULT_DEBUG_BUFFER = 64 << 20
_MAX_DEBUG_BUFFER = 1 << 30
#: A KV-cache LLM's second decode call checked (or the reference's last position before it).
LATER_POSITION = 7


def _tensors(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _compare(aot, runtime) -> tuple[float | None, float | None]:
    """(cosine, max abs error) of two outputs (the worst over their tensors); None where shapes differ."""
    import torch

    from modelbuild.ml.validation.metrics import cosine

    a_list, r_list = _tensors(aot), _tensors(runtime)
    if not a_list or len(a_list) != len(r_list):
        return None, None
    worst_cos, worst_err = 1.0, 0.0
    for a, r in zip(a_list, r_list):
        if a.numel() != r.numel() or not (a.is_floating_point() or r.is_floating_point()):
            if a.numel() != r.numel():
                return None, None
            if not torch.equal(a.reshape(-1).long(), r.reshape(-1).long()):
                worst_cos = min(worst_cos, 0.0)
            continue
        a64, r64 = a.detach().reshape(-1).double(), r.detach().reshape(-1).double()
        err = float((a64 - r64).abs().max()) if a64.numel() else 0.0
        # Not torch.dot: its sum depends on the thread count, and the report must rebuild identically.
        cos = cosine(a64.numpy(), r64.numpy())
        if math.isnan(cos) or math.isnan(err):
            return float("nan"), float("nan")
        worst_cos, worst_err = min(worst_cos, cos), max(worst_err, err)
    return worst_cos, worst_err


def _node_index(etrecord) -> dict[str, Any]:
    """Node name -> FX node, over the programs the Inspector may have used as the reference."""
    index: dict[str, Any] = {}
    programs = [etrecord.exported_program]
    edge = etrecord.edge_dialect_program
    programs += list(edge.values()) if isinstance(edge, dict) else [edge]
    for ep in programs:
        if ep is None:
            continue
        for node in ep.graph_module.graph.nodes:
            index.setdefault(node.name, node)
    return index


def _label(names: list[str], nodes: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    """(op, module, ops held) for the reference-graph nodes one runtime output stands for."""
    from modelbuild.ml.lower import op_name

    from .etdump import short_op

    ops: dict[str, int] = {}
    modules: list[str] = []
    for name in names:
        node = nodes.get(name)
        op = short_op(op_name(node.target)) if node is not None and node.op == "call_function" else name
        ops[op] = ops.get(op, 0) + 1
        stack = (node.meta.get("nn_module_stack") or {}) if node is not None else {}
        paths = [v[0] for v in stack.values() if isinstance(v, (tuple, list)) and v and isinstance(v[0], str)]
        path = max(paths, key=lambda p: (p.count(".") + bool(p), len(p)), default="")
        if path and path not in modules:
            modules.append(path)
    module = "" if not modules else modules[0] if len(modules) == 1 else f"{modules[0]} … {modules[-1]}"
    if len(names) == 1:
        return next(iter(ops)), module, ops
    main = max(ops.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return main, module, ops


def _repair_buffers(ep, spare: dict) -> None:
    """Let ``ep.module()`` unlift a program read back from an ETRecord, in place.

    The round trip through the ETRecord can lose non-persistent buffers
    (masks, rope tables): the signature still lists them, and unlifting
    fails with a KeyError. A buffer kept with the state dict is marked
    persistent; one missing altogether is taken from ``spare`` (the edge
    program's constants: the same values under the same names).
    """
    from torch.export.graph_signature import InputKind

    if ep is None:
        return
    for spec in ep.graph_signature.input_specs:
        if spec.kind != InputKind.BUFFER or spec.persistent is not False or spec.target in ep.constants:
            continue
        if spec.target in ep.state_dict:
            spec.persistent = True
        elif spec.target in spare:
            ep.constants[spec.target] = spare[spec.target]


def measure_drift(pte: Path, etrecord: Path, inputs: tuple, work: Path, *, label: str = "",
                  debug_buffer_size: int | None = None) -> dict[str, Any]:
    """Per-operator cosine and max abs error of the ``.pte``'s outputs against the ETRecord's program.

    Returns ``{"reference", "input", "graph", "ops": [{"index", "op", "module", "ops",
    "runtime", "delegate", "cosine", "max_abs_error"}]}``, ops in graph order.
    """
    from executorch.devtools import Inspector

    from .etdump import run_with_etdump
    from .etrecord import load_etrecord
    from .memory import memory_plan

    if debug_buffer_size is None:
        planned = memory_plan(pte).get("forward", {}).get("total_bytes", 0)
        debug_buffer_size = min(max(DEFAULT_DEBUG_BUFFER, 8 * planned), _MAX_DEBUG_BUFFER)
    run = run_with_etdump(pte, [inputs], work, warmup=0, debug_buffer_size=debug_buffer_size)
    record = load_etrecord(etrecord)
    record.update_representative_inputs(tuple(inputs))
    edges = list(record.edge_dialect_program.values()) if isinstance(record.edge_dialect_program, dict) \
        else [record.edge_dialect_program]
    spare = {k: v for ep in edges if ep is not None for k, v in ep.constants.items()}
    for ep in [record.exported_program, *edges]:
        _repair_buffers(ep, spare)
    quiet = logging.getLogger("executorch.devtools.inspector._inspector")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=str(run.etdump), etrecord=record, debug_buffer_path=str(run.debug))
            # With the debug-handle check on, the Inspector falls back to the edge program as the
            # reference where the handles do not reach back into the exported program (an LLM's
            # symbolic shapes): forcing the exported program there pairs nothing, and the locator
            # would say nothing.
            frame = inspector.calculate_numeric_gap("MSE")
    finally:
        quiet.setLevel(level)
    nodes = _node_index(record)
    rows = []
    for _, r in frame.iterrows():
        handles = r["aot_debug_handle"]
        handles = list(handles) if isinstance(handles, (list, tuple)) else [handles]
        names = [str(n) for n in (r["aot_ops"] or [])]
        op, module, held = _label(names, nodes)
        cosine, max_err = _compare(r["aot_intermediate_output"], r["runtime_intermediate_output"])
        runtime = [str(n) for n in (r["runtime_ops"] or [])]
        rows.append({"index": min(int(h) for h in handles) if handles else len(rows), "op": op, "module": module,
                     "ops": held, "runtime": runtime, "delegate": "DELEGATE_CALL" in runtime,
                     "cosine": cosine, "max_abs_error": max_err})
    rows.sort(key=lambda row: row["index"])
    return {"reference": "the exported program in the ETRecord (what the lowering started from), run eagerly",
            "input": label, "ops": rows}


def locate(pte: Path, etrecord: Path, calls: list, work: Path) -> dict[str, Any]:
    """:func:`measure_drift` on ``calls[0]``; for a KV-cache LLM also on a later decode call, as ``"later"``.

    ``calls`` come from :func:`modelbuild.ml.profile.inputs.program_calls`
    (ask for ``LATER_POSITION + 1`` of them); the later call is the last one
    at or before ``LATER_POSITION``.
    """
    drift = measure_drift(pte, etrecord, calls[0].inputs, work / "first", label=calls[0].label)
    later = [c for c in calls[1:] if c.position is not None and c.position <= LATER_POSITION]
    if calls[0].position == 0 and later:
        more = measure_drift(pte, etrecord, later[-1].inputs, work / "later", label=later[-1].label)
        drift["later"] = {"input": more["input"], "ops": more["ops"]}
    return drift


def locate_in_artifact(pte_dir: Path, ref_dir: Path, work: Path) -> dict[str, Any] | None:
    """:func:`locate` for a pte artifact (with its ETRecord) on the reference's calls; None without one."""
    from modelbuild.devtools import ETRECORD_FILE

    from .inputs import program_calls, program_json

    etrecord = Path(pte_dir) / ETRECORD_FILE
    if not etrecord.exists():
        return None
    calls = program_calls(Path(ref_dir), program_json(Path(pte_dir)), LATER_POSITION + 1)
    if not calls:
        return None
    return locate(Path(pte_dir) / "model.pte", etrecord, calls, work)
