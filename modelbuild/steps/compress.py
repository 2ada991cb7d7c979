"""The ``compress`` step: ``.mlpackage`` -> smaller ``.mlpackage`` (coremltools.optimize).

Methods (``method``): ``palettize`` (``nbits`` 1-8 lookup tables, k-means or
uniform, per tensor or per grouped channel with ``group_size``), ``quantize``
(int8/int4 linear weights per tensor, per channel or per block of
``group_size``), ``prune`` (magnitude pruning to ``target_sparsity``), and
``prune+palettize`` / ``prune+quantize`` (joint compression). Only weights with
more than ``weight_threshold`` elements are compressed.

Per-grouped-channel palettization, per-block or int4 quantization and joint
compression need a model converted for iOS18/macOS15: the step fails with that
reason otherwise.

Recipe example::

    [targets.tinyconv-mlpackage-pal4]
    step = "compress"
    inputs = { model = "tinyconv-mlpackage" }
    method = "palettize"
    nbits = 4

Artifact: ``model.mlpackage/`` (reproducible, like the coreml step's) and
``compress.json`` (the method, sizes before and after, the ratio, and how many
weights each compressed-weight op kind holds).
"""

from __future__ import annotations

from typing import Literal, Mapping

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Input, Params, Step, StepContext

__all__ = ["CompressStep"]

FORMAT_VERSION = 1


class CompressStep(Step):
    """mlpackage -> compressed mlpackage (see the module docstring)."""

    name = "compress"
    version = 1
    description = "Compress a Core ML model's weights (palettize, quantize, prune)"
    inputs = {"model": Input(kinds=("mlpackage",), doc="the .mlpackage to compress")}
    output = "mlpackage"
    # scikit-learn runs the k-means of palettization: its version can move centroids.
    toolchain = ("coremltools", "scikit-learn", "numpy")

    class Params(Params):
        method: Literal["palettize", "quantize", "prune", "prune+palettize", "prune+quantize"]
        #: Bits per weight: palettize 1, 2, 3, 4, 6, 8; quantize 4 or 8.
        nbits: int = 4
        #: How palettization builds its lookup table.
        palettize_mode: Literal["kmeans", "uniform"] = "kmeans"
        #: Quantization: symmetric (no zero point) or affine.
        symmetric: bool = True
        #: Default: per_tensor for palettize, per_channel for quantize.
        granularity: Literal["per_tensor", "per_channel", "per_grouped_channel", "per_block"] | None = None
        #: Channels per lookup table (per_grouped_channel) or block size (per_block).
        group_size: int = 32
        #: Fraction of weights set to zero by pruning.
        target_sparsity: float = 0.5
        #: Weights with at most this many elements stay as they are.
        weight_threshold: int = 2048

    def _spec(self, params: Params):
        from modelbuild.ml.coreml.compress import CompressSpec

        return CompressSpec(
            method=params.method,
            nbits=params.nbits,
            palettize_mode=params.palettize_mode,
            symmetric=params.symmetric,
            granularity=params.granularity,
            group_size=params.group_size,
            target_sparsity=params.target_sparsity,
            weight_threshold=params.weight_threshold,
        )

    @staticmethod
    def _coreml_record(ctx: StepContext, spec, size: int, described: dict) -> dict:
        """The input's coreml.json, updated: mlpackage artifacts always carry one."""
        import json

        src = ctx.inputs["model"].file("coreml.json")
        record = json.loads(src.read_text()) if src.is_file() else {"format_version": 1, "package": "model.mlpackage"}
        record.update(described)
        record["size_bytes"] = size
        record["compression"] = spec.as_record()
        return record

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        # The compress library module imports coremltools lazily, so this stays light.
        from modelbuild.ml.coreml.compress import validate_spec

        problem = validate_spec(self._spec(params))
        if problem is not None:
            raise RecipeError(problem[1], key=problem[0])

    def run(self, ctx: StepContext) -> None:
        import coremltools as ct

        from modelbuild.ml.coreml.compress import compress_model, compression_ops
        from modelbuild.ml.coreml.describe import describe_spec
        from modelbuild.ml.coreml.save import deterministic_save, package_size, strip_debug_files

        spec = self._spec(ctx.params)
        src = ctx.inputs["model"].file("model.mlpackage")
        if not src.is_dir():
            raise StepError(f"input {ctx.inputs['model'].target} has no model.mlpackage")
        before = package_size(src)
        model = ct.models.MLModel(str(src), skip_model_load=True)
        ctx.log(f"compressing {before} bytes with {spec.as_record()}")
        try:
            small = compress_model(model, spec)
        except ValueError as exc:
            # coremltools says which deployment target a feature needs; pass it on.
            raise StepError(str(exc).strip().splitlines()[0]) from exc
        package = deterministic_save(small, ctx.out / "model.mlpackage")
        strip_debug_files(package)

        out_spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        ops = compression_ops(out_spec)
        if not ops:
            raise StepError(
                f"no weight was compressed: none has more than weight_threshold={spec.weight_threshold} elements"
            )
        after = package_size(package)
        described = describe_spec(out_spec)
        ctx.write_json("coreml.json", self._coreml_record(ctx, spec, after, described))
        ctx.write_json(
            "compress.json",
            {
                "format_version": FORMAT_VERSION,
                "package": "model.mlpackage",
                "compression": spec.as_record(),
                "size_before_bytes": before,
                "size_after_bytes": after,
                "ratio": round(after / before, 4),
                "compressed_ops": ops,
                **described,
            },
        )
        ctx.summary = f"{before / 1024:.1f} -> {after / 1024:.1f} KiB ({after / before:.0%}), {spec.method}"
