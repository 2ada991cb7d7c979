"""Describe a Core ML spec as plain JSON: inputs, outputs, states, versions.

Used for ``coreml.json`` (the coreml step) and ``compress.json``, and by tests
to check what a package holds without loading it (no prediction on Linux).

Example::

    spec = coremltools.models.MLModel(path, skip_model_load=True).get_spec()
    describe_spec(spec)["inputs"][0]
    # {'name': 'image', 'type': 'image', 'color_layout': 'RGB', 'shape': [1, 3, 32, 32], ...}
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_spec", "deployment_target_of"]

# specificationVersion -> the earliest OS that reads it (coremltools' table).
_SPEC_TARGETS = {7: "iOS16/macOS13", 8: "iOS17/macOS14", 9: "iOS18/macOS15"}


def deployment_target_of(spec_version: int) -> str:
    """The earliest OS pair that opens a model of ``spec_version``."""
    return _SPEC_TARGETS.get(spec_version, f"specification version {spec_version}")


def _array_dtype(code: int) -> str:
    from coremltools.proto import FeatureTypes_pb2 as ft

    names = {
        ft.ArrayFeatureType.FLOAT32: "fp32",
        ft.ArrayFeatureType.FLOAT16: "fp16",
        ft.ArrayFeatureType.DOUBLE: "fp64",
        ft.ArrayFeatureType.INT32: "int32",
    }
    int8 = getattr(ft.ArrayFeatureType, "INT8", None)
    if int8 is not None:
        names[int8] = "int8"
    return names.get(code, str(code))


def _array(arr) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "multiArray", "dtype": _array_dtype(arr.dataType), "shape": list(arr.shape)}
    which = arr.WhichOneof("ShapeFlexibility")
    if which == "shapeRange":
        out["shape_range"] = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    elif which == "enumeratedShapes":
        out["enumerated_shapes"] = [list(s.shape) for s in arr.enumeratedShapes.shapes]
    return out


def _feature(feature) -> dict[str, Any]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    kind = feature.type.WhichOneof("Type")
    out: dict[str, Any] = {"name": feature.name}
    if kind == "multiArrayType":
        out.update(_array(feature.type.multiArrayType))
    elif kind == "imageType":
        img = feature.type.imageType
        out.update(
            type="image",
            color_layout=ft.ImageFeatureType.ColorSpace.Name(img.colorSpace),
            shape=[img.height, img.width],
        )
        if img.WhichOneof("SizeFlexibility") == "imageSizeRange":
            r = img.imageSizeRange
            out["size_range"] = {
                "height": [r.heightRange.lowerBound, r.heightRange.upperBound],
                "width": [r.widthRange.lowerBound, r.widthRange.upperBound],
            }
    elif kind == "stateType":
        out.update(_array(feature.type.stateType.arrayType))
        out["type"] = "state"
    else:
        out["type"] = kind or "unknown"
    return out


def describe_spec(spec) -> dict[str, Any]:
    """Plain-JSON description of ``spec`` (a ``Model_pb2.Model``)."""
    desc = spec.description
    return {
        "specification_version": spec.specificationVersion,
        "opens_on": deployment_target_of(spec.specificationVersion),
        "model_type": spec.WhichOneof("Type"),
        "inputs": [_feature(f) for f in desc.input],
        "outputs": [_feature(f) for f in desc.output],
        "states": [_feature(f) for f in desc.state],
    }
