"""Artifact kinds and the artifact handle steps receive.

Every artifact is a directory tree. Its *kind* says what the tree holds and
is checked when the graph is built, so "lower needs an exported-program but
got a checkpoint" is a recipe error, not a crash an hour in.

The layout conventions below are the contract between steps; a step that
produces a kind writes these files, a step that consumes it may rely on them.

Example::

    >>> KINDS["pte"].description
    'an ExecuTorch program: model.pte (+ partition.json, program.json)'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArtifactKind", "Artifact", "KINDS", "register_kind", "ANY"]


@dataclass(frozen=True)
class ArtifactKind:
    name: str
    description: str


#: Accepts an artifact of any kind (e.g. a generic ``command`` input).
ANY = "any"

KINDS: dict[str, ArtifactKind] = {}


def register_kind(name: str, description: str) -> ArtifactKind:
    """Register an artifact kind (plugins may add their own)."""
    kind = ArtifactKind(name, description)
    KINDS[name] = kind
    return kind


register_kind("files", "arbitrary files (the output of a command step)")
register_kind(
    "checkpoint",
    "model weights in their source layout plus checkpoint.json "
    "({format: hf|meta|gguf, family, synthetic, source, revision})",
)
register_kind(
    "exported-program",
    "a torch.export program: program.pt2 + model.json "
    "(family, dtype, max_seq_len, metadata, tokenizer file name) + the tokenizer",
)
register_kind("pte", "an ExecuTorch program: model.pte (+ partition.json, program.json)")
register_kind("package", "an app bundle: model.pte, the tokenizer and metadata.json")
register_kind("mlpackage", "a Core ML package: model.mlpackage/ (+ coreml.json)")
register_kind("mlmodelc", "a compiled Core ML model: model.mlmodelc/")
register_kind("reference", "reference outputs of the original model: reference.json (+ .npy)")
register_kind("measurements", "validation measurements: measurements.json (+ plots)")
register_kind("report", "a human-readable report: report.json, report.md (+ PNG)")


@dataclass(frozen=True)
class Artifact:
    """A built artifact as a step sees it: read-only files under ``path``.

    ``digest`` is the content digest of the whole tree; ``target`` is the
    target that produced it.
    """

    kind: str
    path: Path
    digest: str
    target: str

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the artifact (it need not exist)."""
        return self.path / name
