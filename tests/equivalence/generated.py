"""The code the equivalence test generates: each target's shell command and the plugin's source.

The model (model.py) derives outputs from the same parameters these texts are
made from; the texts themselves only matter through what they make the steps
write, and through their bytes (recipe params, the plugin's fingerprint).
"""

from __future__ import annotations

# Shell fragments shared by every generated command. Both read only
# environment variables that are not keyed (the test sets them on the build
# process), so they never change an output.
RUNLOG = 'if [ -n "$EQ_RUNLOG" ]; then echo "$NAME" >> "$EQ_RUNLOG"; fi'
GATE = (
    'if [ -n "$EQ_GATE" ] && [ "$EQ_GATE_NAME" = "$NAME" ]; then touch "$EQ_GATE.started"; n=0; '
    'while [ ! -e "$EQ_GATE.go" ] && [ $n -lt 6000 ]; do sleep 0.01; n=$((n+1)); done; fi'
)


def command_text(slots: list[str], deps: list[str], var: str | None, extra: bool, exe: bool) -> str:
    """The shell command of a base command target (children inherit it)."""
    files = [f'"$MODELBUILD_INPUT_{s.upper()}/out.txt"' for s in slots]
    files += [f'"{{project}}/{d}"' + ("/*" if "." not in d.rsplit("/", 1)[-1] else "") for d in deps]
    head = '"$NAME $TAG' + (f" ${{{var}}}" if var else "") + '"'
    cmd = f'{RUNLOG}; {GATE}; (echo {head}; cat {" ".join(files) or "/dev/null"} | $OP) > "$MODELBUILD_OUT/out.txt"'
    if extra:
        cmd += ('; mkdir -p "$MODELBUILD_OUT/sub"; '
                'echo "$NAME $(wc -l < "$MODELBUILD_OUT/out.txt")" > "$MODELBUILD_OUT/sub/n.txt"')
        if exe:
            cmd += '; chmod 755 "$MODELBUILD_OUT/sub/n.txt"'
    return cmd


def plugin_step_text(fmt: str, rev: int) -> str:
    return f'''"""eqplug.step: the equivalence test's own step plugin (rev {rev})."""

from importlib import metadata

from modelbuild.step import Input, Params, Step

from . import helper

FORMAT = "{fmt}"


class EqParams(Params):
    name: str
    tag: str
    mode: str = "cat"
    deps: list[str] = []
    stamp_tool: bool = False


class EqStep(Step):
    name = "eq"
    version = 1
    description = "equivalence test step"
    inputs = {{"*": Input(kinds=("any",), many=True, optional=True)}}
    output = "files"
    toolchain = ("eqtool",)
    Params = EqParams

    def sources(self, params):
        return list(params.deps)

    def run(self, ctx):
        p = ctx.params
        helper.started(p.name)
        parts = []
        for slot in sorted(ctx.inputs):
            arts = ctx.inputs[slot]
            for art in arts if isinstance(arts, list) else [arts]:
                parts.append((art.path / "out.txt").read_bytes())
        for dep in p.deps:
            path = ctx.project / dep
            if path.is_dir():
                parts.extend(f.read_bytes() for f in sorted(path.iterdir()))
            else:
                parts.append(path.read_bytes())
        head = f"{{p.name}} {{p.tag}} {{FORMAT}}"
        if p.stamp_tool:
            head += " tool=" + metadata.version("eqtool")
        body = helper.transform(b"".join(parts), p.mode)
        (ctx.out / "out.txt").write_bytes(head.encode() + b"\\n" + body)
'''


def plugin_helper_text(salt: str, rev: int) -> str:
    return f'''"""eqplug.helper: imported by eqplug.step, so its code is the step's code (rev {rev})."""

import os
import time

SALT = b"{salt}"


def started(name):
    log = os.environ.get("EQ_RUNLOG")
    if log:
        with open(log, "a") as f:
            f.write(name + "\\n")
    gate = os.environ.get("EQ_GATE")
    if gate and os.environ.get("EQ_GATE_NAME") == name:
        open(gate + ".started", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".go") and time.monotonic() < deadline:
            time.sleep(0.01)


def transform(data, mode):
    lines = data.splitlines(keepends=True)
    if mode == "upper":
        data = data.upper()
    elif mode == "nocomment":
        data = b"".join(line for line in lines if not line.startswith(b"#"))
    elif mode == "head":
        data = b"".join(lines[:2])
    return data + SALT + b"\\n"
'''
