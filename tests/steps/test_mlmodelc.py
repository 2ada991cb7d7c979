"""The mlmodelc step, with a stand-in ``xcrun`` on PATH (and the real one on macOS)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from modelbuild.errors import PlatformUnavailable, StepError
from modelbuild.step import unmet_requirement
from modelbuild.steps.mlmodelc import MLModelCStep, xcode_versions
from modelbuild.testing import as_artifact, run_step

# A stand-in for Apple's xcrun: logs its argv, answers version probes, and
# "compiles" according to FAKE_XCRUN_MODE (ok | fail | empty | nomarker).
FAKE_XCRUN = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open(os.environ["FAKE_XCRUN_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    mode = os.environ.get("FAKE_XCRUN_MODE", "ok")
    if args == ["--show-sdk-version"]:
        print("15.0"); sys.exit(0)
    if args == ["coremlcompiler", "version"]:
        print(os.environ.get("FAKE_COMPILER_VERSION", "3404.4.1")); sys.exit(0)
    if args[:2] != ["coremlcompiler", "compile"] or len(args) != 4:
        print("xcrun: error: unknown invocation", file=sys.stderr); sys.exit(72)
    src, dest = Path(args[2]), Path(args[3])
    if mode == "fail":
        print("coremlcompiler: error: compiler error: Espresso exception: bad op", file=sys.stderr)
        sys.exit(1)
    if mode == "empty":
        sys.exit(0)
    out = dest / (src.stem + ".mlmodelc")
    out.mkdir(parents=True)
    (out / "model.mil").write_text("program(1.0)\\n")
    if mode != "nomarker":
        (out / "coremldata.bin").write_bytes(b"compiled:" + (src / "Manifest.json").read_bytes())
    print(str(out))
    """
)


