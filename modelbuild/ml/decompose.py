"""Decompose once: lowering skips the decomposition pass that export already ran.

``to_edge_transform_and_lower`` starts by calling ``run_decompositions({})``
on the program it is given ("functionalize before asking the partitioners what
to preserve"), then, per partitioner, ``run_decompositions(table)`` with the
core ATen table minus the ops that partitioner keeps. ``export_llm`` hands it a
program fresh from ``torch.export`` (training IR), so each pass runs once.
modelbuild's ``export`` step has already run ``run_decompositions({})`` before
saving (the artifact is inference IR, dialect ``ATEN``), so the first pass in
lowering re-traced the whole graph for nothing (its cost on the 135M shape:
``bench/bench_program_io.py``, docs/benchmarks.md).

:func:`decompose_once` skips that pass, ``run_decompositions({})``, on a
program that is already inference IR (its verifier dialect is ``ATEN``:
functional, no training-only ops), which is what the pass would make of it.
The passes with a decomposition table run as before: ``export_llm`` runs them
too, and they are not a no-op even when no node is a key of the table (the
table also decomposes composite operators such as ``aten.type_as``; skipping
one left ``aten::item`` and ``aten::type_as`` without out-variants).

A program fresh from ``quantize`` (re-exported, dialect ``TRAINING``) gets
every pass, as in ``export_llm``. ``tests/steps/test_lower_decompose.py``
checks that lowering with and without the skip writes the same bytes.

Example::

    with decompose_once() as skipped:
        edge = to_edge_transform_and_lower(ep, partitioner=...)
    log.append(f"skipped: {skipped}")   # ["functionalization"] for a program from export
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ["decompose_once", "already_decomposed"]


def already_decomposed(program, table: dict[Any, Any] | None) -> bool:
    """Would ``program.run_decompositions(table)`` be a re-trace that changes nothing?

    True only for the empty table (functionalization alone) on a program
    already in inference IR. ``table=None`` (torch's default core table) and
    any other table are never skipped.
    """
    if table is None or len(table) != 0:
        return False
    return [v.dialect for v in getattr(program, "verifiers", ())] == ["ATEN"]


def _fresh(program):
    """A new ExportedProgram over a copy of ``program``'s graph, sharing its weights.

    What a skipped pass hands on: ``run_decompositions`` returns a new
    program, and ExecuTorch's edge passes that follow change the graph they
    are given in place. The caller's program (which a fused build may still
    be saving on another thread, or an ETRecord records) must stay as it was.
    Copying the graph costs milliseconds; tracing it again cost seconds.
    """
    import copy

    import torch
    from torch.export import ExportedProgram

    gm = program.graph_module
    graph = copy.deepcopy(gm.graph)
    root = torch.fx.GraphModule(gm, graph)
    root.meta.update(gm.meta)
    return ExportedProgram(
        root=root,
        graph=graph,
        graph_signature=copy.deepcopy(program.graph_signature),
        state_dict=dict(program.state_dict),
        range_constraints=dict(program.range_constraints),
        module_call_graph=copy.deepcopy(program.module_call_graph),
        example_inputs=program.example_inputs,
        constants=dict(program.constants),
        verifiers=list(program.verifiers),
    )


@contextlib.contextmanager
def decompose_once() -> Iterator[list[str]]:
    """Within the block, ``run_decompositions`` returns a copy of the program (same weights) where
    :func:`already_decomposed` says the pass would change nothing.

    Yields the list of skipped passes (one description each), filled as the
    block runs. The patch is on the class and is undone on exit; lowering runs
    one program at a time in its process.
    """
    from torch.export import ExportedProgram

    original = ExportedProgram.run_decompositions
    skipped: list[str] = []

    def run_decompositions(self, decomp_table=None, *args, **kwargs):
        if not args and not kwargs and already_decomposed(self, decomp_table):
            skipped.append("functionalization")
            return _fresh(self)
        return original(self, decomp_table, *args, **kwargs)

    ExportedProgram.run_decompositions = run_decompositions
    try:
        yield skipped
    finally:
        ExportedProgram.run_decompositions = original
