"""Idle re-traces: XNNPACK's preprocess skips re-tracing a partition that a pass left as it was.

``XnnpackBackend.preprocess`` runs XNNPACK's 17 graph passes on every
partition it is given (304 of them in the SmolLM2-135M program). Most of
those passes look for what an LLM partition does not hold (batch norm,
conv1d, PReLU, upsampling, ...), change nothing, and then re-trace the
partition anyway (``super().call(graph_module)``: an interpretation of the
whole graph with fake tensors, to regenerate its metadata). On the 135M
8da4w lowering these passes are about a quarter of the lowering's time
(``bench/profile_lower.py``, docs/benchmarks.md).

:func:`skip_idle_retraces` makes that re-trace return the graph module it is
given when nothing can differ: the graph came out of an earlier re-trace in
the same preprocess, and since then no node was added, removed, reordered or
rewired, and no node's metadata entry was replaced (the signature compares
node names, ops, targets, arguments and the identity of every metadata
value). The re-trace of such a graph only makes new objects of the same
values. Passes that change what the re-trace itself does (``ExportPass``
hooks such as ``call_operator``) always re-trace. Only re-traces inside
XNNPACK's pass manager are affected; every other pass runs as before.
``tests/steps/test_lower_retrace.py`` checks that lowering with and without
the skip writes the same bytes.

Example::

    with skip_idle_retraces() as counts:
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    counts  # {"skipped": 3100, "ran": 2068}
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

__all__ = ["skip_idle_retraces", "graph_signature"]

#: ExportPass methods that change what a re-trace produces; a pass overriding one always re-traces.
_HOOKS = ("call_operator", "call_submodule", "placeholder", "output", "call_getitem", "call_delegate",
          "call_sym", "call_cond", "call_while", "call_map", "call_scan", "on_attr", "call_size_operator",
          "call_size_operator_all", "inputs")


def graph_signature(graph) -> tuple:
    """What a re-trace reads of ``graph``: each node's name, op, target, arguments (other nodes
    by name) and metadata (keys and the identity of each value)."""
    from torch.fx.node import map_arg

    def named(a: Any) -> Any:
        return map_arg(a, lambda n: n.name)

    return tuple(
        (n.name, n.op, repr(n.target), repr(named(n.args)), repr(named(n.kwargs)),
         tuple((k, id(v)) for k, v in n.meta.items()))
        for n in graph.nodes
    )


def _plain(pass_: Any, base: type) -> bool:
    """Does ``pass_`` re-trace with ``base``'s hooks (it only overrides ``call``)?"""
    return all(getattr(type(pass_), hook, None) is getattr(base, hook, None) for hook in _HOOKS)


@contextlib.contextmanager
def skip_idle_retraces() -> Iterator[dict[str, int]]:
    """Within the block, XNNPACK's passes skip re-tracing a graph that is as an earlier re-trace made it.

    Yields ``{"skipped": n, "ran": m}``, counted as the block runs. The patches
    (on ``_ExportPassBase.call`` and ``XNNPACKPassManager.transform``) are
    undone on exit; lowering runs one program at a time in its process.
    """
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.pass_base import ExportPass, _ExportPassBase
    from torch.fx.passes.infra.pass_base import PassResult

    counts = {"skipped": 0, "ran": 0}
    retrace, transform = _ExportPassBase.call, XNNPACKPassManager.transform
    traced: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()  # graph -> its signature
    inside = [0]  # depth of XNNPACKPassManager.transform calls

    def call(self, graph_module):
        if not inside[0] or not (isinstance(self, ExportPass) and _plain(self, ExportPass)):
            return retrace(self, graph_module)
        graph = graph_module.graph
        known = traced.get(graph)
        if known is not None and known == graph_signature(graph):
            counts["skipped"] += 1
            return PassResult(graph_module, True)
        result = retrace(self, graph_module)
        counts["ran"] += 1
        traced[result.graph_module.graph] = graph_signature(result.graph_module.graph)
        return result

    def transform_(self):
        inside[0] += 1
        try:
            return transform(self)
        finally:
            inside[0] -= 1

    _ExportPassBase.call, XNNPACKPassManager.transform = call, transform_
    try:
        yield counts
    finally:
        _ExportPassBase.call, XNNPACKPassManager.transform = retrace, transform
