"""Provenance of a release: an in-toto Statement with a SLSA provenance v1 predicate,
a CycloneDX SBOM of the Python environment, and optional OpenSSH signatures.

The statement (https://in-toto.io/Statement/v1) names as subjects the archive
and every file of the release by sha256. Its predicate
(https://slsa.dev/provenance/v1) says:

- ``buildDefinition.buildType``: :data:`BUILD_TYPE`;
- ``externalParameters``: the targets released and the recipe files (path ->
  sha256) of their chain, plus the ``--set`` overrides;
- ``internalParameters``: the key-schema version, the action keys of the chain,
  and what the rebuild check found for each step ("rebuilt identical", "not
  checked", ...: it depends on this cache's history, so it is not in the
  archive's manifest);
- ``resolvedDependencies``: the locked inputs: each fetch's source with its
  digest (an hf commit as ``gitCommit``, a URL's ``sha256``, a local or
  synthetic checkpoint's artifact digest as ``blake3``);
- ``runDetails.builder``: modelbuild and its version; ``byproducts``: the
  non-reproducible files beside the archive (timings) and the SBOM.

No timestamps: the statement is as reproducible as the inputs it describes.

Signing uses ``ssh-keygen -Y sign`` with the namespace :data:`NAMESPACE`
(no network, keys people already have); ``verify_signature`` runs
``ssh-keygen -Y verify`` against an allowed-signers file, or
``-Y check-novalidate`` when none is given (the signature is checked, not who
made it).

Example::

    statement = make_statement(subjects, targets=["tiny-llama"], ...)
    sign(Path("dist/x/provenance.intoto.json"), Path("~/.ssh/id_ed25519"))
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ModelbuildError

__all__ = [
    "STATEMENT_TYPE",
    "PREDICATE_TYPE",
    "BUILD_TYPE",
    "BUILDER_ID",
    "NAMESPACE",
    "make_statement",
    "resolved_dependencies",
    "write_sbom",
    "sign",
    "verify_signature",
    "SignatureError",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:modelbuild:release:v1"
BUILDER_ID = "urn:modelbuild:builder:local"
NAMESPACE = "modelbuild-release"


class SignatureError(ModelbuildError):
    """A signature could not be made or does not verify."""


def resolved_dependencies(lock_fetch: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """SLSA ResourceDescriptors of the locked fetch inputs."""
    deps = []
    for name in sorted(lock_fetch):
        entry = lock_fetch[name]
        kind = entry.get("kind")
        digest: dict[str, str] = {}
        uri = str(entry.get("source", ""))
        if kind == "hf" and entry.get("commit"):
            digest["gitCommit"] = str(entry["commit"])
            uri = f"{uri}@{entry['commit']}"
        elif kind == "url" and entry.get("sha256"):
            digest["sha256"] = str(entry["sha256"])
        if entry.get("artifact"):
            digest["blake3"] = str(entry["artifact"]).removeprefix("b3:")
        dep: dict[str, Any] = {"name": name, "uri": uri, "digest": digest}
        annotations = {k: entry[k] for k in ("architecture", "size", "seed", "revision", "subdir") if k in entry}
        if annotations:
            dep["annotations"] = annotations
        deps.append(dep)
    return deps


def make_statement(
    subjects: dict[str, str],
    *,
    targets: list[str],
    recipes: dict[str, str],
    overrides: list[str],
    chain_keys: dict[str, str],
    key_schema: int,
    reproducibility: dict[str, str],
    dependencies: list[dict[str, Any]],
    byproducts: dict[str, str],
) -> dict[str, Any]:
    """The in-toto Statement; ``subjects`` and ``byproducts`` map a name to its sha256."""
    try:
        version = metadata.version("modelbuild")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"targets": list(targets), "recipes": dict(sorted(recipes.items())),
                                       "overrides": list(overrides)},
                "internalParameters": {"keySchema": key_schema, "actionKeys": dict(sorted(chain_keys.items())),
                                       "reproducibility": dict(sorted(reproducibility.items()))},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"modelbuild": version}},
                "byproducts": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(byproducts.items())],
            },
        },
    }


def write_sbom(path: Path, *, name: str, serial_seed: str) -> None:
    """A CycloneDX 1.6 JSON SBOM of the installed Python distributions (cyclonedx-python-lib).

    The serial number is derived from ``serial_seed`` (the archive digest) and
    no timestamp is written, so the same environment gives the same bytes.
    """
    try:
        from cyclonedx.model.bom import Bom, BomMetaData
        from cyclonedx.model.component import Component, ComponentType
        from cyclonedx.output.json import JsonV1Dot6
        from packageurl import PackageURL
    except ImportError as err:
        raise ModelbuildError(
            f"writing the SBOM needs cyclonedx-python-lib ({err}); pip install cyclonedx-python-lib"
        ) from None
    components = {}
    for dist in metadata.distributions():
        dist_name = dist.metadata.get("Name")
        if not dist_name:
            continue
        key = dist_name.lower().replace("_", "-")
        if key in components:
            continue
        components[key] = Component(
            name=dist_name, version=dist.version, type=ComponentType.LIBRARY,
            purl=PackageURL(type="pypi", name=key, version=dist.version), bom_ref=f"pkg:pypi/{key}@{dist.version}",
        )
    root = Component(name=name, type=ComponentType.APPLICATION, bom_ref=f"release:{name}")
    bom = Bom(
        components=[components[k] for k in sorted(components)],
        serial_number=uuid.UUID(hashlib.sha256(serial_seed.encode()).hexdigest()[:32]),
        metadata=BomMetaData(component=root),
    )
    bom.register_dependency(root, bom.components)
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    data = json.loads(text)
    data.get("metadata", {}).pop("timestamp", None)  # reproducible bytes for the same environment
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise SignatureError("signing needs ssh-keygen (OpenSSH 8.1 or newer) on PATH")
    return exe


def sign(path: Path, key: Path) -> Path:
    """Sign ``path`` with an OpenSSH private key; return ``path.sig``."""
    sig = path.with_name(path.name + ".sig")
    sig.unlink(missing_ok=True)
    proc = subprocess.run([_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(path)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not sig.is_file():
        raise SignatureError(f"ssh-keygen could not sign {path.name} with {key}: {proc.stderr.strip().splitlines()[-1:]}")
    return sig


def verify_signature(path: Path, *, allowed_signers: Path | None = None, identity: str | None = None) -> str:
    """Check ``path.sig``; return a one-line description, raise SignatureError if bad.

    With ``allowed_signers`` (an OpenSSH allowed-signers file) the signer
    must be listed there (under ``identity`` if given, else the first
    principal of the file); without it only the signature's integrity is
    checked.
    """
    sig = path.with_name(path.name + ".sig")
    if not sig.is_file():
        raise SignatureError(f"{sig.name}: missing")
    with open(path, "rb") as data:
        if allowed_signers is not None:
            principal = identity or _first_principal(Path(allowed_signers))
            cmd = [_ssh_keygen(), "-Y", "verify", "-f", str(allowed_signers), "-I", principal,
                   "-n", NAMESPACE, "-s", str(sig)]
        else:
            cmd = [_ssh_keygen(), "-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)]
        proc = subprocess.run(cmd, stdin=data, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SignatureError(f"bad signature: {sig.name} does not verify {path.name} ({detail[-1] if detail else 'ssh-keygen failed'})")
    if allowed_signers is None:
        return f"{sig.name}: good signature (signer not checked: pass --allowed-signers)"
    return f"{sig.name}: good signature by {principal}"


def _first_principal(allowed: Path) -> str:
    for line in allowed.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split()[0].split(",")[0]
    raise SignatureError(f"{allowed}: no principal in the allowed-signers file")
