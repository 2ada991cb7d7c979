"""Reproducible releases: bundles, bundle verification, rebuild checks, the lock, whence.

Command-step recipes only: no ML stack, seconds per test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile

import pytest

from modelbuild.api import lock, release, release_verify, verify, whence
from modelbuild.bundle import ReleaseError
from modelbuild.lockfile import Lock, LockStale

from .conftest import CHAIN, Project, run_cli

# A step whose output changes every run: nanoseconds of the clock.
CLOCK = """
[targets.clock]
step = "command"
inputs = { src = "b" }
command = "cat $MODELBUILD_INPUT_SRC/b.txt > $MODELBUILD_OUT/stamp.txt; date +%s%N >> $MODELBUILD_OUT/stamp.txt"
outs = ["stamp.txt"]

[targets.after-clock]
step = "command"
inputs = { src = "clock" }
command = "wc -c < $MODELBUILD_INPUT_SRC/stamp.txt > $MODELBUILD_OUT/n.txt"
outs = ["n.txt"]

[targets.meta]
step = "command"
inputs = { src = "b" }
command = "printf '{{\\"a\\": 1, \\"when\\": \\"%s\\"}}' $(date +%s%N) > $MODELBUILD_OUT/meta.json"
outs = ["meta.json"]
"""


def _project(tmp_path, name: str) -> Project:
    p = Project(tmp_path / name)
    p.recipe(CHAIN)
    p.file("data.txt", "data\n")
    return p


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_releases_from_two_clean_caches_have_the_same_archive(tmp_path):
    a, b = _project(tmp_path, "a"), _project(tmp_path, "b")
    ra = release(["c", "b"], project=a.root, output=a.root / "dist")
    rb = release(["c", "b"], project=b.root, output=b.root / "dist")
    assert ra.bundle.archive_sha256 == rb.bundle.archive_sha256
    assert _sha(ra.bundle.archive) == ra.bundle.archive_sha256
    assert ra.reproducibility == {"a": "rebuilt identical", "b": "rebuilt identical", "c": "rebuilt identical"}
    assert (ra.bundle.directory / "MANIFEST.json").read_bytes() == (rb.bundle.directory / "MANIFEST.json").read_bytes()
    # The archive's normalized form: sorted, fixed mtime, root-owned, no names, 0644/0755.
    with tarfile.open(ra.bundle.archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=str.encode)
    assert "c/MANIFEST.json" in names and "c/c/c.txt" in names and "c/b/b.txt" in names
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(946684800, 0, 0, "", "")}
    assert {m.mode for m in members if m.isfile()} == {0o644}
    assert not any(m.pax_headers for m in members)
    raw = ra.bundle.archive.read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip: mtime 0, no file name
    manifest = json.loads((ra.bundle.directory / "MANIFEST.json").read_text())
    assert manifest["files"]["c/c.txt"]["sha256"] == hashlib.sha256(b"ATAD\nOLLEH\n").hexdigest()
    assert set(manifest["chain"]) == {"a", "b", "c"}
    assert manifest["chain"]["a"]["key_record"]["sources"]["data.txt"].startswith("b3:")
    assert "recipes/main.toml" in manifest["recipes"] and "targets.c" in manifest["recipes"]["recipes/main.toml"]
    assert manifest["toolchain"]["python"]
    assert release_verify(ra.bundle.directory).ok


@pytest.mark.slow
def test_source_date_epoch_sets_the_mtime(project, monkeypatch):
    project.recipe(CHAIN)
    project.file("data.txt", "data\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    made = release(["c"], project=project.root, output=project.root / "dist")
    with tarfile.open(made.bundle.archive) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


@pytest.mark.slow
def test_tampered_missing_and_extra_files_are_named(chain, tmp_path):
    made = release(["c"], project=chain.root, output=chain.root / "dist")
    extracted = tmp_path / "x"
    with tarfile.open(made.bundle.archive) as tar:
        tar.extractall(extracted, filter="data")
    tree = extracted / "c"
    assert release_verify(tree).ok

    path = tree / "c" / "c.txt"
    data = bytearray(path.read_bytes())
    data[2] ^= 1
    path.write_bytes(bytes(data))
    check = release_verify(tree)
    assert check.problems == [check.problems[0]] and check.problems[0].startswith("tampered file: c/c.txt")

    path.unlink()
    (tree / "c" / "new.bin").write_bytes(b"x")
    problems = release_verify(tree).problems
    assert any(p.startswith("missing file: c/c.txt") for p in problems)
    assert any(p.startswith("extra file: c/new.bin") for p in problems)

    # One byte of the archive itself: the provenance's digest names it.
    archive = made.bundle.archive
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    archive.write_bytes(bytes(blob))
    problems = release_verify(made.bundle.directory).problems
    assert any(archive.name in p for p in problems), problems

    # The CLI: one line per problem, non-zero exit.
    proc = run_cli("release", "verify", str(tree), cwd=chain.root)
    assert proc.returncode == 1
    assert "missing file: c/c.txt" in proc.stdout and "extra file: c/new.bin" in proc.stdout


@pytest.mark.slow
def test_an_archive_member_tampered_inside_a_rewritten_archive_is_named(chain, tmp_path):
    made = release(["c"], project=chain.root, output=chain.root / "dist")
    bad = tmp_path / "c.tar.gz"
    with tarfile.open(made.bundle.archive) as src, gzip.open(bad, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == "c/c/c.txt":
                data = b"X" + data[1:]
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    assert release_verify(bad).problems == [release_verify(bad).problems[0]]
    assert release_verify(bad).problems[0].startswith("tampered file: c/c.txt")


@pytest.mark.slow
def test_nondeterministic_step_is_named_and_refused(chain):
    chain.recipe(CLOCK, name="clock.toml")
    report = verify("after-clock", rebuild=True, project=chain.root)
    assert not report.ok
    assert report.culprits == ["clock"]
    assert report.targets["b"] == "identical"
    first = report.differences[0]
    assert (first.target, first.step, first.file) == ("clock", "command", "stamp.txt")
    assert len("DATA\nHELLO\n") <= first.offset < len("DATA\nHELLO\n") + 19  # within the clock's digits
    assert any(d.target == "after-clock" and d.downstream for d in report.differences) or report.targets["after-clock"] == "identical"

    with pytest.raises(ReleaseError, match=r"not reproducible: clock \(command\): stamp.txt differs at byte \d+"):
        release(["clock"], project=chain.root, output=chain.root / "dist")
    made = release(["clock"], project=chain.root, output=chain.root / "dist", allow_nondeterministic=["clock"])
    manifest = made.bundle.manifest
    assert manifest["nondeterministic"]["steps"]["clock"].startswith("differs: stamp.txt differs at byte ")
    assert "(allowed by --allow-nondeterministic)" in manifest["nondeterministic"]["steps"]["clock"]
    assert manifest["nondeterministic"]["files"] == ["clock/stamp.txt"]
    assert made.reproducibility["b"] == "rebuilt identical"

    proc = run_cli("verify", "clock", "--rebuild", cwd=chain.root)
    assert proc.returncode == 1
    assert re.search(r"clock \(command\): stamp\.txt: differs at byte \d+", proc.stdout), proc.stdout
    assert "not reproducible: clock (command)" in proc.stderr


@pytest.mark.slow
def test_json_difference_names_the_key(chain):
    chain.recipe(CLOCK, name="clock.toml")
    report = verify("meta", rebuild=True, project=chain.root)
    assert report.targets["meta"] == "differs", report.targets
    [d] = report.differences
    assert d.file == "meta.json" and "JSON key when" in d.where


@pytest.mark.slow
def test_verify_rebuild_identical_and_against_a_bundle(chain):
    report = verify("c", rebuild=True, project=chain.root)
    assert report.ok and report.targets == {"a": "identical", "b": "identical", "c": "identical"}
    made = release(["c"], project=chain.root, output=chain.root / "dist")
    assert verify("c", against=made.bundle.directory, project=chain.root).ok
    (chain.root / "data.txt").write_text("dat\n")  # c.txt changes from its second byte... reversed: offset 1
    other = verify("c", against=made.bundle.directory, project=chain.root)
    assert not other.ok
    [d] = other.differences
    assert (d.target, d.file, d.what) == ("c", "c.txt", "differs")
    assert d.offset == 0  # "ATAD\n" vs "TAD\n"


@pytest.mark.slow
def test_lock_and_frozen_build(chain):
    with pytest.raises(LockStale, match="no modelbuild.lock"):
        chain.build("c", frozen=True)
    chain.recipe(CHAIN + """
