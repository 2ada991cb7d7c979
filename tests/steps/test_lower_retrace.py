"""XNNPACK lowering skips the re-traces that cannot change a partition, and writes the same bytes.

``modelbuild.ml.retrace.skip_idle_retraces`` (on in every XNNPACK lowering)
returns a partition's graph instead of re-tracing it when no pass changed it
since the last re-trace. These tests lower with the skip and without it (the
backend's lowering context switched off) and compare the programs byte for
byte, on the tiny llama in fp32 and in 8da4w, and check the signature that
decides it.
"""

from __future__ import annotations

import contextlib

import pytest

import llm_artifacts as A
from modelbuild.backends.xnnpack import Xnnpack
from modelbuild.ml.retrace import graph_signature, skip_idle_retraces
from modelbuild.steps.lower import LowerStep
from modelbuild.testing import run_step

pytestmark = pytest.mark.ml


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "8da4w"])
def test_skipping_idle_retraces_changes_no_byte_of_the_pte(quantized, tmp_path, monkeypatch, capsys):
    program = A.quantized() if quantized else A.tiny_export()
    skipping = run_step(LowerStep, {"backend": "xnnpack"}, {"program": A.program_artifact(program)},
                        tmp_path / "skipping").path
    noted = [line for line in capsys.readouterr().out.splitlines() if "re-traces skipped" in line]
    assert noted, "the lowering skipped no re-trace"
    skipped = int(noted[0].split("XNNPACK passes: ")[1].split()[0])
    assert skipped > 0
    monkeypatch.setattr(Xnnpack, "lowering", lambda self, params: contextlib.nullcontext())
    every = run_step(LowerStep, {"backend": "xnnpack"}, {"program": A.program_artifact(program)},
                     tmp_path / "every").path
    assert "re-traces skipped" not in capsys.readouterr().out
    assert (every / "model.pte").read_bytes() == (skipping / "model.pte").read_bytes()
    assert (every / "partition.json").read_bytes() == (skipping / "partition.json").read_bytes()


def test_the_signature_sees_every_change_a_retrace_would_read():
    import torch

    class Small(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) + 1

    gm = torch.export.export(Small(), (torch.randn(2, 3),)).graph_module
    before = graph_signature(gm.graph)
    assert graph_signature(gm.graph) == before  # nothing changed, nothing differs
    relu = next(n for n in gm.graph.nodes if n.op == "call_function")
    relu.meta["quant_attrs"] = {"scale": 0.5}  # a pass tagging a node
    tagged = graph_signature(gm.graph)
    assert tagged != before
    relu.meta["quant_attrs"] = dict(relu.meta["quant_attrs"])  # replaced by an equal value: still a change
    assert graph_signature(gm.graph) != tagged
    again = graph_signature(gm.graph)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    relu.args = (x,)  # rewired to the same input: the same graph
    assert graph_signature(gm.graph) == again
    with gm.graph.inserting_after(relu):
        gm.graph.call_function(torch.ops.aten.neg.default, (relu,))  # a new node
    assert graph_signature(gm.graph) != again


def test_the_patches_are_undone_and_only_xnnpack_passes_skip():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.pass_base import ExportPass, _ExportPassBase

    call, transform = _ExportPassBase.call, XNNPACKPassManager.transform
    import torch

    class Small(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) + 1

    gm = torch.export.export(Small(), (torch.randn(2, 3),)).graph_module
    with skip_idle_retraces() as counts:
        first = ExportPass()(gm).graph_module  # outside XNNPACK's pass manager: always re-traced
        second = ExportPass()(first).graph_module
    assert first is not gm and second is not first
    assert counts == {"skipped": 0, "ran": 0}
    assert _ExportPassBase.call is call and XNNPACKPassManager.transform is transform
