"""The ``validate`` step: measure an artifact against the reference; judge the figures.

Inputs: ``artifact`` (an exported program, a ``.pte`` or an ``.mlpackage``) and
``reference`` (the output of the ``reference`` step). Output kind
``measurements``: measurements.json, report.json, report.md, report.html,
errors.png, positions.json, timings.json.

Everything but ``timings.json`` rebuilds byte for byte: the clock readings and
the memory peak (load time, prefill and decode speeds, latency, peak RSS) go
to ``timings.json`` only, which the step declares in ``measurement_files``, so
``verify --rebuild`` and ``release`` say "not compared (measurements)" for it
rather than finding a difference. Expectations on those figures still judge
them (``judge`` reads both files).

Measuring and judging are separate. ``run`` measures (slow: it runs the
model); ``judge`` compares the cached figures with the expectations (the
``min_*``/``max_*`` parameters, listed in ``judge_params`` so they stay out of
the action key). Changing a threshold therefore re-judges without rerunning.

A ``.pte`` with its ETRecord (``lower`` writes one when a validate target
consumes it) is also compared operator by operator with the program it was
lowered from (``locate_drift``; :mod:`modelbuild.ml.profile.drift`), and a
failed verdict names the first operator past ``min_cosine``.

Where this host cannot run the artifact (an ``.mlpackage``, or a ``.pte``
delegated to Core ML or MPS, on anything but macOS; a Vulkan ``.pte`` where the
ExecuTorch runtime has no Vulkan delegate: what the backend plugin's
``runtime_unmet`` says) the target gets the distinct status "needs macOS"
("needs a Vulkan runtime").

Example recipe::

    [targets.tiny-llama-pte-validate]
    step = "validate"
    inputs = { artifact = "tiny-llama-pte", reference = "tiny-llama-ref" }
    min_cosine = 0.999
    min_token_agreement = 0.9
    max_size_mb = 5
"""

from __future__ import annotations

import json
import platform

from pydantic import Field

from modelbuild.artifacts import Artifact
from modelbuild.errors import PlatformUnavailable, RecipeError, StepError
from modelbuild.ml.validation.expectations import EXPECTATIONS, PARAM_NAMES, judge_summary
from modelbuild.step import Input, Params, Requirements, Step, StepContext, Verdict, host_platform

_UNIT = ("min_cosine",)
_SHARES = ("min_top1_agreement", "min_token_agreement")


class ValidateParams(Params):
    #: Greedy tokens to generate per prompt (default: as many as the reference did).
    max_new_tokens: int | None = Field(None, ge=1)
    #: Cap on the eval-text tokens scored (also capped by the artifact's max_seq_len).
    eval_tokens: int | None = Field(None, ge=2)
    #: Also generate with ExecuTorch's TextLLMRunner (the app's code path) for speed figures.
    use_text_runner: bool = True
    #: A .pte with its ETRecord: also measure each operator's output against the program it was
    #: lowered from, so that a failed verdict names the first one past min_cosine (modelbuild.ml.profile.drift).
    locate_drift: bool = True

    # Expectations (judge-only; see modelbuild.ml.validation.expectations).
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_token_agreement: float | None = None
    max_abs_error: float | None = None
    max_mean_abs_error: float | None = None
    max_perplexity_ratio: float | None = None
    max_perplexity: float | None = None
    max_size_mb: float | None = None
    min_decode_tokens_per_s: float | None = None
    min_prefill_tokens_per_s: float | None = None
    max_load_time_s: float | None = None
    max_peak_memory_mb: float | None = None
    max_latency_ms: float | None = None


