"""Vulkan (Android GPU) through ExecuTorch's Vulkan delegate.

Lowering runs on any host (the delegate serializes a Vulkan graph, no GPU
needed). Running the ``.pte`` needs an ExecuTorch runtime built with the
Vulkan delegate (``EXECUTORCH_BUILD_VULKAN``) on a device with a Vulkan GPU,
typically an Android phone; the pip wheel's runtime has none, so validating
such a program here gets the distinct status "needs a Vulkan runtime".

As export_llm's ``-V``: fp32 programs only, and the partitioner is told
whether the program has dynamic shapes.
"""

from __future__ import annotations

from pydantic import Field

from modelbuild.errors import StepError

from .base import Backend, BackendParams

__all__ = ["Vulkan"]

#: The delegate id in a lowered program, and the name the runtime registers it under.
DELEGATE = "VulkanBackend"


class Vulkan(Backend):
    name = "vulkan"
    description = "Android GPU through Vulkan (runs where the ExecuTorch runtime has the Vulkan delegate)"
    delegates = (DELEGATE,)

    class Params(BackendParams):
        vulkan_force_fp16: bool = Field(
            False,
            description="Vulkan: compute in fp16 on the GPU (export_llm backend.vulkan.force_fp16).",
        )

    def check_program(self, params, info) -> list[str]:
        if info.dtype != "fp32":
            # As export_llm's get_vulkan_partitioner.
            raise StepError(f"the Vulkan backend lowers fp32 programs only (this one is {info.dtype}); "
                            "export with dtype = \"fp32\" (vulkan_force_fp16 = true computes in fp16 on the GPU)")
        return []

    def partitioners(self, params, info, log):
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        dynamic = bool(getattr(info, "enable_dynamic_shape", False) or getattr(info, "dynamic_shapes", None))
        return [VulkanPartitioner({"require_dynamic_shapes": dynamic, "force_fp16": params.vulkan_force_fp16})]

    def runtime_unmet(self) -> str | None:
        """The runtime's delegate registry says whether this host's ExecuTorch can run it."""
        from executorch.runtime import Runtime

        names = Runtime.get().backend_registry.registered_backend_names
        return None if DELEGATE in names else "a Vulkan runtime"

    def runtime_detail(self) -> str:
        return ("the .pte delegates to Vulkan, and this host's ExecuTorch runtime has no Vulkan delegate "
                "(run it on an Android device, or a host whose ExecuTorch is built with EXECUTORCH_BUILD_VULKAN)")
