"""Convert a ``torch.export`` program to a Core ML ML program (``ct.convert``).

Input shapes come from the exported program itself: each user input's
example shape, with every symbolic dimension turned into a ``ct.RangeDim``
bounded by the program's range constraints (so dynamic shapes declared at
export carry over), or into enumerated shapes when the recipe lists them.
Mutable buffers (an LLM's KV cache) become Core ML states, which needs
iOS 18 / macOS 15.

Example::

    ep, info, example = load_program(artifact.path)
    result = convert_program(ep, info, example, ConvertOptions(target="iOS17"))
    deterministic_save(result.model, out / "model.mlpackage")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConvertOptions", "ImageInput", "Conversion", "convert_program", "TARGETS", "STATE_TARGETS", "ConversionError"]

#: Deployment targets the step accepts (names as in ``coremltools.target``).
TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
#: Targets whose Core ML supports states (stateful models).
STATE_TARGETS = ("iOS18", "macOS15")

# coremltools encodes an unbounded RangeDim as upper_bound=-1; torch.export's
# "no upper bound" is int_oo or a huge sentinel.
_UNBOUNDED = 2**31 - 1


class ConversionError(Exception):
    """A conversion failed for a reason the recipe author can act on."""


@dataclass(frozen=True)
class ImageInput:
    """Make a 4-D float input an image: ``pixel * scale + bias`` per channel."""

    scale: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)
    color_layout: str = "RGB"  # RGB | BGR | G


@dataclass(frozen=True)
class ConvertOptions:
    """What ``convert_program`` needs beyond the program (see the coreml step's Params)."""

    target: str = "iOS17"
    precision: str = "fp16"  # fp16 | fp32
    compute_units: str = "all"  # all | cpu_only | cpu_and_gpu | cpu_and_ne
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    images: dict[str, ImageInput] = field(default_factory=dict)
    enumerated_shapes: dict[str, list[list[int]]] = field(default_factory=dict)
    float_io: str | None = None  # None = coremltools' choice; fp16 | fp32


@dataclass
class Conversion:
    """The converted model and what happened on the way (for coreml.json)."""

    model: Any
    notes: list[str]
    states: list[str]


def _user_input_nodes(ep):
    from torch.export.graph_signature import InputKind

    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    return [nodes[name] for name in names]


def _dim_range(ep, size) -> tuple[int, int] | None:
    """(lower, upper) of a symbolic size from the program's range constraints, None if static."""
    import torch

    if not isinstance(size, torch.SymInt):
        return None
    expr = size.node.expr
    vr = ep.range_constraints.get(expr)
    lower = int(vr.lower) if vr is not None else 1
    upper = vr.upper if vr is not None else None
    try:
        upper = int(upper)
    except (TypeError, ValueError, OverflowError):
        upper = -1
    if upper >= _UNBOUNDED:
        upper = -1
    return max(lower, 1), upper


def _input_types(ep, example_leaves, opts: ConvertOptions, notes: list[str]):
    import coremltools as ct
    import numpy as np
    import torch

    nodes = _user_input_nodes(ep)
    if len(nodes) != len(example_leaves):
        raise ConversionError(f"program has {len(nodes)} inputs but {len(example_leaves)} example inputs")
    names = list(opts.input_names) or [n.name for n in nodes]
    if len(names) != len(nodes):
        raise ConversionError(f"input_names lists {len(names)} names but the program has {len(nodes)} inputs")
    unknown = (set(opts.images) | set(opts.enumerated_shapes)) - set(names)
    if unknown:
        raise ConversionError(f"no input named {sorted(unknown)[0]!r}; inputs are {names}")

    types = []
    for name, node, example in zip(names, nodes, example_leaves):
        val = node.meta.get("val")
        sizes = list(val.shape) if val is not None else list(example.shape)
        default = list(example.shape)
        dims: list[Any] = []
        for i, size in enumerate(sizes):
            rng = _dim_range(ep, size)
            if rng is None:
                dims.append(int(size))
            else:
                lo, hi = rng
                dims.append(ct.RangeDim(lower_bound=lo, upper_bound=hi, default=default[i]))
                notes.append(f"input {name} dim {i} is dynamic: {lo}..{'inf' if hi < 0 else hi}")
        shape: Any = ct.Shape(dims) if any(not isinstance(d, int) for d in dims) else tuple(dims)
        if name in opts.enumerated_shapes:
            shape = _enumerated(name, dims, default, opts.enumerated_shapes[name])
            notes.append(f"input {name} uses enumerated shapes {opts.enumerated_shapes[name]}")

        if name in opts.images:
            img = opts.images[name]
            if len(default) != 4 or example.dtype not in (torch.float32, torch.float16):
                raise ConversionError(f"image input {name} must be a 4-D float NCHW tensor, got {tuple(default)} {example.dtype}")
            channels = 1 if img.color_layout == "G" else 3
            if default[1] != channels:
                raise ConversionError(f"image input {name} has {default[1]} channels; color_layout {img.color_layout} needs {channels}")
            layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "G": ct.colorlayout.GRAYSCALE}[img.color_layout]
            bias = list(img.bias) if channels == 3 else float(img.bias[0])
            types.append(ct.ImageType(name=name, shape=shape, scale=img.scale, bias=bias, color_layout=layout))
            continue

        dtype = None
        if example.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
            # Core ML has no int64 tensors; token ids and positions fit int32.
            dtype = np.int32
            if example.dtype == torch.int64:
                notes.append(f"input {name}: int64 in torch, int32 in Core ML")
        elif opts.float_io is not None:
            dtype = np.float16 if opts.float_io == "fp16" else np.float32
        types.append(ct.TensorType(name=name, shape=shape, dtype=dtype))
    return types


