"""XNNPACK (CPU, Android and iOS): the default backend of ``lower``."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Literal

from pydantic import Field

from .base import Backend, BackendParams, BackendUnavailable

__all__ = ["Xnnpack"]


class Xnnpack(Backend):
    name = "xnnpack"
    description = "XNNPACK CPU kernels (Android, iOS, Linux, macOS)"
    delegates = ("XnnpackBackend",)

    class Params(BackendParams):
        xnnpack_ops: Literal["all", "quantized_linears"] = Field(
            "all",
            description="XNNPACK: ``all`` delegates every op XNNPACK takes, dynamically quantized linears first "
            "(export_llm -X --xnnpack-extended-ops); ``quantized_linears`` only the dynamically quantized "
            "linears (export_llm -X).",
        )
        xnnpack_bf16: bool = Field(
            False,
            description="XNNPACK: delegate bf16 ops too (export_llm backend.xnnpack.enable_bf16). Without it every "
            "op of a bf16 program, quantized linears included, stays on the portable path. The device needs "
            "XNNPACK's bf16 kernels.",
        )

    def partitioners(self, params, info, log):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackDynamicallyQuantizedPartitioner,
            XnnpackPartitioner,
        )

        # export_llm's order: dynamically quantized linears first (-X), then the rest
        # (--xnnpack-extended-ops). enable_bf16 exists from ExecuTorch 1.5 on; pass it only when asked.
        extra = {"enable_bf16": True} if params.xnnpack_bf16 else {}
        try:
            partitioners = [XnnpackDynamicallyQuantizedPartitioner(**extra)]
            if params.xnnpack_ops == "all":
                partitioners.append(XnnpackPartitioner(**extra))
        except TypeError as err:
            raise BackendUnavailable(
                f"xnnpack_bf16 needs an ExecuTorch whose XNNPACK partitioner takes enable_bf16 ({err})"
            ) from None
        return partitioners

    def lowering(self, params):
        # MODELBUILD_XNNPACK_SKIP_RETRACES=0 runs every re-trace (for comparisons: the bytes are the same).
        if os.environ.get("MODELBUILD_XNNPACK_SKIP_RETRACES", "1") == "0":
            return contextlib.nullcontext()
        return _skipping_idle_retraces()

    def notes(self, params, info, partition):
        left = partition["portable"].get("aten.linear.default", 0)
        if info.quantization and info.dtype == "bf16" and left and not params.xnnpack_bf16:
            return (
                f"warning: {left} linears of this quantized bf16 program run on the portable path "
                "(set xnnpack_bf16 = true to delegate them)"
            )
        return ""


@contextlib.contextmanager
def _skipping_idle_retraces() -> Iterator[list[str]]:
    """XNNPACK's preprocess without its idle re-traces (:mod:`modelbuild.ml.retrace`); one log line."""
    from modelbuild.ml.retrace import skip_idle_retraces

    lines: list[str] = []
    with skip_idle_retraces() as counts:
        yield lines
    total = counts["skipped"] + counts["ran"]
    if total:
        lines.append(f"XNNPACK passes: {counts['skipped']} of {total} partition re-traces skipped "
                     "(the pass had changed nothing)")
