"""The backend interface: what the ``lower`` step needs to know about one ExecuTorch backend.

A backend plugin is a :class:`Backend` subclass registered under the entry
point group ``modelbuild.backends``; the built-in ones (xnnpack, coreml, mps,
portable, vulkan) register the same way, from modelbuild's own
``pyproject.toml``. Like a step module, a backend module imports only light
things at module level: the core reads its name, parameters and requirements
to validate and plan a recipe without torch; ``partitioners``, ``passes`` and
``source_transforms`` import ExecuTorch inside.

A complete example (a backend delegating to XNNPACK without the dynamically
quantized partitioner, with one recipe key of its own)::

    from typing import Literal
    from pydantic import Field
    from modelbuild.backends import Backend, BackendParams

    class LeanXnnpack(Backend):
        name = "lean-xnnpack"
        description = "XNNPACK, one partitioner"
        delegates = ("XnnpackBackend",)

        class Params(BackendParams):
            lean_per_op: bool = Field(False, description="one partition per op")

        def partitioners(self, params, info, log):
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            return [XnnpackPartitioner(per_op_mode=params.lean_per_op)]

    # pyproject.toml of the plugin's package:
    # [project.entry-points."modelbuild.backends"]
    # lean-xnnpack = "mypkg.backends:LeanXnnpack"

A recipe then writes ``backend = "lean-xnnpack"`` and ``lean_per_op = true``
in a ``lower`` target; ``lean_per_op`` on a target of another backend is a
recipe error naming the key.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, ContextManager, Mapping

from modelbuild.step import Params, Requirements, unmet_requirement

__all__ = ["Backend", "BackendParams", "BackendUnavailable"]


class BackendParams(Params):
    """Base of a backend's recipe keys.

    They sit flat in the ``lower`` target next to ``backend``, so name them
    after the backend (``vulkan_force_fp16``): two backends may declare the
    same key only with the same type and default. Every key needs a default
    (a target of another backend leaves it out).
    """


class BackendUnavailable(RuntimeError):
    """The installed ExecuTorch cannot lower to the requested backend (a step error)."""


class Backend:
    """One ExecuTorch backend, as the ``lower`` step uses it. See the module docstring."""

    #: The name recipes use in ``backend = "..."``.
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The backend's own recipe keys, with defaults and validation.
    Params: ClassVar[type[BackendParams]] = BackendParams
    #: The delegate ids its partitions carry in the lowered program (``"XnnpackBackend"``).
    delegates: ClassVar[tuple[str, ...]] = ()
    #: What a host needs to *run* a program delegated to this backend (validate, profile);
    #: lowering itself runs anywhere ExecuTorch does.
    runs_on: ClassVar[Requirements] = Requirements()
    #: Distributions whose versions enter the lower step's action key.
    toolchain: ClassVar[tuple[str, ...]] = ()
    #: Non-empty: the backend is deprecated upstream; this text is logged as a warning.
    deprecated: ClassVar[str] = ""
    #: The backend takes static shapes only: an LLM exported for it (the export step's
    #: ``backend``) needs ``enable_dynamic_shape = false``, as export_llm demands.
    static_shapes: ClassVar[bool] = False

    # -- recipe time (no torch) --------------------------------------------------

    def check(self, params: BackendParams) -> None:
        """Reject parameter combinations: raise ``RecipeError(..., key=name)``."""

    def check_program(self, params: BackendParams, info: Any) -> list[str]:
        """Judge the exported program (its ``ProgramInfo``) before its weights load.

        Raise ``StepError`` for a program this backend cannot take; return
        notes for the step log.
        """
        return []

    def runtime_unmet(self) -> str | None:
        """What this host lacks to run a program delegated to this backend ("macOS"), or None."""
        return unmet_requirement(self.runs_on)

    def runtime_detail(self) -> str:
        """Why, for people: the sentence after "needs ...". """
        return f"the .pte delegates to {self.name}"

    # -- lowering (imports ExecuTorch inside) ----------------------------------------

    def partitioners(self, params: BackendParams, info: Any, log: list[str]) -> list:
        """The partitioners for ``to_edge_transform_and_lower``, in order (empty: delegate nothing).

        ``info``: the program's ``ProgramInfo`` (dtype, dynamic shapes, ...); ``log``: lines for the step log.
        """
        return []

    def prepare(self, ep: Any, params: BackendParams) -> None:
        """Adjust the exported program in place before lowering (values unchanged)."""

    def lowering(self, params: BackendParams) -> ContextManager:
        """A context around the whole lowering (e.g. deterministic delegate blobs).

        It may yield a list that it fills, by the end of the block, with lines for the step log.
        """
        return contextlib.nullcontext()

    def passes(self, params: BackendParams) -> list:
        """Edge passes after partitioning. Default, as export_llm: linears left on the
        CPU run as ``op_linear`` rather than transpose + mm."""
        from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass

        return [ConvertToLinearPass()]

    def source_transforms(self, options: Mapping[str, Any]) -> list[Callable]:
        """Rewrites of the eager LLM before ``torch.export``, as export_llm applies them
        with ``backend.<name>.enabled`` (the export step's ``backend``); default none.

        ``options``: the export step's ``backend_options`` table, validated by :meth:`export_options`.
        """
        return []

    def load_ops(self) -> None:
        """Register the custom ops :meth:`source_transforms` put into a program, so that a
        saved program holding them can be loaded again (called by ``load_program``)."""

    def export_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the export step's ``backend_options`` and fill in defaults
        (raise ``RecipeError`` with ``key``); default: none accepted."""
        from modelbuild.errors import RecipeError

        for key in options:
            raise RecipeError(f"backend {self.name!r} takes no backend_options (got {key!r})", key="backend_options")
        return {}

    def notes(self, params: BackendParams, info: Any, partition: Mapping[str, Any]) -> str:
        """A warning appended to the step summary after lowering (e.g. ops that fell back to the CPU)."""
        return ""
