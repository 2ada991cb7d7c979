"""The ``profile`` step: run a ``.pte`` with ETDump on and report where its time goes.

Inputs: ``pte`` (the lowered program; its ETRecord, which ``lower`` writes by
default when a profile step consumes it, names the operators) and
``reference`` (whose prompts or samples the program runs on). Output kind
``profile``: profile.json, profile.md, profile.svg (the top instructions by
total time), report.json (so ``modelbuild report`` shows profiles of
variants side by side), and the raw ``etdump.etdp`` for ExecuTorch's own tools.

What is in it: time per operator call and per delegate call (an XNNPACK
partition is named by the ops it holds, with XNNPACK's own per-op events
inside it), the top 20 by total time, the forward time (ETDump's
``Method::execute`` and the wall clock), load time, and the memory plan's
arena sizes (the activation memory the app must give the program).

With ``debug = true`` it also runs the drift locator
(:mod:`modelbuild.ml.profile.drift`): every operator's output against the
program the lowering started from, naming the first one whose cosine falls
below ``debug_min_cosine``.

Times are measurements: the step runs again only when its inputs or
parameters change, and its output differs from run to run like any timing.
A ``.pte`` delegated to Core ML or MPS gets the status "needs macOS" on other
hosts, as in ``validate``.

Example recipe::

    [targets.tiny-llama-pte-profile]
    step = "profile"
    inputs = { pte = "tiny-llama-pte", reference = "tiny-llama-ref" }
    runs = 8
"""

from __future__ import annotations

import json

from pydantic import Field

from modelbuild.artifacts import register_kind
from modelbuild.devtools import ETRECORD_FILE
from modelbuild.errors import PlatformUnavailable, StepError
from modelbuild.step import Input, Params, Step, StepContext, host_platform

__all__ = ["ProfileStep", "ProfileParams"]

register_kind("profile", "an ETDump profile: profile.json, profile.md, profile.svg, report.json (+ etdump.etdp)")


class ProfileParams(Params):
    runs: int = Field(8, ge=1, le=4096, description="Forward calls measured: an LLM is fed the reference's first "
                      "prompt and continuation one token per call; a module the reference's samples in turn.")
    warmup: int = Field(1, ge=0, le=100, description="Calls run first and left out of the figures.")
    debug: bool = Field(False, description="Also locate numerical drift: each operator's output against the "
                        "program the lowering started from (needs the ETRecord).")
    debug_min_cosine: float = Field(0.999, ge=-1.0, le=1.0, description="With debug: the cosine below which an "
                                    "operator's output counts as drifted; the first such one is named.")


def platform_unmet(pte_dir) -> tuple[str, str] | None:
    """``(needs, detail)`` when this host cannot run the .pte (as the validate step decides), else None."""
    from modelbuild.backends import runtime_unmet
    from modelbuild.ml.validation.runners import apple_delegates

    unmet = runtime_unmet(pte_dir)
    apple = apple_delegates(pte_dir)
    if unmet is None and apple and host_platform() != "macos":
        unmet = ("macOS", f"the .pte delegates to {', '.join(apple)}, which only runs on Apple platforms")
    return unmet


