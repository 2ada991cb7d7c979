"""Test step plugins that hand values over in memory (fused execution), installed
for real like tests/plugin_steps.py (a ``.dist-info`` with entry points on
``PYTHONPATH``), so that build subprocesses and their fused sessions find
them. No ML imports: the mechanism is tested in the fast subset.

- ``fz-append``: reads its ``src`` input (``in_memory``) as a value
  ``{"text", "pid"}`` (from a file ``v.txt`` when nothing is handed over),
  appends ``suffix``, writes ``v.txt`` and keeps the new value. Its log says
  where the value came from and which process ran it. ``fail`` raises a
  StepError; while the file named by ``hold`` (project-relative, not a key
  input) exists it waits, after writing ``started`` into that file's folder.

Example::

    install_fused_steps(tmp_path, monkeypatch)
    project.recipe(CHAIN)
"""

from __future__ import annotations

from pathlib import Path

from tests.plugin_site import install_plugin

__all__ = ["install_fused_steps", "CHAIN", "log_of"]

MODULE = "mb_fused_steps"

SOURCE = '''
import json
import os
import time

from modelbuild.step import Input, Params, Step, StepError


def load(path):
    return {"text": (path / "v.txt").read_text(), "pid": None}


class Append(Step):
    name = "fz-append"
    output = "files"
    inputs = {"src": Input(kinds=("any",), in_memory=True)}
    keeps_value = True

    class Params(Params):
        suffix: str = ""
        fail: bool = False
        hold: str = ""

    def run(self, ctx):
        value = ctx.input_value("src", load)
        origin = f"memory from pid {value['pid']}" if value["pid"] else "files"
        ctx.log(f"fz: got {origin}; running in pid {os.getpid()}")
        if ctx.params.hold:
            hold = ctx.project / ctx.params.hold
            (hold.parent / "started").write_text(str(os.getpid()))
            while hold.exists():
                time.sleep(0.05)
        if ctx.params.fail:
            raise StepError("asked to fail")
        text = value["text"] + ctx.params.suffix
        (ctx.out / "v.txt").write_text(text)
        ctx.keep_value({"text": text, "pid": os.getpid()})
'''

#: a (command) -> b -> c -> d (fz-append, each in memory from the one before) -> e (command)
CHAIN = """
[targets.a]
step = "command"
command = "cat {project}/data.txt > $MODELBUILD_OUT/v.txt"
deps = ["data.txt"]
outs = ["v.txt"]

[targets.b]
step = "fz-append"
inputs = { src = "a" }
suffix = "b"

[targets.c]
step = "fz-append"
inputs = { src = "b" }
suffix = "c"

[targets.d]
step = "fz-append"
inputs = { src = "c" }
suffix = "d"

[targets.e]
step = "command"
inputs = { src = "d" }
command = "rev < $MODELBUILD_INPUT_SRC/v.txt > $MODELBUILD_OUT/e.txt"
outs = ["e.txt"]
"""


def install_fused_steps(tmp_path: Path, monkeypatch) -> Path:
    """Write the plugin module and its dist-info under ``tmp_path`` and put it on the path."""
    return install_plugin(tmp_path, monkeypatch, module=MODULE, source=SOURCE, steps={'fz-append': 'Append'})


def log_of(result, target: str) -> str:
    """The step log of ``target`` in a build result."""
    return Path(result.targets[target].log).read_text()
