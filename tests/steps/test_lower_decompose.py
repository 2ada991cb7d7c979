"""Lowering does not run again the decompositions export already ran, and writes the same bytes.

``modelbuild.ml.decompose.decompose_once`` skips a ``run_decompositions``
pass of ``to_edge_transform_and_lower`` only where it cannot change the
program; these tests lower the tiny export with every pass run (the skip
switched off) and compare with the lower step's own artifact, byte for byte.
"""

from __future__ import annotations

import pytest

import llm_artifacts as A
from modelbuild.ml import decompose
from modelbuild.steps.lower import LowerStep
from modelbuild.testing import run_step

pytestmark = pytest.mark.ml


def test_an_exported_program_is_already_decomposed_and_a_quantized_one_is_not():
    from modelbuild.ml.program import load_program

    ep = load_program(A.tiny_export())[0]
    assert decompose.already_decomposed(ep, {})  # so lowering skips its first pass
    assert not decompose.already_decomposed(ep, None)
    # quantize re-exports: training IR again, and lowering runs every pass, as export_llm does.
    quantized = load_program(A.quantized())[0]
    assert not decompose.already_decomposed(quantized, {})


# Portable only: the skipped pass comes before any partitioner, and an XNNPACK lowering more
# would double this file's test time (checked by hand: the tiny XNNPACK .pte is byte-identical too).
@pytest.mark.parametrize("backend", ["portable"])
def test_skipping_changes_no_byte_of_the_pte(backend, tmp_path, monkeypatch, capsys):
    skipping = A.lowered(A.tiny_export(), backend)  # the lower step as it runs (shared with test_lower)
    capsys.readouterr()  # that lowering's log, if it ran here, says what it skipped
    monkeypatch.setattr(decompose, "already_decomposed", lambda program, table: False)
    every_pass = run_step(LowerStep, {"backend": backend}, {"program": A.program_artifact(A.tiny_export())},
                          tmp_path / "out").path
    assert "skipped decomposition passes" not in capsys.readouterr().out
    assert (every_pass / "model.pte").read_bytes() == (skipping / "model.pte").read_bytes()
    assert (every_pass / "partition.json").read_bytes() == (skipping / "partition.json").read_bytes()


def test_the_callers_program_is_left_as_it_was():
    """A skipped pass hands on a copy: the edge passes after it must not edit the caller's graph."""
    import torch

    from modelbuild.ml.program import load_program

    ep = load_program(A.tiny_export())[0]
    before, original = str(ep.graph), torch.export.ExportedProgram.run_decompositions
    with decompose.decompose_once() as skipped:
        fresh = ep.run_decompositions({})
    assert skipped == ["functionalization"]
    assert torch.export.ExportedProgram.run_decompositions is original  # the patch is undone
    assert fresh is not ep and fresh.graph_module is not ep.graph_module
    assert str(fresh.graph) == before
    first = next(n for n in fresh.graph.nodes if n.op == "placeholder")
    fresh.graph.create_node("call_function", torch.ops.aten.relu.default, (first,))  # an edit, as edge passes make
    assert str(ep.graph) == before
    assert all(fresh.state_dict[k] is v for k, v in ep.state_dict.items())  # weights shared, not copied