class ProfileStep(Step):
    """Profile a .pte with ExecuTorch's ETDump: time per operator and delegate call, load time, memory plan."""

    name = "profile"
    version = 1
    description = "Profile a .pte with ETDump (time per operator and delegate call, load time, memory plan)"
    inputs = {
        "pte": Input(kinds=("pte",), doc="the lowered program (with its ETRecord)"),
        "reference": Input(kinds=("reference",), doc="the prompts or samples to run it on"),
    }
    output = "profile"
    toolchain = ("torch", "executorch", "numpy")
    #: What this step asks of its producers (decided in the build graph: modelbuild.devtools).
    asks = {"pte": {"etrecord": True}}
    Params = ProfileParams

    def run(self, ctx: StepContext) -> None:
        p: ProfileParams = ctx.params
        pte, ref = ctx.inputs["pte"], ctx.inputs["reference"]
        unmet = platform_unmet(pte.path)
        if unmet is not None:
            raise PlatformUnavailable(needs=unmet[0], command=f"modelbuild build {ctx.target}", detail=unmet[1])
        import torch

        from modelbuild.ml.profile.etdump import instruction_rows, run_with_etdump
        from modelbuild.ml.profile.inputs import describe_calls, program_calls, program_json
        from modelbuild.ml.profile.memory import instruction_names, memory_plan, read_program
        from modelbuild.ml.profile.report import describe_drift, first_drift_of, summarize, write_profile

        torch.set_num_threads(max(1, ctx.jobs))
        model = pte.file("model.pte")
        if not model.exists():
            raise StepError(f"{pte.target} is not a complete pte artifact (model.pte expected)")
        program = program_json(pte.path)
        etrecord = pte.file(ETRECORD_FILE)
        etrecord = etrecord if etrecord.exists() else None
        if etrecord is None:
            ctx.log(f"note: {pte.target} has no {ETRECORD_FILE} (lower etrecord = false): operators are named "
                    "by their runtime kernels only")
        try:
            calls = program_calls(ref.path, program, p.runs)
            if not calls:
                raise StepError(f"profile: the reference {ref.target} holds no inputs to run")
            # Fewer samples (or tokens) than runs: cycle through them (a KV cache is overwritten from 0).
            calls = [calls[i % len(calls)] for i in range(p.runs)]
            run = run_with_etdump(model, [c.inputs for c in calls], ctx.work / "etdump", warmup=p.warmup)
            partition = json.loads(pte.file("partition.json").read_text()) if pte.file("partition.json").exists() else {}
            backends = sorted((partition.get("delegates") or {}).keys())
            flatbuffer = read_program(model)
            rows = instruction_rows(run.etdump, etrecord, skip=run.warmup,
                                    names=instruction_names(model, program=flatbuffer),
                                    delegate_backend=backends[0] if len(backends) == 1 else None)
        except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
            raise StepError(f"profile: {err}") from err
        load = {"load_program_ms": run.load_program_ms, "load_method_ms": run.load_method_ms,
                **{k: v for k, v in rows["load"].items()}}
        artifact = {"target": pte.target, "backend": program.get("backend"), "kind": program.get("kind"),
                    "pte_bytes": model.stat().st_size, "reference": ref.target, "etrecord": etrecord is not None}
        profile = summarize(rows, load=load, wall_forward_ms=run.forward_ms, memory=memory_plan(model, flatbuffer),
                            artifact=artifact, inputs=describe_calls(calls), warmup=run.warmup)
        if p.debug:
            if etrecord is None:
                raise StepError(f"profile debug = true needs {pte.target}'s ETRecord (set etrecord = true on it)")
            from modelbuild.ml.profile.drift import LATER_POSITION, locate

            # Position 0 and a later decode call of an LLM (drift.py says why both).
            drift = locate(model, etrecord, program_calls(ref.path, program, LATER_POSITION + 1), ctx.work / "drift")
            row, where = first_drift_of(drift, p.debug_min_cosine)
            drift["min_cosine"] = p.debug_min_cosine
            drift["first_drift"] = (describe_drift(row) + (f" ({where})" if where else "")) or None
            profile["drift"] = drift
        write_profile(ctx.out, profile, title=pte.target)
        (ctx.out / "etdump.etdp").write_bytes(run.etdump.read_bytes())
        fw = profile["forward_ms"]["mean"] or 0.0
        parts = [f"forward {fw:.3g} ms", f"load {profile['load']['load_time_s']:.3g} s",
                 f"planned {(profile['planned_memory_bytes'] or 0) / 1e6:.3g} MB"]
        if profile["top"]:
            parts.append(f"top: {profile['top'][0]['name']}")
        if p.debug:
            parts.append(f"first drift: {profile['drift']['first_drift']}" if profile["drift"]["first_drift"]
                         else f"no operator below cosine {p.debug_min_cosine}")
        ctx.summary = ", ".join(parts)
        ctx.log(ctx.summary)
