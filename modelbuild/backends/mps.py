"""MPS (Apple GPU): deprecated upstream in favour of Core ML; kept for old recipes."""

from __future__ import annotations

from modelbuild.step import Requirements

from .base import Backend, BackendUnavailable

__all__ = ["Mps"]


class Mps(Backend):
    name = "mps"
    description = "Apple GPU through Metal Performance Shaders (deprecated upstream)"
    delegates = ("MPSBackend",)
    runs_on = Requirements(platforms=("macos",))
    deprecated = "backend 'mps' is deprecated upstream; prefer backend = \"coreml\""

    def runtime_detail(self) -> str:
        return "the .pte delegates to mps, which only runs on Apple platforms"

    def partitioners(self, params, info, log):
        log.append(
            "warning: the MPS backend is deprecated upstream (ExecuTorch recommends Core ML on Apple "
            "hardware); its .pte runs only on macOS/iOS with the MPS delegate built in"
        )
        try:
            from executorch.backends.apple.mps.partition import MPSPartitioner
        except ImportError as err:
            raise BackendUnavailable(
                "the MPS backend is deprecated upstream and this ExecuTorch install does not ship it "
                f"(executorch.backends.apple.mps: {err}); use backend = \"coreml\""
            ) from None
        from executorch.exir.backend.compile_spec_schema import CompileSpec

        return [MPSPartitioner([CompileSpec("use_fp16", bytes([True]))])]
