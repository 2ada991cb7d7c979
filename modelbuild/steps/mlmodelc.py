"""The ``mlmodelc`` step: ``.mlpackage`` -> compiled ``.mlmodelc`` (macOS only).

Runs ``xcrun coremlcompiler compile model.mlpackage <dir>``, which only exists
with Xcode on macOS. The step declares that (``platforms=("macos",)``,
``tools=("xcrun",)``), so on another host the engine gives the target the
"needs macOS" status with :meth:`MLModelCStep.elsewhere`'s command, and the
rest of the graph still builds. The compiler's version (and Xcode's, where
``xcodebuild`` answers) enters the action key through ``toolchain_versions``:
with ``--executor dask`` it is called on the Mac worker that will compile (a
Linux client has no ``xcrun`` to ask; docs/distributed.md).

The step never reports a compiled model that was not compiled: a compiler
that exits 0 but leaves no ``model.mlmodelc`` with a ``coremldata.bin`` is a
failure.

Recipe example::

    [targets.tinyconv-mlmodelc]
    step = "mlmodelc"
    inputs = { model = "tinyconv-mlpackage" }

Artifact: ``model.mlmodelc/`` and ``mlmodelc.json`` (compiler versions, size,
file list).
"""

from __future__ import annotations

import shutil
import subprocess

from modelbuild.errors import PlatformUnavailable, StepError
from modelbuild.step import Input, Params, Requirements, Step, StepContext

__all__ = ["MLModelCStep", "xcode_versions"]

FORMAT_VERSION = 1
#: What every compiled Core ML model holds; its absence means nothing was compiled.
MARKER = "coremldata.bin"
_PROBES = {
    # name in the key -> command; each is optional, the first two answer with
    # just the command line tools, xcodebuild needs a full Xcode.
    "coremlcompiler": ["xcrun", "coremlcompiler", "version"],
    "macos_sdk": ["xcrun", "--show-sdk-version"],
    "xcode": ["xcodebuild", "-version"],
}


def _probe(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = " ".join(done.stdout.split())
    return text if done.returncode == 0 and text else None


def xcode_versions() -> dict[str, str]:
    """Versions of the Core ML compiler, macOS SDK and Xcode that answer on this host.

    Missing tools are left out; with none at all the result is
    ``{"xcode": "not available"}``, so a later Mac build gets a different key.
    """
    found = {name: v for name, cmd in _PROBES.items() if (v := _probe(cmd)) is not None}
    return found or {"xcode": "not available"}


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


class MLModelCStep(Step):
    """mlpackage -> mlmodelc with xcrun coremlcompiler (see the module docstring)."""

    name = "mlmodelc"
    version = 1
    description = "Compile a Core ML .mlpackage to .mlmodelc (macOS, Xcode)"
    inputs = {"model": Input(kinds=("mlpackage",), doc="the .mlpackage to compile")}
    output = "mlmodelc"
    requires = Requirements(platforms=("macos",), tools=("xcrun",))

    class Params(Params):
        pass

    def toolchain_versions(self) -> dict[str, str]:
        versions = super().toolchain_versions()
        versions.update(xcode_versions())
        return versions

    def elsewhere(self, target: str, params: Params) -> str:
        return (
            f"modelbuild build {target}  "
            f"# on macOS with Xcode; it runs: xcrun coremlcompiler compile model.mlpackage out/{target}/"
        )

    def run(self, ctx: StepContext) -> None:
        src = ctx.inputs["model"].file("model.mlpackage")
        if not src.is_dir():
            raise StepError(f"input {ctx.inputs['model'].target} has no model.mlpackage")
        if shutil.which("xcrun") is None:
            raise PlatformUnavailable(
                needs="xcrun (Xcode on macOS)",
                command=f"xcrun coremlcompiler compile {src.name} out/{ctx.target}/",
            )
        dest = ctx.work / "compiled"
        dest.mkdir(parents=True, exist_ok=True)
        cmd = ["xcrun", "coremlcompiler", "compile", str(src), str(dest)]
        ctx.log("running: " + " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise StepError(f"could not run xcrun coremlcompiler: {exc}") from exc
        if done.stdout.strip():
            ctx.log(done.stdout.rstrip())
        if done.returncode != 0:
            detail = _tail(done.stderr) or _tail(done.stdout) or "no output"
            raise StepError(f"coremlcompiler exited {done.returncode}: {detail}")

        compiled = dest / (src.stem + ".mlmodelc")
        if not compiled.is_dir() or not (compiled / MARKER).is_file():
            found = sorted(p.name for p in dest.iterdir())
            raise StepError(
                f"coremlcompiler exited 0 but wrote no {compiled.name}/{MARKER} (found: {found or 'nothing'})"
            )
        target = ctx.out / "model.mlmodelc"
        shutil.copytree(compiled, target)
        files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
        size = sum((target / f).stat().st_size for f in files)
        ctx.write_json(
            "mlmodelc.json",
            {
                "format_version": FORMAT_VERSION,
                "compiled": "model.mlmodelc",
                "from": f"{ctx.inputs['model'].target}/model.mlpackage",
                "compiler": xcode_versions(),
                "size_bytes": size,
                "files": files,
            },
        )
        ctx.summary = f"{size / 1024:.1f} KiB mlmodelc, {len(files)} files"

