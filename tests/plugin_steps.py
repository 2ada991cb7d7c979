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

from pathlib import Path

from tests.plugin_site import install_plugin

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
    return install_plugin(tmp_path, monkeypatch, module=MODULE, source=SOURCE, steps={'maconly': 'MacOnly', 'latemac': 'LateMac'})
