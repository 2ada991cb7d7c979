"""ExecuTorch bundled programs: the ``.pte`` with test inputs and expected outputs inside.

A bundled program (``model.bpte``; ExecuTorch's ``BundledProgram``) carries
the program plus test cases: the reference's inputs and the outputs the
original model gave for them. An app or a device test harness loads it with
ExecuTorch's bundled-program loader, feeds each case, and checks the result
against the expected output with its own tolerance, on the device itself.

For an LLM the cases are the first prompt's tokens, one per call with its
position, and the reference's logits at each position; they share the KV
cache, so they run in order. For a generic module each case is one of the
reference's samples.

Example::

    info = write_bundled_program(pte, calls, out / "model.bpte")
    verify_bundled_program(out / "model.bpte", info["test_cases"], atol=1e-4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_bundled_program", "verify_bundled_program"]

_DTYPES = {5: "float16", 6: "float32", 7: "float64", 15: "bfloat16"}  # ExecuTorch ScalarType codes


def _output_meta(pte: Path, method: str) -> list[tuple[list[int], str]]:
    from executorch.runtime import Runtime

    from modelbuild.ml.validation.runners import _load_extension_ops

    _load_extension_ops()
    meta = Runtime.get().load_program(Path(pte)).metadata(method)
    outs = []
    for i in range(meta.num_outputs()):
        t = meta.output_tensor_meta(i)
        dtype = t.dtype()
        outs.append((list(t.sizes()), _DTYPES.get(int(getattr(dtype, "value", dtype)), "float32")))
    return outs


def write_bundled_program(pte: Path, calls: list, out: Path, *, method: str = "forward") -> dict[str, Any]:
    """Write ``out`` (a bundled program of ``pte`` with one test case per call); returns what it holds.

    ``calls`` are :class:`modelbuild.ml.profile.inputs.Call` (inputs and the
    reference's expected outputs); each expected output is shaped and typed
    as the program's output.
    """
    import torch
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    metas = _output_meta(pte, method)
    cases = []
    for call in calls:
        if len(call.expected) < len(metas):
            raise ValueError(f"the reference has {len(call.expected)} outputs for {call.label}; "
                             f"the program's {method} returns {len(metas)}")
        expected = []
        for array, (shape, dtype) in zip(call.expected, metas):
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if t.numel() != int(np.prod(shape)):
                raise ValueError(f"expected output of {call.label} has {t.numel()} values, the program's "
                                 f"output {shape}")
            expected.append(t.reshape(shape).to(getattr(torch, dtype)).contiguous())
        cases.append(MethodTestCase(inputs=[x.contiguous() for x in call.inputs], expected_outputs=expected))
    bundle = BundledProgram(None, pte_file_path=str(pte),
                            method_test_suites=[MethodTestSuite(method_name=method, test_cases=cases)])
    data = serialize_from_bundled_program_to_flatbuffer(bundle)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return {"file": out.name, "method": method, "test_cases": len(cases), "bytes": len(data),
            "cases": [c.label for c in calls]}


def verify_bundled_program(bpte: Path, cases: int, *, rtol: float = 1e-3, atol: float = 1e-3,
                           method: str = "forward") -> int:
    """Load ``bpte`` with the runtime's bundled-program loader and check its first ``cases`` cases, in order.

    The runtime raises (``RuntimeError``) when an output is off by more than
    ``rtol``/``atol``; returns the number of cases verified.
    """
    from executorch.extension.pybindings import portable_lib

    from modelbuild.ml.validation.runners import _load_extension_ops

    _load_extension_ops()
    bundle = portable_lib._load_bundled_program_from_buffer(Path(bpte).read_bytes())
    for index in range(cases):  # each call loads case ``index``'s inputs, runs the method and compares
        bundle.verify_result_with_bundled_expected_output(method, index, rtol, atol)
    return cases
