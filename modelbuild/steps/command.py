"""The ``command`` step: run your own script as a cached step of the graph.

Like a DVC stage: the command, the files it reads (``deps``, hashed into the
key), the artifacts it consumes (``inputs``, any slot names) and the files it
must produce (``outs``, relative to its output directory) are declared; the
command runs in a scratch directory with these environment variables:

- ``MODELBUILD_OUT``: the output directory (write your outputs here)
- ``MODELBUILD_INPUT_<SLOT>``: the directory of each input artifact (the slot
  name upper-cased, ``-`` as ``_``; a slot that takes a list gets the
  directories joined by ``:``)
- ``MODELBUILD_INPUT``: the input of the one-slot shorthand ``inputs = "a"``
- ``MODELBUILD_PROJECT``: the project root (where ``deps`` live)

and ``{out}``, ``{project}``, ``{inputs[SLOT]}`` and ``{input}`` (the
shorthand's input) in the command are replaced by the same paths. A slot name
must make a valid variable name (letters, digits, ``_`` and ``-``, not starting
with a digit): anything else is a recipe error.

Example recipe::

    [targets.calibration-set]
    step = "command"
    command = ["python", "{project}/scripts/make_calib.py", "--out", "{out}/calib.bin"]
    deps = ["scripts/make_calib.py", "data/prompts.txt"]
    outs = ["calib.bin"]
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import PurePosixPath

from pydantic import Field

from ..step import Input, Params, RecipeError, Step, StepContext, StepError

__all__ = ["CommandStep"]

#: The slot of ``inputs = "a"`` (the graph keeps the shorthand as ``*`` for a
#: step whose only slot is the wildcard); exposed as ``MODELBUILD_INPUT``.
SHORTHAND = "*"
_SLOT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def input_variable(slot: str) -> str:
    """The environment variable of an input slot.

    >>> input_variable("my-src"), input_variable("*")
    ('MODELBUILD_INPUT_MY_SRC', 'MODELBUILD_INPUT')
    """
    if slot == SHORTHAND:
        return "MODELBUILD_INPUT"
    return f"MODELBUILD_INPUT_{slot.upper().replace('-', '_')}"


class CommandParams(Params):
    command: str | list[str] = Field(description="The command: a list of arguments, or a string run by /bin/sh")
    deps: list[str] = Field(default_factory=list, description="Project-relative files or directories the command reads")
    outs: list[str] = Field(default_factory=list, description="Files the command must create under its output directory")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (keyed: they change the output)")
    timeout_s: float | None = Field(default=None, description="Fail the step if the command runs longer than this many seconds")


class CommandStep(Step):
    name = "command"
    version = 1
    description = "Run a command with declared deps, inputs and outputs"
    inputs = {"*": Input(kinds=("any",), many=True, optional=True, doc="any artifacts, under any slot names")}
    output = "files"
    Params = CommandParams

    def sources(self, params: CommandParams) -> list[str]:
        return list(params.deps)

    def check(self, params: CommandParams, input_kinds) -> None:
        for i, out in enumerate(params.outs):
            path = PurePosixPath(out)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise RecipeError(f"'{out}' must be a path inside the step's output directory", key=f"outs[{i}]")
        for i, dep in enumerate(params.deps):
            if ".." in PurePosixPath(dep).parts:
                raise RecipeError(f"'{dep}' must stay inside the project", key=f"deps[{i}]")
        if not params.command:
            raise RecipeError("the command is empty", key="command")
        for slot in input_kinds:
            if slot != SHORTHAND and not _SLOT.fullmatch(slot):
                raise RecipeError(
                    f"input slot '{slot}' cannot be an environment variable ({input_variable(slot)}): "
                    "use letters, digits, '_' and '-', not starting with a digit",
                    key=f"inputs.{slot}",
                )

    def run(self, ctx: StepContext) -> None:
        params: CommandParams = ctx.params
        paths = {"out": str(ctx.out), "project": str(ctx.project), "work": str(ctx.work)}
        inputs = {}
        env = dict(os.environ)
        for slot, art in ctx.inputs.items():
            arts = art if isinstance(art, list) else [art]
            inputs[slot] = os.pathsep.join(str(a.path) for a in arts)
            env[input_variable(slot)] = inputs[slot]
        if SHORTHAND in inputs:
            paths["input"] = inputs[SHORTHAND]
        env.update(params.env)
        env.update({"MODELBUILD_OUT": str(ctx.out), "MODELBUILD_PROJECT": str(ctx.project)})

        def fill(text: str) -> str:
            try:
                return text.format_map({**paths, "inputs": inputs})
            except (KeyError, IndexError) as exc:
                raise StepError(f"command refers to unknown placeholder {exc}") from None

        if isinstance(params.command, str):
            argv = ["/bin/sh", "-c", fill(params.command)]
        else:
            argv = [fill(a) for a in params.command]
        ctx.log("$ " + shlex.join(argv))
        try:
            proc = subprocess.run(argv, cwd=ctx.work, env=env, timeout=params.timeout_s, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise StepError(f"command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise StepError(f"command timed out after {params.timeout_s} s") from None
        if proc.returncode != 0:
            raise StepError(f"command exited with code {proc.returncode}")
        missing = [o for o in params.outs if not (ctx.out / o).exists()]
        if missing:
            strays = sorted(p.name for p in ctx.work.iterdir())[:5]
            hint = f" (it wrote {', '.join(strays)} in its working directory instead)" if strays else ""
            raise StepError(f"declared output missing: {', '.join(missing)}{hint}; write outputs under $MODELBUILD_OUT")
        ctx.summary = f"{sum(1 for _ in ctx.out.rglob('*') if _.is_file())} file(s)"
