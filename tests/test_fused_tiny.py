"""The built-in export -> quantize -> lower chain handing the program over in memory
stores the same bytes as the same steps loading each other's files.

The unfused side is tests/steps/llm_artifacts.py (run_step: each step loads
the saved program), shared with the quantize, lower and runner tests; the
fused side runs quantize and lower in this process, lower taking the program
quantize kept (``ctx.input_value`` / ``ctx.keep_value``), as a fused session
does. (A first version found a real difference this way: the kept
ProgramInfo's metadata in insertion order gave the .pte its constant methods
in another order than model.json's sorted keys.) The engine side (same keys, one process, failures, kill -9) is
tests/test_fused.py; keys never depend on where a step ran.

Session 2 saw this test fail after the rest of the suite and pass alone, and
suspected state leaking between steps of one process. It was the file side:
``llm_artifacts.lowered`` named its directory without the lower options, so
tests/steps/test_lower.py's ``lowered(q, "xnnpack", xnnpack_ops="quantized_linears")``
rewrote the default ``lowered(q, "xnnpack")`` this test compares with (since the
artifacts are built once per run, it would instead have handed the default one
back for the option). The last test here keeps the two apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "steps"))
import llm_artifacts as A  # noqa: E402  (shared, memoized tiny artifacts)

from modelbuild.step import NOTHING, StepContext  # noqa: E402

pytestmark = pytest.mark.ml


def _run(step_cls, params: dict, inputs: dict, out: Path, work: Path, values: dict | None = None):
    """Run a step as a fused session does: values handed in, the kept value returned."""
    step = step_cls()
    out.mkdir(parents=True)
    work.mkdir(parents=True)
    ctx = StepContext(target=out.name, params=step.Params.model_validate(params), inputs=inputs, sources={}, out=out,
                      work=work, jobs=2, project=work, values=values, keep=True)
    step.run(ctx)
    assert ctx.kept is not NOTHING
    return ctx.kept


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_in_memory_chain_stores_the_bytes_of_the_file_chain(tmp_path):
    """quantize -> lower handing the fresh (never saved and loaded) quantized program over in memory."""
    from modelbuild.ml.program import load_program
    from modelbuild.steps.lower import LowerStep
    from modelbuild.steps.quantize import QuantizeStep

    program = A.program_artifact(A.tiny_export())
    value = _run(QuantizeStep, {"linear": "8da4w", "group_size": 32}, {"program": program}, tmp_path / "q", tmp_path / "w2",
                 values={"program": load_program(program.path)})
    assert _files(tmp_path / "q") == _files(A.quantized("8da4w", 32))
    ep, info, example = value
    assert info.to_json() == (tmp_path / "q" / "model.json").read_text()  # as a reader of model.json sees it

    quantized = A.program_artifact(tmp_path / "q", target="tiny-llama-8da4w")
    step = LowerStep()
    out, work = tmp_path / "pte", tmp_path / "w3"
    out.mkdir()
    work.mkdir()
    ctx = StepContext(target="pte", params=step.Params.model_validate({"backend": "xnnpack"}), inputs={"program": quantized},
                      sources={}, out=out, work=work, jobs=2, project=work, values={"program": value})
    del value, ep, info, example
    step.run(ctx)
    assert not ctx._values  # taken, not loaded
    assert _files(out) == _files(A.lowered(A.quantized("8da4w", 32), "xnnpack"))


def test_shared_lowerings_with_other_options_are_other_artifacts():
    """The file side above is only the default lowering if no option-carrying one can take its place."""
    q = Path("q-8da4w-g32-e0")
    names = {A.lowered_name(q, "xnnpack", "a", {}), A.lowered_name(q, "xnnpack", "a", {"xnnpack_ops": "quantized_linears"}),
             A.lowered_name(q, "xnnpack", "a", {"etrecord": True}), A.lowered_name(q, "portable", "a", {}),
             A.lowered_name(q, "xnnpack", "b", {})}
    assert len(names) == 5
    assert A.lowered_name(q, "xnnpack", "a", {"xnnpack_ops": "all", "etrecord": True}) == \
        A.lowered_name(q, "xnnpack", "a", {"etrecord": True, "xnnpack_ops": "all"})  # keyword order does not matter
