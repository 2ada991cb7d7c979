"""A tiny step plugin installed for real (a ``.dist-info`` with an entry point on
``PYTHONPATH``), so that both in-process builds and ``modelbuild`` subprocesses
find it the way they find any third-party plugin. No ML imports.

Steps: ``maconly`` (needs macOS; ``MODELBUILD_HOST_PLATFORM=macos`` satisfies
it) and ``latemac`` (finds out only while running that it needs macOS).

Example::

    def test_x(project, monkeypatch, tmp_path):
        install_test_steps(tmp_path, monkeypatch)
        project.recipe("[targets.m]\\nstep = 'maconly'\\n")
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["install_test_steps"]

MODULE = "mb_plugin_steps"

SOURCE = '''
from modelbuild.step import Input, PlatformUnavailable, Requirements, Step


class MacOnly(Step):
    name = "maconly"
    inputs = {"src": Input(kinds=("any",), optional=True)}
    output = "files"
    requires = Requirements(platforms=("macos",))

    def run(self, ctx):
        (ctx.out / "x").write_text("mac")

    def elsewhere(self, target, params):
        return f"xcrun do-it {target}"


class LateMac(Step):
    name = "latemac"
    output = "files"

    def run(self, ctx):
        raise PlatformUnavailable("macOS", command="run it on a Mac")
'''


def install_test_steps(tmp_path: Path, monkeypatch) -> Path:
    """Write the plugin module and its dist-info under ``tmp_path`` and put it on the path."""
    folder = tmp_path / "plugin-site"
    dist = folder / "mb_plugin_steps-0.1.dist-info"
    dist.mkdir(parents=True)
    (folder / f"{MODULE}.py").write_text(SOURCE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-plugin-steps\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[modelbuild.steps]\nmaconly = mb_plugin_steps:MacOnly\nlatemac = mb_plugin_steps:LateMac\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    importlib.invalidate_caches()
    return folder
