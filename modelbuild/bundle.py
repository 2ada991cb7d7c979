"""Release bundles: a deterministic archive plus a manifest that traces every file.

A bundle is a directory ``dist/NAME/``::

    NAME.tar.gz               the archive: NAME/MANIFEST.json and NAME/<target>/<file>...
    MANIFEST.json             the same bytes as the archive's manifest, readable without unpacking
    provenance.intoto.json    in-toto Statement v1, SLSA provenance v1 predicate (provenance.py)
    sbom.cdx.json             CycloneDX SBOM of the Python environment that built it
    timings.json              validation figures that are timings (not reproducible; outside the archive)
    provenance.intoto.json.sig   with --sign: an OpenSSH signature of the statement

The archive is byte-for-byte reproducible: entries sorted by path, every
mtime ``SOURCE_DATE_EPOCH`` (else the lock's ``source_date_epoch``, else
2000-01-01), uid/gid 0 with empty owner names, modes 0644/0755, GNU tar
headers (no pax records, so no access or change times), gzip with mtime 0 and
no file name. Its files come from the store's blobs, never from ``out/``.
What depends on the machine that built it (the SBOM, the builder in the
provenance) or on the clock (timings) stays beside the archive.

Example::

    files = {"tiny/model.pte": Path("..."), ...}
    write_archive(Path("dist/x/x.tar.gz"), "x", files, manifest_bytes, mtime=946684800)
    problems = verify_bundle(Path("dist/x"))   # [] when intact
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "DEFAULT_EPOCH",
    "ReleaseError",
    "Bundle",
    "sha256_file",
    "write_archive",
    "manifest_bytes",
    "source_date_epoch",
    "split_timings",
    "verify_bundle",
    "bundle_files",
]

MANIFEST_FORMAT = "modelbuild-release/1"
MANIFEST_NAME = "MANIFEST.json"
#: The archive's mtime when neither SOURCE_DATE_EPOCH nor a lock gives one (as the store's blobs).
DEFAULT_EPOCH = 946_684_800
#: Files of a bundle directory besides the archive (anything else is an extra file).
SIDE_FILES = ("MANIFEST.json", "provenance.intoto.json", "sbom.cdx.json", "timings.json", "provenance.intoto.json.sig")

from .errors import ModelbuildError  # noqa: E402


class ReleaseError(ModelbuildError):
    """A release could not be made (a failed build, a non-reproducible step, ...)."""


@dataclass(frozen=True)
class Bundle:
    """Where a release was written and what it is."""

    name: str
    directory: Path
    archive: Path
    archive_sha256: str
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "directory": str(self.directory), "archive": str(self.archive),
                "archive_sha256": self.archive_sha256, "files": len(self.manifest.get("files", {}))}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_date_epoch(lock_epoch: int | None = None) -> int:
    """``SOURCE_DATE_EPOCH`` if set, else the lock's epoch, else :data:`DEFAULT_EPOCH`."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ReleaseError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {env!r}") from None
    return int(lock_epoch) if lock_epoch else DEFAULT_EPOCH


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest's canonical bytes (sorted keys, 2-space indent, trailing newline)."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


#: Names that read as timings, for verdicts that do not list their timing figures (older caches).
_TIMING = ("_per_s", "_time_s", "_ms", "latency", "memory", "peak_rss", "duration", "seconds")


def _is_timing(name: str) -> bool:
    return any(t in name for t in _TIMING)


