"""``whence``: from a file (or a digest) to the chain that made it.

Every action record in the store lists its output files by BLAKE3 digest, and
its key record lists its inputs by artifact digest. So a file's digest finds
the record(s) holding it, and each input digest finds the record that
produced that artifact, down to the fetch whose ``checkpoint.json`` says
where the weights came from (hf commit, URL digest, local content, seed).

Example::

    for chain in whence(store, hash_file(Path("out/tiny-llama/model.pte"))):
        print(render(chain))
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .hashing import PREFIX

__all__ = ["Origin", "whence", "render", "normalize_digest"]


@dataclass
class Origin:
    """One action that produced (an artifact holding) the file, with the chain of its inputs."""

    target: str
    step: str
    key: str
    path: str | None  # the file's path in the artifact (None: the whole artifact)
    params: dict[str, Any]
    toolchain: dict[str, str]
    built: float
    artifact: str
    source: dict[str, Any] | None = None  # a fetch's checkpoint.json identity
    inputs: dict[str, list["Origin"]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "step": self.step, "key": self.key, "path": self.path,
                "params": self.params, "toolchain": self.toolchain, "artifact": self.artifact,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.built)) if self.built else None,
                "source": self.source,
                "inputs": {slot: [o.to_json() for o in origins] for slot, origins in self.inputs.items()}}


def normalize_digest(text: str) -> str | None:
    """``b3:<hex>`` or bare 64-hex BLAKE3 -> ``b3:<hex>``; None if it is not one."""
    hexd = text[len(PREFIX):] if text.startswith(PREFIX) else text
    if len(hexd) == 64 and all(c in "0123456789abcdef" for c in hexd.lower()):
        return PREFIX + hexd.lower()
    return None


def whence(store, digest: str) -> list[Origin]:
    """The actions whose output holds a file with ``digest`` (or is the artifact ``digest``)."""
    records = []
    for key in store.action_keys():
        try:
            rec = store.get_action(key)
        except Exception:  # noqa: BLE001 - an unreadable record cannot be an origin
            continue
        if rec is not None:
            records.append(rec)
    by_artifact: dict[str, list] = {}
    for rec in records:
        by_artifact.setdefault(rec.manifest.digest, []).append(rec)
    found = []
    for rec in sorted(records, key=lambda r: (r.target, -r.created)):
        if rec.manifest.digest == digest:
            found.append(_origin(store, rec, None, by_artifact, set()))
            continue
        for e in rec.manifest.entries:
            if e.digest == digest:
                found.append(_origin(store, rec, e.path, by_artifact, set()))
    return found


def _origin(store, rec, path, by_artifact, seen: set[str]) -> Origin:
    kr = rec.key_record or {}
    origin = Origin(rec.target, rec.step, rec.key, path, dict(kr.get("params") or {}),
                    dict(kr.get("toolchain") or {}), rec.created, rec.manifest.digest)
    if rec.step == "fetch":
        ckpt = next((e for e in rec.manifest.entries if e.path == "checkpoint.json"), None)
        if ckpt is not None:
            try:
                data = json.loads(store.blob_path(ckpt.digest, ckpt.executable).read_text())
                origin.source = {k: data[k] for k in ("source", "revision", "resolved_commit", "sha256",
                                                      "architecture", "size", "seed", "synthetic", "subdir")
                                 if k in data}
            except (OSError, ValueError):
                origin.source = None
    if kr.get("sources"):  # project files the step read (a local checkpoint, a command's deps)
        origin.source = {**(origin.source or {}), "content": kr["sources"]}
    if rec.key in seen:
        return origin
    seen = seen | {rec.key}
    for slot, digests in (kr.get("inputs") or {}).items():
        for d in digests if isinstance(digests, list) else [digests]:
            producers = by_artifact.get(d) or []
            # The newest record that produced this artifact (several keys may yield the same bytes).
            best = max(producers, key=lambda r: r.created, default=None)
            if best is not None:
                origin.inputs.setdefault(slot, []).append(_origin(store, best, None, by_artifact, seen))
    return origin


def render(origin: Origin, indent: int = 0) -> list[str]:
    """Human-readable lines of an origin and its inputs."""
    pad = "  " * indent
    where = f" holds {origin.path}" if origin.path else ""
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(origin.built)) if origin.built else "unknown"
    lines = [f"{pad}{origin.target} ({origin.step}){where}",
             f"{pad}  key {origin.key[:16]}  artifact {origin.artifact[3:15]}  built {built}"]
    if origin.params:
        lines.append(f"{pad}  params: " + json.dumps(origin.params, sort_keys=True, default=str))
    if origin.toolchain:
        lines.append(f"{pad}  toolchain: " + ", ".join(f"{k} {v}" for k, v in sorted(origin.toolchain.items())))
    if origin.source:
        lines.append(f"{pad}  source: " + json.dumps(origin.source, sort_keys=True))
    for slot, origins in origin.inputs.items():
        for o in origins:
            lines.append(f"{pad}  <- {slot}:")
            lines.extend(render(o, indent + 2))
    return lines
