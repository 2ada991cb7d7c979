"""Post-training weight compression of a Core ML model (``coremltools.optimize.coreml``).

Methods:

- ``palettize``: k-means or uniform lookup tables of ``nbits`` (1, 2, 3, 4, 6, 8),
  per tensor or per grouped channel (``group_size`` channels share a table);
- ``quantize``: linear int8 / int4 weights (symmetric or affine), per tensor,
  per channel or per block (``group_size`` input channels per block);
- ``prune``: magnitude pruning to ``target_sparsity`` (sparse storage);
- ``prune+palettize`` / ``prune+quantize``: pruning, then the second method
  applied jointly to the non-zero values (needs iOS 18 / macOS 15).

Per-grouped-channel palettization, int4 and per-block quantization and joint
compression are iOS 18 / macOS 15 features: the model's specification version
is raised by coremltools accordingly, and ``compress.json`` records the result.

Example::

    spec = CompressSpec(method="palettize", nbits=4)
    small = compress_model(mlmodel, spec)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["CompressSpec", "compress_model", "compression_ops", "METHODS", "DEFAULT_GRANULARITY", "validate_spec"]

METHODS = ("palettize", "quantize", "prune", "prune+palettize", "prune+quantize")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
QUANT_BITS = (4, 8)
PALETTE_GRANULARITY = ("per_tensor", "per_grouped_channel")
QUANT_GRANULARITY = ("per_tensor", "per_channel", "per_block")
DEFAULT_GRANULARITY = {"palettize": "per_tensor", "quantize": "per_channel"}

# The MIL ops that hold compressed weights (their count says what was compressed).
_COMPRESSED_OPS = (
    "constexpr_lut_to_dense",
    "constexpr_lut_to_sparse",
    "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale",
    "constexpr_sparse_to_dense",
    "constexpr_sparse_blockwise_shift_scale",
)


@dataclass(frozen=True)
class CompressSpec:
    """One compression recipe; fields not used by ``method`` are ignored."""

    method: str
    nbits: int = 4
    palettize_mode: str = "kmeans"  # kmeans | uniform
    symmetric: bool = True
    granularity: str | None = None  # None: DEFAULT_GRANULARITY of the method
    group_size: int = 32
    target_sparsity: float = 0.5
    weight_threshold: int = 2048

    @property
    def second(self) -> str | None:
        """The palettize/quantize part of the method, if any."""
        return self.method.split("+")[-1] if self.method != "prune" else None

    def effective_granularity(self) -> str | None:
        second = self.second
        return None if second is None else (self.granularity or DEFAULT_GRANULARITY[second])

    def as_record(self) -> dict[str, Any]:
        """The parameters that matter for ``method``, for compress.json."""
        rec: dict[str, Any] = {"method": self.method, "weight_threshold": self.weight_threshold}
        if self.method.startswith("prune"):
            rec["target_sparsity"] = self.target_sparsity
        second = self.second
        if second is not None:
            rec.update(nbits=self.nbits, granularity=self.effective_granularity())
            if self.effective_granularity() in ("per_grouped_channel", "per_block"):
                rec["group_size"] = self.group_size
            if second == "palettize":
                rec["mode"] = self.palettize_mode
            else:
                rec["symmetric"] = self.symmetric
        return rec


def validate_spec(spec: CompressSpec) -> tuple[str, str] | None:
    """``(field, message)`` of the first problem with ``spec``, or None."""
    if spec.method not in METHODS:
        return "method", f"unknown method {spec.method!r}; choose one of {list(METHODS)}"
    second = spec.second
    if spec.method.startswith("prune") and not 0.0 < spec.target_sparsity < 1.0:
        return "target_sparsity", f"must be between 0 and 1 (exclusive), got {spec.target_sparsity}"
    if second == "palettize":
        if spec.nbits not in PALETTE_BITS:
            return "nbits", f"palettization takes nbits in {list(PALETTE_BITS)}, got {spec.nbits}"
        if spec.effective_granularity() not in PALETTE_GRANULARITY:
            return "granularity", f"palettization granularity is one of {list(PALETTE_GRANULARITY)}"
    if second == "quantize":
        if spec.nbits not in QUANT_BITS:
            return "nbits", f"linear quantization takes nbits in {list(QUANT_BITS)}, got {spec.nbits}"
        if spec.effective_granularity() not in QUANT_GRANULARITY:
            return "granularity", f"quantization granularity is one of {list(QUANT_GRANULARITY)}"
    if spec.group_size < 1:
        return "group_size", f"must be positive, got {spec.group_size}"
    if spec.weight_threshold < 0:
        return "weight_threshold", f"must be >= 0, got {spec.weight_threshold}"
    return None


def _op_config(spec: CompressSpec, part: str):
    import coremltools.optimize as cto

    if part == "prune":
        return cto.coreml.OpMagnitudePrunerConfig(
            target_sparsity=float(spec.target_sparsity), weight_threshold=spec.weight_threshold
        )
    gran = spec.effective_granularity()
    if part == "palettize":
        return cto.coreml.OpPalettizerConfig(
            mode=spec.palettize_mode,
            nbits=spec.nbits,
            granularity=gran,
            group_size=spec.group_size,
            # With num_kmeans_workers > 1 the worker pool hung in our tests
            # (workers idle, no progress), so clustering stays in-process.
            num_kmeans_workers=1,
            weight_threshold=spec.weight_threshold,
        )
    return cto.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric" if spec.symmetric else "linear",
        dtype="int8" if spec.nbits == 8 else "int4",
        granularity=gran,
        block_size=spec.group_size,
        weight_threshold=spec.weight_threshold,
    )


def compress_model(mlmodel, spec: CompressSpec):
    """Return a compressed copy of ``mlmodel`` (an ML program ``MLModel``)."""
    import coremltools.optimize as cto

    problem = validate_spec(spec)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    model = mlmodel
    if spec.method.startswith("prune"):
        config = cto.coreml.OptimizationConfig(global_config=_op_config(spec, "prune"))
        model = cto.coreml.prune_weights(model, config=config)
    second = spec.second
    if second is not None:
        # After pruning, compress the surviving values and keep the sparsity mask
        # (joint compression); otherwise the pruned zeros would be re-densified.
        joint = spec.method.startswith("prune")
        config = cto.coreml.OptimizationConfig(global_config=_op_config(spec, second))
        if second == "palettize":
            model = cto.coreml.palettize_weights(model, config=config, joint_compression=joint)
        else:
            model = cto.coreml.linear_quantize_weights(model, config=config, joint_compression=joint)
    return model


def compression_ops(spec) -> dict[str, int]:
    """How many ops of each compressed-weight kind the ML program ``spec`` holds."""
    counts: Counter[str] = Counter()
    program = spec.mlProgram
    for function in program.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type in _COMPRESSED_OPS:
                    counts[op.type] += 1
    return dict(sorted(counts.items()))