[targets.ckpt]
step = "fetch"
source = "ckpt"
""")
    chain.file("ckpt/config.json", "{}")
    chain.file("ckpt/weights.gguf", "not really")
    chain.recipe("[targets.uses]\nstep = \"command\"\ninputs = { m = \"ckpt\", c = \"c\" }\ncommand = \"true\"\n", name="uses.toml")
    made = lock(["uses"], project=chain.root)
    text = made.path.read_text()
    assert made.path.name == "modelbuild.lock" and "[fetch.ckpt]" in text and 'kind = "local"' in text
    locked = Lock.read(made.path)
    assert locked.fetch["ckpt"]["content"].startswith("b3:")
    assert locked.toolchain["python"] and "torch" in locked.toolchain
    assert chain.build("uses", frozen=True).ok
    assert lock(["uses"], project=chain.root).changed is False  # stable: same bytes when nothing changed

    (chain.root / "ckpt" / "weights.gguf").write_text("changed")
    with pytest.raises(LockStale, match="fetch ckpt: content"):
        chain.build("uses", frozen=True)
    lock(["uses"], project=chain.root, update=["ckpt"])
    assert chain.build("uses", frozen=True).ok

    (chain.root / "recipes" / "main.toml").write_text(CHAIN.replace("rev <", "rev -- <") + '\n[targets.ckpt]\nstep = "fetch"\nsource = "ckpt"\n')
    with pytest.raises(LockStale, match="recipe digest changed"):
        chain.build("uses", frozen=True)
    proc = run_cli("build", "--frozen", "uses", cwd=chain.root)
    assert proc.returncode == 1 and "modelbuild.lock is stale: recipe digest changed" in proc.stderr


def test_frozen_refuses_another_toolchain(chain):
    lock(["c"], project=chain.root)
    path = chain.root / "modelbuild.lock"
    path.write_text(path.read_text().replace('python = "', 'python = "0.'))
    with pytest.raises(LockStale, match=r"toolchain differs: python 0\."):
        chain.build("c", frozen=True)


@pytest.mark.slow
def test_release_with_a_lock_uses_its_epoch(chain):
    made_lock = lock(["c"], project=chain.root)
    made = release(["c"], project=chain.root, output=chain.root / "dist")
    assert made.bundle.manifest["source_date_epoch"] == made_lock.lock.source_date_epoch
    assert made.bundle.manifest["lock"]["recipe_digest"] == made_lock.lock.recipe_digest


@pytest.mark.slow
def test_whence_finds_the_producer_and_its_chain(chain):
    chain.build()
    [origin] = whence(str(chain.out / "c" / "c.txt"), project=chain.root)
    assert (origin.target, origin.step, origin.path) == ("c", "command", "c.txt")
    assert origin.params["command"].startswith("rev")
    [b] = origin.inputs["src"]
    [a] = b.inputs["src"]
    assert (b.target, a.target) == ("b", "a")
    assert a.source == {"content": {"data.txt": a.source["content"]["data.txt"]}}
    proc = run_cli("whence", "out/c/c.txt", cwd=chain.root)
    assert proc.returncode == 0 and "c (command) holds c.txt" in proc.stdout and "<- src:" in proc.stdout
    assert run_cli("whence", "b3:" + "0" * 64, cwd=chain.root).returncode == 1


@pytest.mark.slow
def test_provenance_and_sbom(chain):
    made = release(["c"], project=chain.root, output=chain.root / "dist")
    statement = json.loads((made.bundle.directory / "provenance.intoto.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects["c.tar.gz"] == made.bundle.archive_sha256
    assert subjects["c/c/c.txt"] == hashlib.sha256(b"ATAD\nOLLEH\n").hexdigest()
    build_def = statement["predicate"]["buildDefinition"]
    assert build_def["externalParameters"]["targets"] == ["c"]
    assert set(build_def["internalParameters"]["actionKeys"]) == {"a", "b", "c"}
    assert build_def["internalParameters"]["reproducibility"]["c"] == "rebuilt identical"
    sbom = json.loads((made.bundle.directory / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    assert any(c["name"].lower() == "pydantic" for c in sbom["components"])
    byproducts = {b["name"] for b in statement["predicate"]["runDetails"]["byproducts"]}
    assert "sbom.cdx.json" in byproducts


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH ssh-keygen")
def test_signed_release_verifies_and_a_bad_signature_fails(chain, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci@example", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("ci@example " + (tmp_path / "id_ed25519.pub").read_text().split(" ", 2)[0] + " "
                       + (tmp_path / "id_ed25519.pub").read_text().split(" ", 2)[1] + "\n")
    made = release(["c"], project=chain.root, output=chain.root / "dist", sign_key=key)
    check = release_verify(made.bundle.directory, allowed_signers=allowed)
    assert check.ok, check.problems
    assert any("good signature by ci@example" in n for n in check.notes)
    stmt = made.bundle.directory / "provenance.intoto.json"
    stmt.write_text(stmt.read_text().replace('"c"', '"d"', 1))
    problems = release_verify(made.bundle.directory).problems
    assert any(p.startswith("bad signature: provenance.intoto.json.sig") for p in problems), problems


def test_release_refuses_a_failed_build(chain):
    chain.recipe('[targets.bad]\nstep = "command"\ncommand = "exit 3"\n', name="bad.toml")
    with pytest.raises(ReleaseError, match="cannot release: bad failed"):
        release(["bad"], project=chain.root, output=chain.root / "dist")
    assert not (chain.root / "dist" / "bad").exists()
