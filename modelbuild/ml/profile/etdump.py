"""Run a ``.pte`` with ETDump on, and read the dump with ExecuTorch's Inspector.

:func:`run_with_etdump` loads the program through the Python runtime bindings
with event tracing on (``Runtime.load_program(..., enable_etdump=True)``),
runs the calls and writes the dump (and, with a debug buffer, the
intermediate outputs). :func:`instruction_rows` turns the dump, named through
the ETRecord, into one row per executed instruction: an operator call
(``aten::addmm.out`` of ``layers.0.fc``) or a delegate call (an XNNPACK
partition, named by the ops it holds), with its time per run.

Example::

    run = run_with_etdump(pte, [call.inputs for call in calls], work, warmup=1)
    rows = instruction_rows(run.etdump, etrecord_path, skip=run.warmup)
    rows["instructions"][0]   # {"name": "aten::addmm.out", "module": "layers.0.fc", "mean_ms": 0.004, ...}
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["DumpRun", "run_with_etdump", "instruction_rows", "short_op", "module_of"]


@dataclass
class DumpRun:
    """Where the dump went and what the wall clock saw."""

    etdump: Path
    debug: Path | None
    warmup: int
    load_program_ms: float
    load_method_ms: float
    forward_ms: list[float] = field(default_factory=list)  # measured calls only (warm-up left out)
    outputs: list[Any] = field(default_factory=list)


def run_with_etdump(pte: Path, calls: Sequence[tuple], work: Path, *, warmup: int = 1,
                    debug_buffer_size: int = 0, method: str = "forward") -> DumpRun:
    """Run ``calls`` (input tuples) on ``pte`` with ETDump on; the first ``warmup`` calls are repeated first.

    ``debug_buffer_size`` > 0 also records every instruction's output tensors
    (what the drift locator compares); profiling leaves it at 0 so that
    copying tensors does not inflate the times.
    """
    from executorch.runtime import Runtime

    from modelbuild.ml.validation.runners import _load_extension_ops

    _load_extension_ops()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    program = Runtime.get().load_program(Path(pte), enable_etdump=True, debug_buffer_size=int(debug_buffer_size))
    t1 = time.perf_counter()
    forward = program.load_method(method)
    t2 = time.perf_counter()
    warm = [calls[i % len(calls)] for i in range(warmup)] if calls else []
    for inputs in warm:
        forward.execute(list(inputs))
    run = DumpRun(etdump=work / "etdump.etdp", debug=work / "debug.bin" if debug_buffer_size else None,
                  warmup=len(warm), load_program_ms=(t1 - t0) * 1e3, load_method_ms=(t2 - t1) * 1e3)
    for inputs in calls:
        start = time.perf_counter()
        out = forward.execute(list(inputs))
        run.forward_ms.append((time.perf_counter() - start) * 1e3)
        run.outputs.append(out)
    program.write_etdump_result_to_file(str(run.etdump), str(work / "debug.bin"))
    return run


def short_op(name: str) -> str:
    """``aten.linear.default`` -> ``aten.linear``; other names unchanged."""
    for suffix in (".default", ".Tensor", ".out"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _deepest(hierarchy: dict) -> str:
    """The innermost module path of one op's ``nn_module_stack``-like entry ("" for the root)."""
    paths = [v[0] for v in hierarchy.values() if isinstance(v, (tuple, list)) and v and isinstance(v[0], str)]
    return max(paths, key=lambda p: (p.count(".") + bool(p), len(p)), default="")


def module_of(module_hierarchy: dict[str, dict]) -> str:
    """Where an event's ops sit in the model: one module path, or "first … last" for a span."""
    paths = []
    for hierarchy in module_hierarchy.values():
        path = _deepest(hierarchy) if isinstance(hierarchy, dict) else ""
        if path and path not in paths:
            paths.append(path)
    if not paths:
        return ""
    return paths[0] if len(paths) == 1 else f"{paths[0]} … {paths[-1]}"


def _delegate_name(backend: str | None, ops: Counter) -> str:
    held = ", ".join(f"{short_op(op)} ×{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{backend or 'delegate'} partition ({held or 'ops unknown without an ETRecord'})"


def _times(event, skip: int) -> list[float]:
    raw = list(event.perf_data.raw) if event.perf_data is not None else []
    return [float(t) for t in raw[skip:]]


def instruction_rows(etdump: Path, etrecord: Path | None, *, skip: int = 0,
                     delegate_backend: str | None = None, names: dict[int, str] | None = None) -> dict[str, Any]:
    """Rows per executed instruction from an ETDump (names from the ETRecord when given).

    Returns ``{"instructions": [...], "forward_ms": [...], "load": {...}}``:
    each instruction ``{"index", "kind" ("operator" | "delegate"), "name",
    "module", "ops", "times_ms", "mean_ms", "total_ms", "calls", "inner"}``
    where ``inner`` lists a delegate's own profiling events (XNNPACK's per-op
    timings), and ``forward_ms`` the ``Method::execute`` time of each run.
    ``skip`` leaves out the first runs (warm-up). ``delegate_backend`` names
    the backend of delegate calls whose dump does not say (the program's only one);
    ``names`` the kernel of each instruction (:func:`.memory.instruction_names`).
    """
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": profiling records no tensors
        inspector = Inspector(etdump_path=str(etdump), etrecord=str(etrecord) if etrecord else None)
    load: dict[str, float] = {}
    forward: list[float] = []
    kernels: dict[int, str] = {}
    inner: dict[int, list[dict]] = {}
    calls: list[tuple[str, Any]] = []
    for block in inspector.event_blocks:
        for event in block.events:
            name = event.name or ""
            if name in ("Method::init", "Program::load_method"):
                load[name] = sum(_times(event, 0))
            elif name == "Method::execute":
                forward = _times(event, skip)
            elif name in ("OPERATOR_CALL", "DELEGATE_CALL"):
                calls.append((name, event))
            elif name.startswith("native_call_"):
                kernels[event._instruction_id] = "aten::" + name[len("native_call_"):]
            elif event.is_delegated_op:
                times = _times(event, skip)
                inner.setdefault(event._instruction_id, []).append(
                    {"name": name, "mean_ms": sum(times) / len(times) if times else None,
                     "backend": event.delegate_backend_name})
    rows = []
    for name, event in calls:
        times = _times(event, skip)
        ops = Counter(event.op_types or [])
        index = event._instruction_id
        row = {"index": index, "kind": "operator" if name == "OPERATOR_CALL" else "delegate",
               "module": module_of(event.module_hierarchy or {}), "ops": dict(sorted(ops.items())),
               "times_ms": times, "calls": len(times), "total_ms": sum(times),
               "mean_ms": sum(times) / len(times) if times else 0.0, "inner": inner.get(index, [])}
        if row["kind"] == "operator":
            row["name"] = ((names or {}).get(index) or kernels.get(index)
                           or (short_op(event.op_types[-1]) if event.op_types else "operator"))
        else:
            backend = next((e["backend"] for e in row["inner"] if e.get("backend")), None)
            backend = backend or delegate_backend
            row["name"] = _delegate_name(backend, ops)
            row["backend"] = backend
        rows.append(row)
    rows.sort(key=lambda r: r["index"])
    return {"instructions": rows, "forward_ms": forward, "load": load}
