"""Bit-for-bit checks: rebuild a chain in a scratch cache and compare every file.

``rebuild_check`` builds the targets' whole chain a second time in a fresh
cache and out dir (nothing shared with the real cache but the project and the
Hub/download caches of the fetch step), then compares each target's output
with the one in the real store, file by file. A difference names the target,
its step, the first differing file and byte offset, and for known formats
where inside the file it is (:func:`locate`):

- a JSON file: the first differing key path (``summary.cosine``);
- a file inside an ``.mlpackage``: which file of the package (and the JSON key
  of its ``Manifest.json``);
- an ExecuTorch ``.pte``: the flatbuffer program or the segment data (from
  the ``eh00`` extended header), and which segment when executorch is
  installed to read the program's segment table.

A step may declare some of its output files measurements of the run
(``measurement_files``, e.g. the validate step's ``timings.json``: load time,
speeds, peak memory): they are left out of every comparison and reported as
"not compared (measurements)" (:class:`NotCompared`), never silently; every
other file is compared byte for byte.

The first target of the chain (in build order) that differs is the
non-reproducible step; targets after it that differ are reported as fed by it.
Each compared target's verdict is remembered per action key under
``<cache>/verify/`` so that ``release`` can refuse a step known to be
non-reproducible without rebuilding it again.

Example::

    report = rebuild_check(graph, store, project=root, names=["tiny-llama"])
    for d in report.differences:
        print(d.line())
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .hashing import Manifest

__all__ = [
    "Difference",
    "NotCompared",
    "RebuildReport",
    "compare_manifests",
    "measurement_files",
    "is_measurement",
    "uncompared",
    "first_difference",
    "locate",
    "rebuild_check",
    "load_verdict",
    "save_verdict",
    "VERIFY_FORMAT",
]

#: Version of the per-key verdict files under ``<cache>/verify/``.
VERIFY_FORMAT = 1

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Difference:
    """One file that is not the same in two builds (or bundles) of a target."""

    target: str
    step: str
    file: str
    what: str  # "differs", "missing", "extra", "mode"
    offset: int | None = None
    where: str = ""
    #: True when the target's own inputs already differed (it is downstream of the culprit).
    downstream: bool = False

    def line(self) -> str:
        head = f"{self.target} ({self.step}): {self.file}"
        if self.what == "missing":
            text = f"{head}: missing in the new build"
        elif self.what == "extra":
            text = f"{head}: only in the new build"
        elif self.what == "mode":
            text = f"{head}: executable bit differs"
        else:
            text = f"{head}: differs at byte {self.offset}"
            if self.where:
                text += f" ({self.where})"
        if self.downstream:
            text += " [its input differed first]"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "step": self.step, "file": self.file, "what": self.what,
                "offset": self.offset, "where": self.where, "downstream": self.downstream}


@dataclass(frozen=True)
class NotCompared:
    """A file left out of the comparison because its step declares it a measurement of the run."""

    target: str
    step: str
    file: str

    def line(self) -> str:
        return (f"{self.target} ({self.step}): {self.file}: not compared (measurements: "
                "the step declares it varies from run to run, e.g. timings)")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "step": self.step, "file": self.file, "why": "measurements"}


def measurement_files(step) -> tuple[str, ...]:
    """The output paths (fnmatch patterns) that ``step`` declares measurements of its run.

    A step class attribute, ``measurement_files = ("timings.json",)``; steps
    without one have none.
    """
    return tuple(getattr(step, "measurement_files", ()) or ())


def is_measurement(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether output ``path`` matches one of a step's measurement-file patterns."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


@dataclass
class RebuildReport:
    """What ``rebuild_check`` found: per target "identical", "differs" or why it was not compared.

    ``not_compared`` lists the measurement files left out of the comparison
    (they never make a target differ).
    """

    targets: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    duration_s: float = 0.0
    not_compared: list[NotCompared] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        compared = [v for v in self.targets.values() if not v.startswith("not compared")]
        return bool(compared) and not self.differences and all(v == "identical" for v in compared)

    @property
    def culprits(self) -> list[str]:
        """Targets whose output differs although their inputs were the same (non-reproducible steps)."""
        seen: list[str] = []
        for d in self.differences:
            if not d.downstream and d.target not in seen:
                seen.append(d.target)
        return seen

    def to_json(self) -> dict[str, Any]:
        return {"format": "modelbuild-verify/1", "ok": self.ok, "targets": self.targets,
                "culprits": self.culprits, "differences": [d.to_json() for d in self.differences],
                "not_compared": [n.to_json() for n in self.not_compared],
                "duration_s": round(self.duration_s, 3)}


# -- comparing bytes ------------------------------------------------------------


def first_difference(a: Path, b: Path) -> int | None:
    """The offset of the first byte where files ``a`` and ``b`` differ (None: identical).

    A file that is a prefix of the other differs at the shorter one's length.
    """
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                i = next((i for i in range(n) if ca[i] != cb[i]), n)
                return offset + i
            if not ca:
                return None
            offset += len(ca)


def compare_manifests(
    target: str,
    step: str,
    old: Manifest,
    new: Manifest,
    old_file: Callable[[str], Path],
    new_file: Callable[[str], Path],
    *,
    downstream: bool = False,
    measurements: tuple[str, ...] = (),
) -> list[Difference]:
    """Every file that differs between two outputs of ``target``, in path order.

    ``old_file(path)`` / ``new_file(path)`` give a readable file for an entry.
    Paths matching ``measurements`` (the step's :func:`measurement_files`) are
    not compared; :func:`uncompared` lists them.
    """
    a = {e.path: e for e in old.entries}
    b = {e.path: e for e in new.entries}
    diffs: list[Difference] = []
    for path in sorted(set(a) | set(b)):
        if is_measurement(path, measurements):
            continue
        ea, eb = a.get(path), b.get(path)
        if eb is None:
            diffs.append(Difference(target, step, path, "missing", downstream=downstream))
        elif ea is None:
            diffs.append(Difference(target, step, path, "extra", downstream=downstream))
        elif ea.digest != eb.digest:
            fa, fb = old_file(path), new_file(path)
            offset = first_difference(fa, fb)
            diffs.append(Difference(target, step, path, "differs", offset if offset is not None else 0,
                                    locate(path, fa, fb, offset or 0), downstream=downstream))
        elif ea.executable != eb.executable:
            diffs.append(Difference(target, step, path, "mode", downstream=downstream))
    return diffs


def uncompared(target: str, step: str, old: Manifest, new: Manifest, measurements: tuple[str, ...]) -> list[NotCompared]:
    """The files of either output that :func:`compare_manifests` leaves out as measurements."""
    paths = {e.path for e in old.entries} | {e.path for e in new.entries}
    return [NotCompared(target, step, p) for p in sorted(paths) if is_measurement(p, measurements)]


# -- where inside a file ----------------------------------------------------------


def locate(path: str, a: Path, b: Path, offset: int) -> str:
    """Say where inside a known format the first difference (at ``offset``) is; "" if unknown."""
    parts = []
    pkg = _package_of(path)
    if pkg is not None:
        parts.append(f"file {path[len(pkg) + 1:]} of the package {pkg}")
    name = path.rsplit("/", 1)[-1]
    try:
        if name.endswith(".json"):
            key = _json_key(a, b)
            if key is not None:
                parts.append(f"JSON key {key or '(the document root)'}")
        elif name.endswith(".pte"):
            parts.append(_pte_where(a, offset))
    except (OSError, ValueError) as err:  # a truncated or malformed file: the offset says enough
        parts.append(f"cannot parse: {err}")
    return "; ".join(p for p in parts if p)


def _package_of(path: str) -> str | None:
    head = path.split("/")
    for i, part in enumerate(head[:-1]):
        if part.endswith((".mlpackage", ".mlmodelc")):
            return "/".join(head[: i + 1])
    return None


def _json_key(a: Path, b: Path) -> str | None:
    try:
        da, db = json.loads(a.read_text()), json.loads(b.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return _first_key(da, db, "")


def _first_key(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            here = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                return here
            found = _first_key(a[k], b[k], here)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_key(x, y, f"{prefix}[{i}]")
            if found is not None:
                return found
        return f"{prefix}[{min(len(a), len(b))}]" if len(a) != len(b) else None
    return None if a == b and type(a) is type(b) else prefix


def pte_layout(path: Path) -> dict[str, int] | None:
    """The ExecuTorch extended header ("eh00" at offset 8): program size, segment base and size.

    None when the file has no extended header (a flatbuffer without segments).
    """
    with open(path, "rb") as f:
        head = f.read(40)
    if len(head) < 32 or head[8:12] != b"eh00":
        return None
    length = int.from_bytes(head[12:16], "little")
    layout = {
        "header_length": length,
        "program_size": int.from_bytes(head[16:24], "little"),
        "segment_base_offset": int.from_bytes(head[24:32], "little"),
    }
    if length >= 32 and len(head) >= 40:
        layout["segment_data_size"] = int.from_bytes(head[32:40], "little")
    return layout


def _pte_where(path: Path, offset: int) -> str:
    layout = pte_layout(path)
    if layout is None:
        return f"flatbuffer program at offset {offset} (no eh00 extended header: no segments)"
    if offset < 8 + layout["header_length"]:
        return f"the eh00 extended header (offset {offset})"
    if offset < layout["program_size"]:
        return f"flatbuffer program at offset {offset} of {layout['program_size']}"
    base = layout["segment_base_offset"]
    if offset < base:
        return f"padding between the program and the segments (offset {offset})"
    rel = offset - base
    segment = _pte_segment(path, layout, rel)
    return f"segment data at +{rel} from the segment base {base}" + (f": {segment}" if segment else "")


def _pte_segment(path: Path, layout: dict[str, int], rel: int) -> str | None:
    """Which segment (and which delegate or constant table uses it), if executorch can read the program."""
    try:  # optional: executorch's own flatbuffer reader
        from executorch.exir._serialize._program import _flatbuffer_to_program  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - not installed or a changed private API
        return None
    try:
        with open(path, "rb") as f:
            program = _flatbuffer_to_program(f.read(layout["program_size"]))
    except Exception:  # noqa: BLE001 - a damaged program: say nothing more
        return None
    for i, seg in enumerate(getattr(program, "segments", []) or []):
        if seg.offset <= rel < seg.offset + seg.size:
            users = []
            for plan in getattr(program, "execution_plan", []) or []:
                for d in getattr(plan, "delegates", []) or []:
                    processed = getattr(d, "processed", None)
                    if processed is not None and getattr(processed, "index", None) == i and "SEGMENT" in str(getattr(processed, "location", "")):
                        users.append(f"delegate {d.id} of {plan.name}")
            cs = getattr(program, "constant_segment", None)
            if cs is not None and getattr(cs, "segment_index", None) == i:
                users.append("constant tensor data")
            what = ", ".join(users) or "named or mutable data"
            return f"segment {i} ({what}), at +{rel - seg.offset} of its {seg.size} bytes"
    return None


# -- remembered verdicts -------------------------------------------------------------


def _verdict_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "verify" / f"{key}.json"


def save_verdict(cache_dir: Path, key: str, target: str, step: str, result: str, differences: list[Difference],
                 not_compared: list[NotCompared] = ()) -> None:
    """Remember that the output of action ``key`` rebuilt identical (or not), and which files were not compared."""
    path = _verdict_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": VERIFY_FORMAT, "key": key, "target": target, "step": step, "result": result,
            "differences": [d.to_json() for d in differences],
            "not_compared": sorted(n.file for n in not_compared)}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, indent=1))
    os.replace(tmp, path)


def load_verdict(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The remembered verdict of action ``key`` ("identical" / "differs"), or None."""
    try:
        data = json.loads(_verdict_path(cache_dir, key).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == VERIFY_FORMAT else None


# -- rebuilding ----------------------------------------------------------------------


def rebuild_check(
    graph,
    store,
    *,
    project: Path,
    names: list[str],
    jobs: int | None = None,
    scratch: Path | None = None,
    on_event=None,
) -> RebuildReport:
    """Rebuild the chain of ``names`` in a scratch cache and compare with ``store``.

    The real build must have run first (its results are looked up by action
    key in ``store``). ``scratch`` keeps the scratch cache and out dir there
    (``scratch/cache``, ``scratch/out``); by default they live in a temporary
    directory beside the cache and are removed afterwards.
    """
    import time

    from .engine import Engine
    from .store import Store

    started = time.monotonic()
    keep = scratch is not None
    root = Path(scratch) if keep else Path(tempfile.mkdtemp(prefix="rebuild-", dir=store.root))
    report = RebuildReport()
    try:
        with Store(root / "cache") as fresh:
            engine = Engine(graph, fresh, project=project, out_dir=root / "out", jobs=jobs, keep_going=True,
                            on_event=on_event)
            result = engine.build(names)
            real_history = _History(store.root)
            differed: set[str] = set()
            for name, res in result.targets.items():
                node = graph.nodes[name]
                report.steps[name] = node.step.name
                last = real_history.load(name) or {}
                old = _record(store, last.get("key"))
                if not res.ok or res.key is None:
                    report.targets[name] = f"not compared: the rebuild {res.status} ({res.reason})"
                    continue
                if old is None:
                    report.targets[name] = "not compared: no current build of it in the cache (build it first)"
                    continue
                new = fresh.get_action(res.key)
                if new is None:  # cannot happen for a built/cached target; be explicit anyway
                    report.targets[name] = "not compared: the rebuild left no record"
                    continue
                fed_by_difference = any(p in differed for p in graph.producers(name))
                measured = measurement_files(node.step)
                diffs = compare_manifests(
                    name, node.step.name, old.manifest, new.manifest,
                    lambda p, m=old.manifest: _blob(store, m, p),
                    lambda p, m=new.manifest: _blob(fresh, m, p),
                    downstream=fed_by_difference, measurements=measured,
                )
                skipped = uncompared(name, node.step.name, old.manifest, new.manifest, measured)
                report.not_compared.extend(skipped)
                if diffs:
                    differed.add(name)
                    report.targets[name] = "differs"
                    report.differences.extend(diffs)
                    if not fed_by_difference and old.key == res.key:
                        save_verdict(store.root, old.key, name, node.step.name, "differs", diffs, skipped)
                else:
                    report.targets[name] = "identical"
                    if old.key == res.key:
                        save_verdict(store.root, old.key, name, node.step.name, "identical", [], skipped)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    report.duration_s = time.monotonic() - started
    return report


def _History(cache_dir: Path):
    from .history import History

    return History(cache_dir)


def _record(store, key: str | None):
    if not key:
        return None
    try:
        rec = store.get_action(key)
    except Exception:  # noqa: BLE001 - an unreadable record is "not built" here
        return None
    if rec is None or store.missing_or_corrupt(rec.manifest):
        return None
    return rec


def _blob(store, manifest: Manifest, path: str) -> Path:
    entry = next(e for e in manifest.entries if e.path == path)
    return store.blob_path(entry.digest, entry.executable)


# -- against a bundle or an out dir made elsewhere --------------------------------------


def compare_against(graph, store, results: dict[str, Any], other: Path) -> RebuildReport:
    """Compare this cache's outputs of the built targets with ``other``.

    ``other`` is a release bundle (directory or ``.tar.gz``), an extracted
    release (a directory with ``MANIFEST.json``) or an ``out/`` directory
    (``other/<target>/...``). Only targets present in ``other`` are compared.
    ``results`` maps target -> TargetResult of the local build.
    """
    import time

    from .hashing import Entry
    from .bundle import MANIFEST_NAME, bundle_files, sha256_file

    started = time.monotonic()
    report = RebuildReport()
    other = Path(other)
    archive = other if other.is_file() else next(iter(sorted(other.glob("*.tar.gz"))), None)
    theirs: dict[str, dict[str, tuple[str, bool]]] = {}  # target -> path -> (sha256, executable)
    if archive is not None or (other / MANIFEST_NAME).is_file():
        manifest = json.loads(_read_manifest(archive, other))
        for rel, info in manifest["files"].items():
            target, _, path = rel.partition("/")
            theirs.setdefault(target, {})[path] = (info["sha256"], bool(info.get("executable")))
    else:
        for d in sorted(p for p in other.iterdir() if p.is_dir()):
            theirs[d.name] = {p.relative_to(d).as_posix(): (sha256_file(p), bool(p.stat().st_mode & 0o111))
                              for p in sorted(d.rglob("*")) if p.is_file()}
    tmp = Path(tempfile.mkdtemp(prefix="against-", dir=store.root))
    try:
        for name, res in results.items():
            if name not in theirs:
                continue
            step = graph.nodes[name].step.name
            report.steps[name] = step
            rec = _record(store, res.key)
            if rec is None:
                report.targets[name] = "not compared: not built here"
                continue
            # Their side as a Manifest keyed by sha256 (digests only need to be comparable).
            mine = Manifest([Entry(e.path, e.executable, "b3:" + sha256_file(store.blob_path(e.digest, e.executable)), e.size)
                             for e in rec.manifest.entries])
            their = Manifest([Entry(p, exe, "b3:" + sha, 0) for p, (sha, exe) in theirs[name].items()])

            def their_file(path: str, name=name) -> Path:
                dest = tmp / name / path
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if archive is not None:
                        for rel, _m, fh in bundle_files(archive):
                            if rel == f"{name}/{path}" and fh is not None:
                                dest.write_bytes(fh.read())
                                break
                    elif (other / name / path).is_file():
                        shutil.copyfile(other / name / path, dest)
                return dest

            measured = measurement_files(graph.nodes[name].step)
            diffs = compare_manifests(name, step, their, mine, their_file,
                                      lambda p, m=rec.manifest: _blob(store, m, p), measurements=measured)
            report.not_compared.extend(uncompared(name, step, their, mine, measured))
            report.targets[name] = "differs" if diffs else "identical"
            report.differences.extend(diffs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not report.targets:
        report.targets["(none)"] = f"not compared: {other} holds none of the built targets"
    report.duration_s = time.monotonic() - started
    return report


def _read_manifest(archive: Path | None, other: Path) -> bytes:
    from .bundle import MANIFEST_NAME, bundle_files

    if archive is not None:
        for rel, _m, fh in bundle_files(archive):
            if rel == MANIFEST_NAME and fh is not None:
                return fh.read()
    return (other / MANIFEST_NAME).read_bytes()
