"""The ``coreml`` step: an exported program -> a Core ML ``.mlpackage``.

Converts the ``torch.export`` program with ``coremltools.convert`` and saves
it reproducibly (two builds give byte-identical packages). Dynamic dimensions
of the export become ranged Core ML dimensions, or enumerated shapes where the
recipe lists them; an LLM's KV cache (mutable buffers) becomes Core ML states,
which needs ``minimum_deployment_target = "iOS18"`` (or ``"macOS15"``).

Recipe example::

    [targets.tinyconv-mlpackage]
    step = "coreml"
    inputs = { program = "tinyconv-export" }
    minimum_deployment_target = "iOS17"
    precision = "fp16"
    image_inputs = { image = { scale = 0.00392156862745098, color_layout = "RGB" } }

Artifact: ``model.mlpackage/`` and ``coreml.json`` (inputs, outputs and states
with shapes and types, deployment target, precision, size in bytes, notes).
Conversion runs on Linux; nothing here needs a Mac.
"""

from __future__ import annotations

from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

__all__ = ["CoreMLStep", "ImageInputParams"]

Target = Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"]
FORMAT_VERSION = 1


class ImageInputParams(BaseModel):
    """An image input: Core ML feeds ``pixel * scale + bias`` (per channel) to the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 1.0
    bias: list[float] = [0.0, 0.0, 0.0]
    color_layout: Literal["RGB", "BGR", "G"] = "RGB"


class CoreMLStep(Step):
    """exported-program -> mlpackage with coremltools (see the module docstring)."""

    name = "coreml"
    version = 1
    description = "Convert an exported program to a Core ML .mlpackage"
    inputs = {"program": Input(kinds=("exported-program",), doc="the torch.export program to convert")}
    output = "mlpackage"
    toolchain = ("coremltools", "torch")

    class Params(Params):
        #: Oldest OS the model must run on; states (KV cache) need iOS18/macOS15.
        minimum_deployment_target: Target = "iOS17"
        #: Compute precision of the ML program.
        precision: Literal["fp16", "fp32"] = "fp16"
        #: Where Core ML may run the model (recorded; it is a load-time option).
        compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = "all"
        #: Core ML input names in program order (default: the program's, then torch's).
        input_names: list[str] = []
        #: Core ML output names in program order (default: the program's, then coremltools').
        output_names: list[str] = []
        #: Inputs (by Core ML name) that take images instead of multi-arrays.
        image_inputs: dict[str, ImageInputParams] = {}
        #: Per input name, the shapes to enumerate (instead of ranged dynamic dims).
        enumerated_shapes: dict[str, list[list[int]]] = {}
        #: dtype of float multi-array inputs and outputs (None: coremltools' default).
        float_io: Literal["fp16", "fp32"] | None = None
        #: Written into the model's short description.
        model_description: str = ""
        #: Extra user-defined metadata (string -> string) stored in the model.
        metadata: dict[str, str] = {}

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        for key in ("input_names", "output_names"):
            names = getattr(params, key)
            if len(set(names)) != len(names):
                raise RecipeError(f"names must be unique, got {names}", key=key)
        for name, img in params.image_inputs.items():
            want = 1 if img.color_layout == "G" else 3
            if len(img.bias) != want:
                raise RecipeError(
                    f"image input {name!r}: color_layout {img.color_layout} needs {want} bias values, got {len(img.bias)}",
                    key="image_inputs",
                )
            if params.input_names and name not in params.input_names:
                raise RecipeError(f"image input {name!r} is not in input_names {params.input_names}", key="image_inputs")
            if name in params.enumerated_shapes:
                raise RecipeError(f"input {name!r}: enumerated shapes are for multi-array inputs", key="enumerated_shapes")
        for name, shapes in params.enumerated_shapes.items():
            if not shapes:
                raise RecipeError(f"input {name!r}: list at least one shape", key="enumerated_shapes")
            if any(not s or any(d < 1 for d in s) for s in shapes):
                raise RecipeError(f"input {name!r}: shapes need positive sizes, got {shapes}", key="enumerated_shapes")

    def run(self, ctx: StepContext) -> None:
        import coremltools as ct

        from modelbuild.ml.coreml.convert import ConversionError, ConvertOptions, ImageInput, convert_program
        from modelbuild.ml.coreml.describe import describe_spec
        from modelbuild.ml.coreml.save import deterministic_save, package_size, strip_debug_files
        from modelbuild.ml.program import load_program

        p = ctx.params
        ep, info, example = load_program(ctx.inputs["program"].path)
        opts = ConvertOptions(
            target=p.minimum_deployment_target,
            precision=p.precision,
            compute_units=p.compute_units,
            input_names=tuple(p.input_names or info.input_names),
            output_names=tuple(p.output_names or info.output_names),
            images={
                n: ImageInput(scale=i.scale, bias=tuple(i.bias), color_layout=i.color_layout)
                for n, i in p.image_inputs.items()
            },
            enumerated_shapes={n: [list(s) for s in v] for n, v in p.enumerated_shapes.items()},
            float_io=p.float_io,
        )
        ctx.log(f"converting a {info.kind} program to Core ML ({p.minimum_deployment_target}, {p.precision})")
        try:
            conv = convert_program(ep, info, example, opts)
        except ConversionError as exc:
            raise StepError(str(exc)) from exc

        model = conv.model
        if p.model_description:
            model.short_description = p.model_description
        for key, value in sorted(p.metadata.items()):
            model.user_defined_metadata[key] = value
        package = deterministic_save(model, ctx.out / "model.mlpackage")
        for name in strip_debug_files(package):
            conv.notes.append(f"removed {name} (ExecuTorch debug data, not part of the package)")

        # Describe what was written, read back the way a user would open it.
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        size = package_size(package)
        ctx.write_json(
            "coreml.json",
            {
                "format_version": FORMAT_VERSION,
                "package": "model.mlpackage",
                "minimum_deployment_target": p.minimum_deployment_target,
                "precision": p.precision,
                "compute_units": p.compute_units,
                "size_bytes": size,
                "program": {"kind": info.kind, "family": info.family, "dtype": info.dtype, "max_seq_len": info.max_seq_len},
                "coremltools": ct.__version__,
                "notes": conv.notes,
                **describe_spec(spec),
            },
        )
        for note in conv.notes:
            ctx.log(f"note: {note}")
        ctx.summary = f"{size / 1024:.1f} KiB mlpackage, {p.minimum_deployment_target}, {p.precision}"
        if conv.states:
            ctx.summary += f", {len(conv.states)} states"
