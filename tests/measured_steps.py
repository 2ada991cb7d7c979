"""A step plugin that declares a measurement file, installed for real like
tests/plugin_steps.py (a ``.dist-info`` with an entry point on the path), so the
engine's step processes find it. No ML imports.

``stopwatch`` writes ``result.txt`` (always the same bytes) and ``timings.json``
(the clock: different every run), and declares ``measurement_files =
("timings.json",)``; with ``leak = true`` it also writes the clock to
``clock.txt``, an undeclared file that therefore makes a rebuild differ.

Example::

    def test_x(tmp_path, monkeypatch):
        install_measured_steps(tmp_path, monkeypatch)
"""

from __future__ import annotations

from pathlib import Path

from tests.plugin_site import install_plugin

__all__ = ["install_measured_steps", "RECIPE"]

MODULE = "mb_measured_steps"

SOURCE = '''
import json
import time

from modelbuild.step import Params, Step


class StopwatchParams(Params):
    leak: bool = False


class Stopwatch(Step):
    name = "stopwatch"
    output = "files"
    measurement_files = ("timings.json",)
    Params = StopwatchParams

    def run(self, ctx):
        started = time.perf_counter_ns()
        (ctx.out / "result.txt").write_text("42\\n")
        took = time.perf_counter_ns() - started
        (ctx.out / "timings.json").write_text(json.dumps({"took_ns": took, "at_ns": time.time_ns()}))
        if ctx.params.leak:
            (ctx.out / "clock.txt").write_text(str(time.time_ns()))
'''

RECIPE = """
[targets.timed]
step = "stopwatch"

[targets.leaky]
step = "stopwatch"
leak = true
"""


def install_measured_steps(tmp_path: Path, monkeypatch) -> Path:
    """Write the plugin module and its dist-info under ``tmp_path`` and put it on the path."""
    return install_plugin(tmp_path, monkeypatch, module=MODULE, source=SOURCE, steps={'stopwatch': 'Stopwatch'})
