"""Byte-reproducible ``.mlpackage`` directories.

``MLModel.save`` is not reproducible: ``Manifest.json`` names its items with
random UUIDs, the ``userDefined`` metadata map in ``model.mlmodel`` serializes
in varying order, and coremltools stamps a ``conversion_date``. This module
rewrites a saved package so that two saves of the same model are identical,
byte for byte:

- the spec is re-serialized with ``SerializeToString(deterministic=True)``;
- ``conversion_date`` comes from ``SOURCE_DATE_EPOCH`` (UTC) or is removed;
- each manifest item's identifier is a UUID derived from the item's path and
  content, and the manifest is written with sorted keys;
- file modes are normalized (0644 files, 0755 directories).

Example::

    from modelbuild.ml.coreml.save import deterministic_save
    deterministic_save(mlmodel, ctx.out / "model.mlpackage")

The lowering step reuses this for ``.pte`` files with a Core ML delegate via
:func:`modelbuild.ml.coreml.delegate.deterministic_coreml_delegate`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

__all__ = [
    "deterministic_save",
    "canonicalize_mlpackage",
    "spec_path",
    "tree_digest",
    "package_size",
    "content_uuid",
    "strip_debug_files",
    "DATE_KEY",
]

MANIFEST = "Manifest.json"
DATA_DIR = "Data"
DATE_KEY = "com.github.apple.coremltools.conversion_date"
#: Written next to the manifest for programs converted from torch.export; only
#: ExecuTorch's Core ML delegate reads it (to map ops back to the graph).
DEBUG_FILES = ("executorch_debug_handle_mapping.json",)


def deterministic_save(mlmodel, path: Path, *, source_date_epoch: int | None = None) -> Path:
    """Save ``mlmodel`` at ``path`` (a ``.mlpackage``) reproducibly; return the path.

    ``source_date_epoch`` defaults to the ``SOURCE_DATE_EPOCH`` environment
    variable; without either, the conversion date is left out.
    """
    path = Path(path)
    mlmodel.save(str(path))
    canonicalize_mlpackage(path, source_date_epoch=source_date_epoch)
    return path


def _date_from_epoch(source_date_epoch: int | None) -> str | None:
    if source_date_epoch is None:
        env = os.environ.get("SOURCE_DATE_EPOCH")
        if env is None or not env.strip():
            return None
        source_date_epoch = int(env)
    # coremltools writes the date alone (YYYY-MM-DD); keep its format.
    return time.strftime("%Y-%m-%d", time.gmtime(int(source_date_epoch)))


def spec_path(package: Path) -> Path:
    """Path of the root model spec (``model.mlmodel``) inside ``package``."""
    manifest = json.loads((package / MANIFEST).read_text())
    root = manifest["rootModelIdentifier"]
    return package / DATA_DIR / manifest["itemInfoEntries"][root]["path"]


def tree_digest(path: Path) -> str:
    """SHA-256 over a file, or over a directory's sorted relative paths and contents."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def package_size(path: Path) -> int:
    """Total bytes of the regular files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def content_uuid(*parts: str) -> str:
    """A version-4-shaped UUID string derived from ``parts`` (stable across runs)."""
    h = hashlib.sha256("\0".join(("modelbuild", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=h[:16], version=4))


def _rewrite_spec(spec_file: Path, date: str | None) -> None:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    user = spec.description.metadata.userDefined
    if DATE_KEY in user:
        if date is None:
            del user[DATE_KEY]
        else:
            user[DATE_KEY] = date
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))


def _rewrite_manifest(package: Path) -> None:
    manifest_file = package / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    entries = manifest.get("itemInfoEntries", {})
    renamed: dict[str, str] = {}
    new_entries = {}
    for old_id, item in entries.items():
        item_path = package / DATA_DIR / item["path"]
        digest = tree_digest(item_path) if item_path.exists() else "missing"
        new_id = content_uuid(item["path"], item.get("author", ""), item.get("name", ""), digest)
        if new_id in new_entries:  # two identical items: keep them apart, still stably
            new_id = content_uuid(new_id, old_id)
        renamed[old_id] = new_id
        new_entries[new_id] = item
    manifest["itemInfoEntries"] = new_entries
    if "rootModelIdentifier" in manifest:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_file.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _normalize_modes(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def strip_debug_files(package: Path) -> list[str]:
    """Remove ExecuTorch debug side files from a standalone package; return their names.

    Not part of the Core ML format (the manifest does not list them), they only
    add bytes to a package shipped on its own. The delegate path keeps them.
    """
    removed = []
    for name in DEBUG_FILES:
        path = Path(package) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def canonicalize_mlpackage(package: Path, *, source_date_epoch: int | None = None) -> None:
    """Rewrite a saved ``.mlpackage`` in place into its reproducible form.

    Idempotent: canonicalizing a canonical package changes nothing.
    """
    package = Path(package)
    if not (package / MANIFEST).is_file():
        raise FileNotFoundError(f"{package} is not an .mlpackage (no {MANIFEST})")
    _rewrite_spec(spec_path(package), _date_from_epoch(source_date_epoch))
    # Identifiers are derived after the spec is final: they hash its bytes.
    _rewrite_manifest(package)
    _normalize_modes(package)
