"""``release``: build targets and bundle them reproducibly; ``release_verify``: check a bundle.

Example::

    from modelbuild.api import release, release_verify
    made = release(["tiny-llama"], output="dist")
    print(made.bundle.archive, made.bundle.archive_sha256)
    assert release_verify(made.bundle.directory).ok
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..hashing import Manifest
from ..keys import KEY_SCHEMA
from ..lockfile import LOCK_NAME, Lock, current_toolchain, fetch_identity, locked_overrides
from ..bundle import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    Bundle,
    ReleaseError,
    manifest_bytes,
    sha256_file,
    source_date_epoch,
    split_timings,
    verify_bundle,
    write_archive,
)
from ..reproduce import RebuildReport, is_measurement, load_verdict, measurement_files, rebuild_check
from .workspace import Workspace

__all__ = ["release", "release_verify", "ReleaseResult", "BundleCheck"]

_MEASUREMENTS = "measurements"


@dataclass
class ReleaseResult:
    bundle: Bundle
    reproducibility: dict[str, str]
    rebuild: RebuildReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": "modelbuild-release-result/1", **self.bundle.to_json(),
                "reproducibility": self.reproducibility,
                "rebuild": self.rebuild.to_json() if self.rebuild else None}


@dataclass
class BundleCheck:
    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems, "notes": self.notes}


def _allowed(name: str, step: str, allow: list[str]) -> bool:
    return name in allow or step in allow


def release(
    targets: list[str] | None = None,
    *,
    output: Path | str = "dist",
    name: str | None = None,
    project: Path | str | None = None,
    recipes: Path | str | None = None,
    cache_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    overrides: list[str] | None = None,
    jobs: int | None = None,
    allow_nondeterministic: list[str] | None = None,
    check_rebuild: bool = True,
    sign_key: Path | str | None = None,
    on_event: Callable | None = None,
) -> ReleaseResult:
    """Build ``targets``, check their chain rebuilds identically, and write ``output/NAME/``.

    A ``modelbuild.lock`` beside the recipes makes the build frozen (a stale
    lock raises :class:`~modelbuild.lockfile.LockStale`). Unless
    ``check_rebuild`` is False, every step of the chain whose action key was
    never verified is rebuilt once in a scratch cache (``verify --rebuild``)
    and compared; a step whose output differs is refused unless its target or
    step name is in ``allow_nondeterministic`` (the manifest then says so).
    """
    from .build import build

    allow = list(allow_nondeterministic or [])
    ws = Workspace.locate(project, recipes=recipes, cache_dir=cache_dir, out_dir=out_dir)
    graph = ws.graph(overrides)
    names = graph.resolve_names(list(targets or []))
    lock_path = ws.root / LOCK_NAME
    lk = Lock.read(lock_path) if lock_path.exists() else None
    result = build(names, project=ws.root, recipes=ws.recipes_dir, cache_dir=ws.cache_dir, out_dir=ws.out_dir,
                   jobs=jobs, overrides=overrides, frozen=lk is not None, on_event=on_event,
                   lazy=False)  # the manifest lists every record of the chain: all of it local
    if lk is not None:
        pins = locked_overrides(lk, graph, names)
        if pins:
            graph = ws.graph([*(overrides or []), *pins])
    bad = [f"{n} {r.status}: {r.reason}" for n, r in result.targets.items()
           if not r.ok and not (r.status == "unavailable" and graph.nodes[n].kind == _MEASUREMENTS)]
    if bad:
        raise ReleaseError("cannot release: " + "; ".join(bad))
    chain = graph.closure(names)
    store = ws.store()
    try:
        report = None
        # Validate targets are rebuilt and compared too (their figures go into the manifest);
        # one that cannot run on this host (needs macOS) is released with its status only.
        idle = {n for n in chain if graph.nodes[n].kind == _MEASUREMENTS and result.targets[n].status == "unavailable"}
        unchecked = [n for n in chain if n not in idle and load_verdict(store.root, result.targets[n].key or "") is None]
        if check_rebuild and unchecked:
            leaves = [n for n in names if n not in idle]
            leaves += [p for n in names if n in idle for p in graph.producers(n)]
            report = rebuild_check(graph, store, project=ws.root, names=sorted(set(leaves)), jobs=jobs)
        repro = _reproducibility(graph, store, result, chain, allow, report)
        return ReleaseResult(_write(ws, graph, store, result, names, chain, lk, repro, output, name,
                                    overrides or [], sign_key), repro, report)
    finally:
        store.close()


def _reproducibility(graph, store, result, chain, allow, report) -> dict[str, str]:
    repro: dict[str, str] = {}
    refused = []
    for n in chain:
        node = graph.nodes[n]
        if node.kind == _MEASUREMENTS and result.targets[n].status == "unavailable":
            repro[n] = f"not checked: {result.targets[n].reason} (status and reason in the manifest)"
            continue
        upstream = [p for p in graph.closure([n]) if p != n and repro.get(p, "").startswith(("differs", "fed by"))]
        verdict = load_verdict(store.root, result.targets[n].key or "")
        if verdict is None and report is not None and report.targets.get(n) == "differs":
            verdict = {"result": "differs", "differences": [d.to_json() for d in report.differences if d.target == n]}
        if upstream:
            repro[n] = f"fed by a non-reproducible input ({', '.join(upstream)})"
        elif verdict is None:
            repro[n] = "not checked"
        elif verdict["result"] == "identical":
            skipped = verdict.get("not_compared") or []
            repro[n] = "rebuilt identical" + (f" (not compared: {', '.join(skipped)}: measurements)" if skipped else "")
        else:
            first = (verdict.get("differences") or [{}])[0]
            what = f"{first.get('file')} differs at byte {first.get('offset')}" if first else "its output differs"
            if _allowed(n, node.step.name, allow):
                repro[n] = f"differs: {what} (allowed by --allow-nondeterministic)"
            else:
                refused.append(f"{n} ({node.step.name}): {what}")
                repro[n] = "differs"
    if refused:
        raise ReleaseError(
            "release refused: not reproducible: " + "; ".join(refused)
            + " (see `modelbuild verify TARGET --rebuild`; pass --allow-nondeterministic "
            + " --allow-nondeterministic ".join(r.split(" ", 1)[0] for r in refused) + " to release it anyway)"
        )
    return repro


def _artifact(record, measured: tuple[str, ...]) -> dict[str, Any]:
    """The chain entry's ``artifact`` digest; for a step with measurement files (timings.json),
    the digest of its other files, which rebuild identically, and the list of those left out."""
    skipped = [e.path for e in record.manifest.entries if is_measurement(e.path, measured)]
    if not skipped:
        return {"artifact": record.manifest.digest}
    kept = Manifest([e for e in record.manifest.entries if e.path not in skipped])
    return {"artifact": kept.digest, "measurement_files": skipped}


def _bundle_dir(output: Path, name: str) -> Path:
    directory = output / name
    if directory.exists():
        known = {p.name for p in directory.iterdir()}
        if known and MANIFEST_NAME not in known:
            raise ReleaseError(f"{directory} exists and is not a release bundle: remove it or choose another --name")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def _write(ws, graph, store, result, names, chain, lk, repro, output, name, overrides, sign_key) -> Bundle:
    from ..provenance import make_statement, resolved_dependencies, sign, write_sbom

    name = name or names[0]
    records = {n: store.get_action(result.targets[n].key) for n in chain if result.targets[n].key}
    files: dict[str, tuple[Path, bool]] = {}
    listed: dict[str, dict[str, Any]] = {}
    validation: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for n in names:
        node, res = graph.nodes[n], result.targets[n]
        if node.kind == _MEASUREMENTS:
            v = res.verdict or {}
            keep, moved = split_timings(dict(v.get("figures") or {}))
            validation[n] = {"status": v.get("status") or res.status, "ok": v.get("ok"),
                             "reason": v.get("reason") or res.reason, "figures": keep}
            if moved:
                timings[n] = moved
            continue
        measured = measurement_files(node.step)
        for e in records[n].manifest.entries:
            if is_measurement(e.path, measured):  # not reproducible: listed in the chain, not archived
                continue
            rel = f"{n}/{e.path}"
            src = store.blob_path(e.digest, e.executable)
            files[rel] = (src, e.executable)
            listed[rel] = {"sha256": sha256_file(src), "b3": e.digest, "size": e.size,
                           "executable": e.executable, "target": n}
    fetch_now = {}
    for n in chain:
        if graph.nodes[n].step.name == "fetch" and records.get(n):
            ckpt = next((e for e in records[n].manifest.entries if e.path == "checkpoint.json"), None)
            data = json.loads(store.blob_path(ckpt.digest, ckpt.executable).read_text()) if ckpt else {}
            fetch_now[n] = fetch_identity(records[n], data)
    recipe_files = sorted({graph.nodes[n].target.file for n in chain})
    recipes = {f: (ws.root / f).read_text() for f in recipe_files}
    nondeterministic = {n: r for n, r in repro.items() if r.startswith(("differs", "fed by"))}
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "targets": list(names),
        "source_date_epoch": source_date_epoch(lk.source_date_epoch if lk else None),
        "files": listed,
        "recipes": recipes,
        "overrides": list(overrides),
        "chain": {n: {"step": graph.nodes[n].step.name, "recipe": graph.nodes[n].target.file,
                      "key": records[n].key, "key_record": records[n].key_record,
                      **_artifact(records[n], measurement_files(graph.nodes[n].step))}
                  for n in chain if records.get(n)},
        "inputs": fetch_now,
        "lock": ({"recipe_digest": lk.recipe_digest, "source_date_epoch": lk.source_date_epoch,
                  "fetch": {k: v for k, v in lk.fetch.items() if k in chain}} if lk else None),
        "toolchain": dict(lk.toolchain) if lk else current_toolchain(),
        "validation": validation,
        "nondeterministic": {
            "steps": nondeterministic,
            "files": sorted([r for r, info in listed.items() if info["target"] in nondeterministic]
                            + (["timings.json"] if timings else [])),
        },
    }
    directory = _bundle_dir(Path(output), name)
    data = manifest_bytes(manifest)
    archive = directory / f"{name}.tar.gz"
    digest = write_archive(archive, name, files, data, mtime=manifest["source_date_epoch"])
    (directory / MANIFEST_NAME).write_bytes(data)
    byproducts = {}
    if timings:
        (directory / "timings.json").write_text(json.dumps(timings, sort_keys=True, indent=2) + "\n")
        byproducts["timings.json"] = sha256_file(directory / "timings.json")
    write_sbom(directory / "sbom.cdx.json", name=name, serial_seed=digest)
    byproducts["sbom.cdx.json"] = sha256_file(directory / "sbom.cdx.json")
    subjects = {archive.name: digest, **{f"{name}/{r}": i["sha256"] for r, i in listed.items()}}
    statement = make_statement(
        subjects, targets=list(names), recipes={f: hashlib.sha256(t.encode()).hexdigest() for f, t in recipes.items()},
        overrides=list(overrides), chain_keys={n: c["key"] for n, c in manifest["chain"].items()},
        key_schema=KEY_SCHEMA, reproducibility=repro, dependencies=resolved_dependencies(manifest["lock"]["fetch"] if lk else fetch_now),
        byproducts=byproducts,
    )
    stmt_path = directory / "provenance.intoto.json"
    stmt_path.write_text(json.dumps(statement, sort_keys=True, indent=2) + "\n")
    if sign_key is not None:
        sign(stmt_path, Path(sign_key).expanduser())
    return Bundle(name, directory, archive, digest, manifest)


def release_verify(
    path: Path | str,
    *,
    allowed_signers: Path | str | None = None,
    identity: str | None = None,
) -> BundleCheck:
    """Rehash a bundle (directory, ``.tar.gz`` or extracted tree) against its manifest; check its signature."""
    from ..provenance import SignatureError, verify_signature

    path = Path(path)
    check = BundleCheck(path, verify_bundle(path))
    statement = path / "provenance.intoto.json" if path.is_dir() else None
    if statement is not None and statement.is_file():
        sig = statement.with_name(statement.name + ".sig")
        if sig.is_file() or allowed_signers is not None:
            try:
                check.notes.append(verify_signature(statement, allowed_signers=Path(allowed_signers) if allowed_signers else None,
                                                    identity=identity))
            except SignatureError as err:
                check.problems.append(str(err))
    elif allowed_signers is not None:
        check.problems.append(f"{path}: no provenance.intoto.json to check a signature of")
    if check.ok:
        check.notes.append(f"{path.name}: all files match the manifest")
    return check