@pytest.fixture
def fake_xcrun(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xcrun"
    script.write_text(FAKE_XCRUN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log = tmp_path / "xcrun.log"
    # Only the stand-in bin dir (plus /bin for the interpreter's needs): no real xcodebuild.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/bin")
    monkeypatch.setenv("FAKE_XCRUN_LOG", str(log))
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture
def mlpackage(tmp_path):
    """A minimal stand-in mlpackage artifact (the compiler is fake too)."""
    art = tmp_path / "pkg"
    pkg = art / "model.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"spec")
    return as_artifact(art, "mlpackage", "conv-mlpackage")


def test_compiles_with_the_expected_invocation(fake_xcrun, mlpackage, tmp_path):
    out = tmp_path / "out"
    art = run_step(MLModelCStep, {}, {"model": mlpackage}, out, target="conv-mlmodelc")
    compile_calls = [c for c in fake_xcrun() if c[:2] == ["coremlcompiler", "compile"]]
    assert len(compile_calls) == 1
    _, _, src, dest = compile_calls[0]
    assert Path(src) == mlpackage.path / "model.mlpackage"
    assert Path(dest).name == "compiled"  # a scratch dir, not the artifact itself
    assert (art.path / "model.mlmodelc" / "coremldata.bin").read_bytes().startswith(b"compiled:")
    record = json.loads((art.path / "mlmodelc.json").read_text())
    assert record["files"] == ["coremldata.bin", "model.mil"]
    assert record["compiler"] == {"coremlcompiler": "3404.4.1", "macos_sdk": "15.0"}
    assert record["size_bytes"] == sum(p.stat().st_size for p in (art.path / "model.mlmodelc").iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["mlmodelc.json", "model.mlmodelc"]


def test_compiler_failure_reports_its_stderr(fake_xcrun, mlpackage, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_XCRUN_MODE", "fail")
    with pytest.raises(StepError, match=r"coremlcompiler exited 1: .*Espresso exception: bad op"):
        run_step(MLModelCStep, {}, {"model": mlpackage}, tmp_path / "out")
    assert not (tmp_path / "out" / "model.mlmodelc").exists()


@pytest.mark.parametrize("mode", ["empty", "nomarker"])
def test_exit_zero_without_a_compiled_model_is_a_failure(fake_xcrun, mlpackage, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("FAKE_XCRUN_MODE", mode)
    with pytest.raises(StepError, match="exited 0 but wrote no model.mlmodelc/coremldata.bin"):
        run_step(MLModelCStep, {}, {"model": mlpackage}, tmp_path / "out")
    assert not (tmp_path / "out" / "model.mlmodelc").exists()


def test_missing_input_package(fake_xcrun, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StepError, match="has no model.mlpackage"):
        run_step(MLModelCStep, {}, {"model": empty}, tmp_path / "out")


def test_toolchain_versions_enter_the_key(fake_xcrun, monkeypatch):
    step = MLModelCStep()
    first = step.toolchain_versions()
    assert first["coremlcompiler"] == "3404.4.1"
    assert first["macos_sdk"] == "15.0"
    monkeypatch.setenv("FAKE_COMPILER_VERSION", "3500.1")
    assert step.toolchain_versions()["coremlcompiler"] == "3500.1"


def test_requirements_unmet_on_linux(mlpackage, monkeypatch):
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    step = MLModelCStep()
    req = step.requirements(step.Params(), {"model": "mlpackage"})
    assert req.platforms == ("macos",) and req.tools == ("xcrun",)
    assert unmet_requirement(req) == "macOS"
    command = step.elsewhere("conv-mlmodelc", step.Params())
    assert command.startswith("modelbuild build conv-mlmodelc")
    assert "xcrun coremlcompiler compile model.mlpackage" in command


def test_requirements_unmet_on_a_mac_without_xcrun(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    step = MLModelCStep()
    assert unmet_requirement(step.requirements(step.Params(), {})) == "xcrun on PATH"
    # Probing versions without the tools is quiet and still gives a key entry.
    assert xcode_versions() == {"xcode": "not available"}


def test_run_without_xcrun_is_platform_unavailable(mlpackage, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PlatformUnavailable) as err:
        run_step(MLModelCStep, {}, {"model": mlpackage}, tmp_path / "out", target="t")
    assert "xcrun coremlcompiler compile model.mlpackage out/t/" in str(err.value)


@pytest.mark.ml
@pytest.mark.skipif(sys.platform != "darwin" or shutil.which("xcrun") is None,
                    reason="platform: xcrun coremlcompiler exists only on macOS with Xcode")
def test_real_compiler(tmp_path):
    from modelbuild.ml.models.programs import tinyconv_program
    from modelbuild.steps.coreml import CoreMLStep

    prog = tinyconv_program(tmp_path / "prog")
    pkg = run_step(CoreMLStep, {}, {"program": prog}, tmp_path / "pkg")
    art = run_step(MLModelCStep, {}, {"model": as_artifact(pkg.path, "mlpackage")}, tmp_path / "out")
    assert (art.path / "model.mlmodelc" / "coremldata.bin").is_file()
    assert "coremlcompiler" in json.loads((art.path / "mlmodelc.json").read_text())["compiler"]


ENGINE_RECIPE = """\
[targets.conv-export]
step = "export"
module = "modelbuild.ml.models.tinyconv:make"
example_inputs = [{ shape = [1, 3, 32, 32], dtype = "float32" }]

[targets.conv-mlpackage]
step = "coreml"
inputs = { program = "conv-export" }

[targets.conv-mlmodelc]
step = "mlmodelc"
inputs = { model = "conv-mlpackage" }
"""


@pytest.mark.slow
@pytest.mark.ml
def test_engine_status_caching_and_errors(tmp_path, monkeypatch):
    """Through the engine: needs macOS on Linux, then built, cached, rebuilt for a new compiler, failed."""
    from modelbuild import api
    repo = Path(__file__).resolve().parents[2]
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "conv.toml").write_text(ENGINE_RECIPE)

    def build():
        return api.build(
            ["conv-mlmodelc"], project=repo, recipes=recipes, cache_dir=tmp_path / "cache",
            out_dir=tmp_path / "out", jobs=1, keep_going=True,
        ).targets

    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    first = build()
    assert first["conv-mlpackage"].status == "built"  # the rest of the graph still builds
    assert first["conv-mlmodelc"].status == "unavailable"
    assert "macOS" in first["conv-mlmodelc"].reason

    # A "Mac": the stand-in compiler on PATH (keeping the interpreter reachable).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xcrun"
    script.write_text(FAKE_XCRUN.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_XCRUN_LOG", str(tmp_path / "xcrun.log"))
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    built = build()
    assert built["conv-mlpackage"].status == "cached"
    assert built["conv-mlmodelc"].status == "built"
    assert (built["conv-mlmodelc"].out / "model.mlmodelc" / "coremldata.bin").is_file()

    assert build()["conv-mlmodelc"].status == "cached"

    monkeypatch.setenv("FAKE_COMPILER_VERSION", "3500.1")  # a new Xcode: the key changes
    rebuilt = build()["conv-mlmodelc"]
    assert rebuilt.status == "built"
    assert "3500.1" in rebuilt.reason or "coremlcompiler" in rebuilt.reason

    monkeypatch.setenv("FAKE_COMPILER_VERSION", "3600.0")
    monkeypatch.setenv("FAKE_XCRUN_MODE", "empty")  # exits 0, compiles nothing
    failed = build()["conv-mlmodelc"]
    assert failed.status == "failed"
    assert "wrote no model.mlmodelc" in failed.reason
    monkeypatch.setenv("FAKE_XCRUN_MODE", "ok")
    assert build()["conv-mlmodelc"].status == "built"  # the failure was not cached