def _timings(artifact: Artifact) -> dict:
    """The summary of timings.json (absent in artifacts measured before it was split off)."""
    try:
        data = json.loads(artifact.file("timings.json").read_text())
        return dict(data.get("summary") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


class ValidateStep(Step):
    """Measure an artifact against the reference and judge it against the expectations."""

    name = "validate"
    version = 1
    description = "Validate an artifact against the reference model (numerics, generation, size, speed)"
    inputs = {
        "artifact": Input(kinds=("exported-program", "pte", "mlpackage"), doc="the artifact to validate"),
        "reference": Input(kinds=("reference",), doc="outputs of the original model"),
    }
    output = "measurements"
    toolchain = ("torch", "executorch", "numpy", "coremltools")
    judge_params = PARAM_NAMES
    #: What this step asks of its producers (decided in the build graph: modelbuild.devtools).
    asks = {"artifact": {"etrecord": True}}
    #: Output files holding measurements of this run on this machine (timings, memory): cached and
    #: materialized as usual, left out of byte-for-byte comparisons (modelbuild.reproduce).
    measurement_files = ("timings.json",)
    Params = ValidateParams

    def check(self, params: ValidateParams, input_kinds) -> None:
        for name in PARAM_NAMES:
            value = getattr(params, name)
            if value is None:
                continue
            if name in _UNIT and not -1.0 <= value <= 1.0:
                raise RecipeError(f"{name} is a cosine similarity, between -1 and 1 (got {value})", key=name)
            if name in _SHARES and not 0.0 <= value <= 1.0:
                raise RecipeError(f"{name} is a share between 0 and 1 (got {value})", key=name)
            if name not in _UNIT and value < 0:
                raise RecipeError(f"{name} must not be negative (got {value})", key=name)

    def requirements(self, params: ValidateParams, input_kinds) -> Requirements:
        if input_kinds.get("artifact") == "mlpackage":
            # Core ML predictions need the Core ML framework: macOS only.
            return Requirements(platforms=("macos",))
        return self.requires

    def judge(self, params: ValidateParams, artifact: Artifact) -> Verdict | None:
        """Compare the summary of measurements.json and timings.json with the expectations (no heavy imports).

        The figures of the verdict name the ones that came from timings.json
        (``timing_figures``), so a release keeps them out of its manifest.
        """
        thresholds = {n: getattr(params, n) for n in PARAM_NAMES if getattr(params, n) is not None}
        try:
            m = json.loads(artifact.file("measurements.json").read_text())
        except (OSError, ValueError) as err:
            raise StepError(f"cannot judge {artifact.target}: measurements.json unreadable ({err})") from err
        timed = _timings(artifact)
        summary = {**m.get("summary", {}), **timed}
        if timed:
            summary["timing_figures"] = sorted(timed)
        if not thresholds:
            return Verdict(ok=True, reason="measured (no expectations set)",
                           figures={**summary, "checks": [], "expectations": {}}, status="pass")
        ok, reason, checks = judge_summary(summary, thresholds)
        figures = {**summary, "checks": checks, "expectations": thresholds}
        if ok:
            reason = "meets " + ", ".join(c["expectation"] for c in checks)
        else:
            from modelbuild.ml.profile.report import drift_note

            note, row = drift_note(m.get("drift"), thresholds.get("min_cosine"))
            if note:
                reason, figures["first_drift"] = f"{reason}; {note}", row
        return Verdict(ok=ok, reason=reason, figures=figures, status="pass" if ok else "fail")

    def run(self, ctx: StepContext) -> None:
        p: ValidateParams = ctx.params
        art = ctx.inputs["artifact"]
        ref_art = ctx.inputs["reference"]
        if art.kind == "pte":
            from modelbuild.backends import runtime_unmet
            from modelbuild.ml.validation.runners import apple_delegates

            # What the backend that lowered it needs to run it (modelbuild.backends); older
            # artifacts without a known backend: the Apple delegates they name.
            unmet = runtime_unmet(art.path)
            apple = apple_delegates(art.path)
            if unmet is None and apple and host_platform() != "macos":
                unmet = ("macOS", f"the .pte delegates to {', '.join(apple)}, which only runs on Apple platforms")
            if unmet is not None:
                raise PlatformUnavailable(needs=unmet[0], command=f"modelbuild build {ctx.target}", detail=unmet[1])
        import torch

        from modelbuild.ml.validation import measure, plots, report
        from modelbuild.ml.validation.reference import read_reference
        from modelbuild.ml.validation.runners import open_runner

        torch.set_num_threads(max(1, ctx.jobs))
        try:
            ref = read_reference(ref_art.path)
            runner = open_runner(art.kind, art.path)
            if runner.kind != ref["kind"]:
                raise StepError(f"the artifact is a {runner.kind} but the reference {ref_art.target} "
                                f"is of a {ref['kind']}")
            if runner.kind == "llm":
                m, positions = measure.measure_llm(runner, ref, ref_art.path, max_new_tokens=p.max_new_tokens,
                                                   eval_tokens=p.eval_tokens, use_text_runner=p.use_text_runner,
                                                   log=ctx.log)
            else:
                m, positions = measure.measure_module(runner, ref, ref_art.path, log=ctx.log)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            raise StepError(f"validate: {err}") from err
        if p.locate_drift and art.kind == "pte":
            from modelbuild.ml.profile.drift import locate_in_artifact

            try:  # a diagnostic: if it cannot run, the measurements still stand
                drift = locate_in_artifact(art.path, ref_art.path, ctx.work / "drift")
            except Exception as err:  # noqa: BLE001 - reported in the measurements and the log
                drift = {"error": f"{type(err).__name__}: {err}", "ops": []}
                ctx.log(f"warning: drift locator failed: {drift['error']}")
            if drift is not None:
                m["drift"] = drift
        m["title"] = f"{art.target} vs {ref_art.target}"
        m["artifact"]["target"] = art.target
        m["reference"] = {"target": ref_art.target, "implementation": ref["implementation"], "kind": ref["kind"]}
        m["versions"] = {**self.toolchain_versions(), "python": platform.python_version()}
        m["host"] = {"platform": host_platform(), "machine": platform.machine()}
        ctx.write_json("positions.json", positions)
        plots.plot_positions(positions, ctx.out / "errors.png", m["title"])
        report.write_reports(ctx.out, m, m["title"], "errors.png")
        s = m["summary"]
        parts = [f"cosine {s['cosine']:.6g}"]
        if s.get("token_agreement") is not None:
            parts.append(f"tokens {s['token_agreement']:.3g}")
        parts.append(f"{s['size_mb']:.3g} MB")
        if s.get("decode_tokens_per_s"):
            parts.append(f"{s['decode_tokens_per_s']:.4g} tok/s")
        ctx.summary = ", ".join(parts)


__all__ = ["ValidateStep", "ValidateParams", "EXPECTATIONS"]