def _enumerated(name: str, dims: list, default: list[int], shapes: list[list[int]]):
    import coremltools as ct

    for shape in shapes:
        if len(shape) != len(dims):
            raise ConversionError(f"enumerated shape {shape} of input {name} has rank {len(shape)}, expected {len(dims)}")
        for i, (size, dim) in enumerate(zip(shape, dims)):
            if isinstance(dim, int):
                if size != dim:
                    raise ConversionError(f"enumerated shape {shape} of input {name}: dim {i} is static ({dim}) in the export")
            elif size < dim.lower_bound or (dim.upper_bound > 0 and size > dim.upper_bound):
                raise ConversionError(
                    f"enumerated shape {shape} of input {name}: dim {i} outside the exported range "
                    f"{dim.lower_bound}..{dim.upper_bound}"
                )
    as_tuples = [tuple(s) for s in shapes]
    pick = tuple(default) if tuple(default) in as_tuples else as_tuples[0]
    return ct.EnumeratedShapes(shapes=as_tuples, default=pick)


def _output_types(ep, opts: ConvertOptions):
    import coremltools as ct
    import numpy as np
    from torch.export.graph_signature import OutputKind

    n_out = sum(1 for s in ep.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT)
    if not opts.output_names:
        return None
    if len(opts.output_names) != n_out:
        raise ConversionError(f"output_names lists {len(opts.output_names)} names but the program has {n_out} outputs")
    dtype = None
    if opts.float_io is not None:
        dtype = np.float16 if opts.float_io == "fp16" else np.float32
    return [ct.TensorType(name=n, dtype=dtype) for n in opts.output_names]


def convert_program(ep, info, example_inputs: tuple, opts: ConvertOptions) -> Conversion:
    """Convert ``ep`` (with its ``ProgramInfo`` and example inputs) to an ``MLModel``.

    Raises :class:`ConversionError` for problems the recipe can fix.
    """
    import coremltools as ct
    import torch.utils._pytree as pytree

    notes: list[str] = []
    if getattr(info, "use_sdpa_with_kv_cache", False):
        raise ConversionError(
            "the program uses ExecuTorch's custom sdpa_with_kv_cache op, which Core ML cannot convert; "
            "export it with use_sdpa_with_kv_cache = false for Core ML"
        )
    mutated = dict(ep.graph_signature.buffers_to_mutate)
    if mutated and opts.target not in STATE_TARGETS:
        raise ConversionError(
            f"the program mutates buffers ({len(mutated)}, e.g. a KV cache), which needs Core ML states: "
            f"set minimum_deployment_target to one of {list(STATE_TARGETS)} or export without use_kv_cache"
        )

    from modelbuild.ml.coreml.ops import register_extra_ops

    register_extra_ops()
    # coremltools wants inference-IR ATen; {} decomposes only what functionalization needs.
    ep = ep.run_decompositions({})
    leaves = [x for x in pytree.tree_leaves(example_inputs)]
    inputs = _input_types(ep, leaves, opts, notes)
    outputs = _output_types(ep, opts)
    precision = ct.precision.FLOAT16 if opts.precision == "fp16" else ct.precision.FLOAT32
    units = {
        "all": ct.ComputeUnit.ALL,
        "cpu_only": ct.ComputeUnit.CPU_ONLY,
        "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
        "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
    }[opts.compute_units]
    try:
        model = ct.convert(
            ep,
            inputs=inputs,
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, opts.target),
            compute_precision=precision,
            compute_units=units,
            skip_model_load=True,
        )
    except (ValueError, NotImplementedError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"coremltools could not convert the program: {first}") from exc

    spec = model.get_spec()
    states = [s.name for s in spec.description.state]
    if states:
        notes.append(f"{len(states)} mutable buffers became Core ML states (fp16)")
    if any(n.op == "call_function" and "index_copy" in str(n.target) for n in ep.graph.nodes):
        notes.append("index_copy (the dynamic KV-cache update) converted by modelbuild as MIL scatter(mode=update)")
    return Conversion(model=model, notes=notes, states=states)