def split_timings(figures: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(reproducible figures, timing figures) of a validation verdict.

    Speeds, latencies, load times and memory peaks change from run to run;
    they stay out of the reproducible manifest (and the archive). The
    validate step's verdict names them (``timing_figures``: the figures read
    from its ``timings.json``); the checks and expectations on them move
    with them. Without that list, names that read as timings move.
    """
    declared = figures.get("timing_figures")
    timed = set(declared) if isinstance(declared, list) else None

    def timing(figure: str) -> bool:
        return figure in timed if timed is not None else _is_timing(figure)

    keep: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    moved_params: set[str] = set()
    checks = figures.get("checks")
    if isinstance(checks, list):
        keep["checks"] = [c for c in checks if not (isinstance(c, dict) and timing(str(c.get("figure", ""))))]
        moved = [c for c in checks if c not in keep["checks"]]
        moved_params = {str(c.get("expectation")) for c in moved}
        if moved:
            timings["checks"] = moved
    for k, v in figures.items():
        if k in ("checks", "timing_figures"):
            continue
        if k == "expectations" and isinstance(v, dict):
            keep[k] = {n: x for n, x in v.items() if n not in moved_params and not (timed is None and _is_timing(n))}
        elif timing(k):
            timings[k] = v
        else:
            keep[k] = v
    return keep, timings


def _info(name: str, size: int, mode: int, mtime: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.type = kind
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(path: Path, name: str, files: dict[str, tuple[Path, bool]], manifest: bytes, *, mtime: int) -> str:
    """Write ``path`` (tar.gz) deterministically; return its sha256.

    ``files`` maps a path inside the release (``target/file``) to (a readable
    file, executable bit). Members are ``name/MANIFEST.json`` and
    ``name/<path>``, plus their parent directories, sorted by path.
    """
    members: dict[str, tuple[Path | None, bool]] = {f"{name}/{MANIFEST_NAME}": (None, False)}
    for rel, (src, exe) in files.items():
        members[f"{name}/{rel}"] = (src, exe)
    dirs = set()
    for member in members:
        head = member.rpartition("/")[0]
        while head:
            dirs.add(head)
            head = head.rpartition("/")[0]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for member in sorted(set(members) | dirs, key=lambda m: m.encode()):
                    if member in dirs:
                        tar.addfile(_info(member, 0, 0o755, mtime, tarfile.DIRTYPE))
                        continue
                    src, exe = members[member]
                    if src is None:
                        tar.addfile(_info(member, len(manifest), 0o644, mtime), io.BytesIO(manifest))
                    else:
                        with open(src, "rb") as fh:
                            size = os.fstat(fh.fileno()).st_size
                            tar.addfile(_info(member, size, 0o755 if exe else 0o644, mtime), fh)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return sha256_file(path)


# -- reading and verifying a bundle ---------------------------------------------------------------


def _archive_of(directory: Path) -> Path | None:
    found = sorted(directory.glob("*.tar.gz"))
    return found[0] if len(found) == 1 else None


def bundle_files(archive: Path) -> Iterator[tuple[str, tarfile.TarInfo, Any]]:
    """(path inside the release, member, open file) for each regular file of an archive.

    The path drops the leading ``NAME/``. Raises ReleaseError if the archive
    cannot be read (a damaged gzip stream cannot say which member it hit).
    """
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                rel = member.name.partition("/")[2]
                if member.isfile():
                    yield rel, member, tar.extractfile(member)
                elif not member.isdir():
                    yield rel, member, None
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as err:
        raise ReleaseError(f"{archive.name}: the archive is damaged ({err})") from None


def verify_bundle(path: Path) -> list[str]:
    """Check a release against its manifest; one line per problem, each naming the file.

    ``path`` is a bundle directory (``NAME.tar.gz`` beside ``MANIFEST.json``),
    a lone ``NAME.tar.gz``, or a tree extracted from the archive (a directory
    holding ``MANIFEST.json`` and the files). Checks:

    - every file the manifest lists is there with its sha256, size and
      executable bit ("tampered file", "missing file");
    - nothing else is there ("extra file");
    - in a bundle directory: its MANIFEST.json is the archive's, and the
      provenance statement names the archive's sha256.

    A signature is checked by the api (it needs the allowed signers).
    """
    path = Path(path)
    if path.is_file():
        return _check_archive(path)[0]
    if not path.is_dir():
        return [f"{path}: no such bundle"]
    archives = sorted(path.glob("*.tar.gz"))
    if not archives:
        return _check_tree(path)
    if len(archives) > 1:
        return [f"{path}: more than one archive ({', '.join(a.name for a in archives)})"]
    problems = _check_archive_digest(path, archives[0])
    found, inner = _check_archive(archives[0])
    problems.extend(found)
    if inner is not None:
        problems.extend(_check_directory(path, archives[0], inner))
    return problems


def _compare(listed: dict[str, dict[str, Any]], seen: dict[str, tuple[str, int, bool]], where: str) -> list[str]:
    problems = []
    for rel in sorted(set(listed) | set(seen)):
        want, got = listed.get(rel), seen.get(rel)
        if want is None:
            problems.append(f"extra file: {rel} (in the {where}, not in the manifest)")
        elif got is None:
            problems.append(f"missing file: {rel} (listed in the manifest, not in the {where})")
        elif got[0] != want.get("sha256") or got[1] != want.get("size"):
            problems.append(f"tampered file: {rel} (sha256 {got[0][:12]}..., the manifest says {str(want.get('sha256'))[:12]}...)")
        elif got[2] != bool(want.get("executable")):
            problems.append(f"tampered file: {rel} (executable bit differs from the manifest)")
    return problems


def _listed(manifest: bytes) -> dict[str, dict[str, Any]]:
    data = json.loads(manifest)
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
    return data["files"]


def _check_archive(archive: Path) -> tuple[list[str], bytes | None]:
    inner: bytes | None = None
    seen: dict[str, tuple[str, int, bool]] = {}
    problems: list[str] = []
    try:
        for rel, member, fh in bundle_files(archive):
            if fh is None:
                problems.append(f"extra file: {member.name} (not a regular file)")
            elif rel == MANIFEST_NAME:
                inner = fh.read()
            else:
                h = hashlib.sha256()
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
                seen[rel] = (h.hexdigest(), member.size, bool(member.mode & 0o111))
    except ReleaseError as err:
        return [str(err)], None
    if inner is None:
        return [f"missing file: {MANIFEST_NAME} (not in {archive.name})"], None
    try:
        listed = _listed(inner)
    except (ValueError, KeyError, TypeError) as err:
        return [f"tampered file: {MANIFEST_NAME} (unreadable: {err})"], None
    return problems + _compare(listed, seen, archive.name), inner


def _check_tree(root: Path) -> list[str]:
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return [f"missing file: {MANIFEST_NAME} ({root} is neither a bundle nor an extracted release)"]
    try:
        listed = _listed(manifest.read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        return [f"tampered file: {MANIFEST_NAME} (unreadable: {err})"]
    seen: dict[str, tuple[str, int, bool]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir() or p == manifest:
            continue
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        seen[rel] = (sha256_file(p), st.st_size, bool(st.st_mode & 0o111))
    return _compare(listed, seen, "directory")


def _check_directory(directory: Path, archive: Path, inner_manifest: bytes) -> list[str]:
    """The side files of a bundle directory: its MANIFEST.json, nothing extra, the provenance's digest."""
    problems = []
    outer = directory / MANIFEST_NAME
    if not outer.is_file():
        problems.append(f"missing file: {MANIFEST_NAME} (beside the archive)")
    elif outer.read_bytes() != inner_manifest:
        problems.append(f"tampered file: {MANIFEST_NAME} (differs from the archive's copy)")
    allowed = {archive.name, *SIDE_FILES}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_dir():
            continue
        if rel not in allowed:
            problems.append(f"extra file: {rel} (not part of a bundle)")
    return problems


def _check_archive_digest(directory: Path, archive: Path) -> list[str]:
    """The archive's sha256 against the provenance statement's subject (names the archive if changed)."""
    statement = directory / "provenance.intoto.json"
    if not statement.is_file():
        return [f"missing file: provenance.intoto.json (beside {archive.name})"]
    try:
        subjects = json.loads(statement.read_text()).get("subject", [])
        digest = next((s["digest"]["sha256"] for s in subjects if s.get("name") == archive.name), None)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return [f"tampered file: provenance.intoto.json (unreadable: {err})"]
    if digest is None:
        return [f"tampered file: provenance.intoto.json (names no subject {archive.name})"]
    actual = sha256_file(archive)
    if digest != actual:
        return [f"tampered file: {archive.name} (sha256 {actual[:12]}..., the provenance says {digest[:12]}...)"]
    return []
