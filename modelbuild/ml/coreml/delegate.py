"""Reproducible ``.pte`` files with a Core ML delegate.

ExecuTorch's Core ML backend embeds, in each delegate blob, an ``.mlpackage``
saved by coremltools (random manifest UUIDs, a conversion date, unordered
metadata) and a model identifier ``"executorch_" + uuid4()``. The same
lowering therefore gives a different ``.pte`` each time. Inside
:func:`deterministic_coreml_delegate`:

- every ``MLModel.save`` of an ``.mlpackage`` is followed by
  :func:`modelbuild.ml.coreml.save.canonicalize_mlpackage`;
- the backend's model identifier is derived from the delegated model's
  content (its deterministically serialized spec and weights), so two
  identical partitions of one program still get distinct, stable identifiers
  (a per-lowering counter separates them).

Example (in the ``lower`` step)::

    from modelbuild.ml.coreml.delegate import deterministic_coreml_delegate
    with deterministic_coreml_delegate():
        program = to_edge_transform_and_lower(ep, partitioner=[CoreMLPartitioner(...)]).to_executorch()
    (ctx.out / "model.pte").write_bytes(program.buffer)

The patches are undone on exit; the context is not thread-safe (lowering is
single-threaded in a step process).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["deterministic_coreml_delegate"]


class _ContentUUIDs:
    """Stands in for the ``uuid`` module inside ExecuTorch's coreml_preprocess."""

    def __init__(self) -> None:
        self.seed = "no-model"
        self.count = 0

    def uuid4(self) -> uuid.UUID:
        # The counter keeps two identical partitions apart while staying stable
        # for the same lowering.
        self.count += 1
        h = hashlib.sha256(f"modelbuild-coreml-delegate\0{self.seed}\0{self.count}".encode()).digest()
        return uuid.UUID(bytes=h[:16], version=4)

    def __getattr__(self, name: str):
        return getattr(uuid, name)


def _model_digest(mlmodel) -> str:
    """Content digest of an MLModel: its spec (minus the date) and weight files."""
    from modelbuild.ml.coreml.save import DATE_KEY, tree_digest

    spec = mlmodel.get_spec()
    spec.description.metadata.userDefined.pop(DATE_KEY, None)
    h = hashlib.sha256(spec.SerializeToString(deterministic=True))
    weights = getattr(mlmodel, "weights_dir", None)
    if weights and Path(weights).exists():
        h.update(tree_digest(Path(weights)).encode())
    return h.hexdigest()


@contextlib.contextmanager
def deterministic_coreml_delegate(source_date_epoch: int | None = None) -> Iterator[None]:
    """Make Core ML delegate blobs lowered inside this context reproducible."""
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import coreml_preprocess as cp

    from modelbuild.ml.coreml.save import canonicalize_mlpackage

    ids = _ContentUUIDs()
    backend = cp.CoreMLBackend
    orig_save = ct.models.MLModel.save
    orig_preprocess_model = backend.__dict__["preprocess_model"]
    orig_uuid = cp.uuid

    def save(self, save_path: str):
        result = orig_save(self, save_path)
        path = Path(save_path)
        if path.suffix != ".mlpackage" and path.with_suffix(".mlpackage").is_dir():
            path = path.with_suffix(".mlpackage")
        if (path / "Manifest.json").is_file():
            canonicalize_mlpackage(path, source_date_epoch=source_date_epoch)
        return result

    def preprocess_model(mlmodel, model_type):
        ids.seed = _model_digest(mlmodel)
        return orig_preprocess_model.__func__(mlmodel, model_type)

    ct.models.MLModel.save = save
    backend.preprocess_model = staticmethod(preprocess_model)
    cp.uuid = ids
    try:
        yield
    finally:
        ct.models.MLModel.save = orig_save
        backend.preprocess_model = orig_preprocess_model
        cp.uuid = orig_uuid
