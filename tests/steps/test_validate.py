"""The validate step: measurements against the reference, the verdict, the reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from modelbuild.errors import PlatformUnavailable, RecipeError, StepError
from modelbuild.step import unmet_requirement
from modelbuild.steps.validate import ValidateStep
from modelbuild.testing import as_artifact, run_step

pytestmark = pytest.mark.ml

PROMPTS = ["Four score", "Tell me about Alice."]
GATES = {"min_cosine": 0.999, "min_token_agreement": 0.9, "min_top1_agreement": 0.95, "max_perplexity_ratio": 1.01}


def _judge(measured, **thresholds):
    step = ValidateStep()
    return step.judge(step.Params(**thresholds), as_artifact(measured, "measurements"))


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """The tiny llama: checkpoint, reference, exported program, .pte, and a broken export."""
    import validation_fixtures as vf
    from modelbuild.steps.reference import ReferenceStep

    root = tmp_path_factory.mktemp("llm")
    ckpt = vf.write_tiny_hf_checkpoint(root / "ckpt")
    run_step(ReferenceStep, {"prompts": PROMPTS, "max_new_tokens": 8, "eval_tokens": 48},
             {"model": as_artifact(ckpt, "checkpoint")}, root / "ref")
    vf.export_llm_program(ckpt, root / "ep", max_seq_len=64)
    vf.lower_pte(root / "ep", root / "pte")
    # A deliberately broken conversion: q/k rows left in the HF rotary layout.
    vf.export_llm_program(ckpt, root / "ep-bad-rope", max_seq_len=64, permute=False)
    return root


def _validate(root, name, kind, ref="ref", params=None):
    out = root / f"val-{name}"
    if not out.exists():
        run_step(ValidateStep, params or {}, {"artifact": as_artifact(root / name, kind, target=name),
                                              "reference": as_artifact(root / ref, "reference", target=ref)}, out)
    return out


def test_tiny_pte_passes_its_validation(llm):
    out = _validate(llm, "pte", "pte")
    m = json.loads((out / "measurements.json").read_text())
    s = m["summary"]
    assert m["kind"] == "llm" and m["artifact"]["kind"] == "pte"
    assert s["cosine"] > 0.9999 and s["top1_agreement"] == 1.0 and s["token_agreement"] == 1.0
    assert s["first_divergence"] is None
    assert s["max_abs_error"] < 1e-3
    assert abs(s["perplexity_ratio"] - 1.0) < 1e-3
    assert s["size_mb"] == pytest.approx((llm / "pte" / "model.pte").stat().st_size / 1e6)
    # Timings and memory are measured, in timings.json (not reproducible, so not in measurements.json).
    t = json.loads((out / "timings.json").read_text())
    assert t["summary"]["decode_tokens_per_s"] > 0 and t["summary"]["prefill_tokens_per_s"] > 0
    assert t["summary"]["peak_rss_mb"] > 0 and not {"decode_tokens_per_s", "peak_rss_mb", "load_time_s"} & set(s)
    # TextLLMRunner generated, and read the prompts as the reference's tokenizer did.
    assert t["timing_source"] == "TextLLMRunner" and t["runner"]["decode_ms"] >= 0
    assert m["runner"]["prompt_tokens_match"] == [True, True]
    assert all(n >= 1 for n in m["runner"]["generated_tokens"])
    v = _judge(out, **GATES)
    assert v.ok and v.status == "pass", v.reason
    assert {c["expectation"] for c in v.figures["checks"]} == set(GATES)
    # Expectations on timings still judge them (read from timings.json), and the verdict says which they are.
    slow = _judge(out, min_decode_tokens_per_s=1e9)
    assert not slow.ok and slow.reason.startswith("decode_tokens_per_s ")
    assert "decode_tokens_per_s" in slow.figures["timing_figures"] and "cosine" not in slow.figures["timing_figures"]


def test_a_rerun_writes_the_same_report_bytes_but_for_timings(llm, tmp_path):
    """The validation report rebuilds byte for byte, even with another thread count: only
    timings.json, the file the step declares a measurement, may differ."""
    from modelbuild.reproduce import measurement_files

    first = _validate(llm, "pte", "pte")  # jobs=2
    again = tmp_path / "again"
    run_step(ValidateStep, {}, {"artifact": as_artifact(llm / "pte", "pte", target="pte"),
                                "reference": as_artifact(llm / "ref", "reference", target="ref")}, again, jobs=1)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert measurement_files(ValidateStep()) == ("timings.json",) and "timings.json" in names
    differ = [n for n in names if (first / n).read_bytes() != (again / n).read_bytes()]
    assert set(differ) <= {"timings.json"}, differ
    for name in ("measurements.json", "report.json"):
        assert "decode_tokens_per_s" not in json.loads((first / name).read_text())["summary"], name
    assert "tok/s" not in (first / "report.md").read_text() and "timings.json" in (first / "report.md").read_text()


def test_exported_program_stage_passes_too(llm):
    out = _validate(llm, "ep", "exported-program", params={"use_text_runner": False})
    s = json.loads((out / "measurements.json").read_text())["summary"]
    assert s["cosine"] > 0.9999 and s["token_agreement"] == 1.0
    assert _judge(out, **GATES).ok


def test_wrong_rotary_layout_fails_with_the_reason(llm):
    out = _validate(llm, "ep-bad-rope", "exported-program", params={"use_text_runner": False})
    v = _judge(out, **GATES)
    assert not v.ok and v.status == "fail"
    s = json.loads((out / "measurements.json").read_text())["summary"]
    assert s["cosine"] < 0.999
    assert f"cosine {s['cosine']:.6g} < min_cosine 0.999" in v.reason
    assert "top1_agreement" in v.reason
    assert v.figures["cosine"] == s["cosine"]


def test_report_files_hold_the_figures(llm):
    out = _validate(llm, "pte", "pte")
    for name in ("measurements.json", "report.json", "report.md", "errors.png", "positions.json"):
        assert (out / name).is_file(), name
    assert (out / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    m = json.loads((out / "measurements.json").read_text())
    assert report["summary"] == m["summary"]
    assert report["reference"]["target"] == "ref" and report["artifact"]["target"] == "pte"
    assert {"torch", "executorch", "python"} <= set(report["versions"])
    assert "thresholds" not in json.dumps(report)  # judged at build time, not cached
    md = (out / "report.md").read_text()
    assert f"{m['summary']['cosine']:.6g}" in md and "![error per position](errors.png)" in md
    positions = json.loads((out / "positions.json").read_text())
    assert set(positions) == {"prompt 0", "prompt 1", "eval text"}
    assert len(positions["eval text"]["top1_match"]) == 48


def test_verdict_report_shows_each_expectation(llm):
    from modelbuild.ml.validation.report import render_verdict_report

    out = _validate(llm, "ep-bad-rope", "exported-program", params={"use_text_runner": False})
    v = _judge(out, min_cosine=0.999, max_size_mb=100)
    md = render_verdict_report(out, v)
    assert md.startswith("# Validation verdict: FAIL")
    assert "| min_cosine | cosine |" in md and "FAIL |" in md and "| max_size_mb | size_mb |" in md


def test_threshold_change_rejudges_cached_measurements_without_heavy_imports(llm):
    out = _validate(llm, "pte", "pte")
    code = f"""
import json, sys
from pathlib import Path
from modelbuild.steps.validate import ValidateStep
from modelbuild.testing import as_artifact
step = ValidateStep()
art = as_artifact(Path({str(out)!r}), "measurements")
a = step.judge(step.Params(min_cosine=0.999), art)
b = step.judge(step.Params(min_cosine=0.999, max_size_mb=0.01), art)
heavy = [m for m in ("torch", "numpy", "executorch", "matplotlib") if m in sys.modules]
print(json.dumps([a.ok, b.ok, b.reason, heavy]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    a_ok, b_ok, reason, heavy = json.loads(res.stdout.strip().splitlines()[-1])
    assert a_ok and not b_ok
    assert reason.startswith("size_mb ") and "> max_size_mb 0.01" in reason
    assert heavy == []


def test_thresholds_stay_out_of_the_action_key():
    params = ValidateStep.Params.model_fields
    gates = {n for n in params if n.startswith(("min_", "max_")) and n not in ("max_new_tokens",)}
    assert ValidateStep.judge_params == gates
    assert "max_new_tokens" not in ValidateStep.judge_params and "eval_tokens" not in ValidateStep.judge_params


def test_mlpackage_needs_macos_on_linux(monkeypatch):
    step = ValidateStep()
    req = step.requirements(step.Params(), {"artifact": "mlpackage", "reference": "reference"})
    assert req.platforms == ("macos",)
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    assert unmet_requirement(req) == "macOS"
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    assert unmet_requirement(req) is None
    assert step.requirements(step.Params(), {"artifact": "pte", "reference": "reference"}).platforms == ()


def test_coreml_delegated_pte_needs_macos(llm, tmp_path, monkeypatch):
    pte = tmp_path / "pte-coreml"
    shutil.copytree(llm / "pte", pte)
    (pte / "partition.json").write_text(json.dumps({"backends": {"CoreMLBackend": {"ops": 12}}}))
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    with pytest.raises(PlatformUnavailable) as err:
        run_step(ValidateStep, {}, {"artifact": as_artifact(pte, "pte"), "reference": as_artifact(llm / "ref", "reference")},
                 tmp_path / "out", target="tiny-coreml-validate")
    assert err.value.needs == "macOS"
    assert err.value.command == "modelbuild build tiny-coreml-validate"
    assert not list((tmp_path / "out").iterdir())


def test_check_rejects_thresholds_out_of_range():
    step = ValidateStep()
    for name, value in (("min_cosine", 1.5), ("min_token_agreement", 2.0), ("max_size_mb", -1.0)):
        with pytest.raises(RecipeError) as err:
            step.check(step.Params(**{name: value}), {"artifact": "pte", "reference": "reference"})
        assert err.value.key == name
    step.check(step.Params(**GATES), {"artifact": "pte", "reference": "reference"})


@pytest.fixture(scope="module")
def module_case(tmp_path_factory):
    import validation_fixtures as vf
    from modelbuild.steps.reference import ReferenceStep

    root = tmp_path_factory.mktemp("module")
    vf.export_module_program(root / "prog")
    vf.export_module_program(root / "prog-noisy", scale_noise=0.05)
    run_step(ReferenceStep, {"samples": 3}, {"model": as_artifact(root / "prog", "exported-program")}, root / "ref")
    vf.lower_pte(root / "prog", root / "pte")
    return root


def test_generic_module_pte_passes_and_a_perturbed_one_fails(module_case):
    good = _validate(module_case, "pte", "pte")
    bad = _validate(module_case, "prog-noisy", "exported-program")
    gates = {"max_abs_error": 1e-4, "min_cosine": 0.9999}
    assert _judge(good, **gates).ok
    v = _judge(bad, **gates)
    assert not v.ok and "> max_abs_error 0.0001" in v.reason and "< min_cosine 0.9999" in v.reason
    m = json.loads((good / "measurements.json").read_text())
    assert m["kind"] == "module" and len(m["runs"]) == 3
    assert json.loads((good / "timings.json").read_text())["summary"]["latency_ms"] > 0
    # An LLM-only expectation on a module is a failure that says why.
    v = _judge(good, min_token_agreement=0.9)
    assert not v.ok and "token_agreement not measured" in v.reason


def test_artifact_and_reference_of_different_kinds_is_an_error(module_case, llm, tmp_path):
    with pytest.raises(StepError, match="the artifact is a module but the reference ref is of a llm"):
        run_step(ValidateStep, {}, {"artifact": as_artifact(module_case / "pte", "pte"),
                                    "reference": as_artifact(llm / "ref", "reference", target="ref")}, tmp_path / "o")


ENGINE_RECIPE = """
[targets.v-ckpt]
step = "fetch"
source = "synthetic"
architecture = "llama3_2"
size = "tiny"

[targets.v-ref]
step = "reference"
inputs = { model = "v-ckpt" }
prompts = ["Once upon a time"]
max_new_tokens = 4
eval_tokens = 24

[targets.v-export]
step = "export"
inputs = { checkpoint = "v-ckpt" }
max_seq_len = 64
use_kv_cache = true

[targets.v-validate]
step = "validate"
inputs = { artifact = "v-export", reference = "v-ref" }
use_text_runner = false
min_cosine = 0.999
min_token_agreement = 0.9
"""


def test_engine_rejudges_a_changed_threshold_from_the_cache(tmp_path):
    """Through the engine: measure once; a stricter threshold fails the cached result, nothing reruns."""
    from modelbuild import api
    project = tmp_path / "proj"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "v.toml").write_text(ENGINE_RECIPE)
    cache = tmp_path / "cache"
    first = api.build(["v-validate"], project=project, cache_dir=cache, jobs=2)
    assert first.ok, {n: (t.status, t.reason) for n, t in first.targets.items()}
    assert first.targets["v-validate"].status == "built"
    measured = json.loads((first.targets["v-validate"].out / "measurements.json").read_text())["summary"]
    assert measured["cosine"] > 0.999 and measured["token_agreement"] == 1.0
    strict = api.build(["v-validate"], project=project, cache_dir=cache, jobs=2,
                       overrides=["targets.v-validate.max_size_mb=0.001"])
    t = strict.targets["v-validate"]
    assert not strict.ok and t.status == "failed"
    assert t.reason == f"size_mb {measured['size_mb']:.6g} > max_size_mb 0.001"
    assert {n: r.status for n, r in strict.targets.items() if n != "v-validate"} == {
        "v-ckpt": "cached", "v-ref": "cached", "v-export": "cached"}
    assert strict.targets["v-validate"].verdict["ok"] is False
    again = api.build(["v-validate"], project=project, cache_dir=cache, jobs=2)
    assert again.ok and again.targets["v-validate"].status == "cached"


def test_variant_plot_is_a_png(tmp_path):
    from modelbuild.ml.validation.plots import plot_variants  # matplotlib: in the ml extra

    rows = [{"target": "a", "size_mb": 4.0, "decode_tokens_per_s": 30.0, "status": "pass"},
            {"target": "b", "size_mb": 1.1, "decode_tokens_per_s": 250.0, "status": "fail"},
            {"target": "c", "size_mb": None, "decode_tokens_per_s": None, "status": "needs macOS"}]
    path = plot_variants(rows, tmp_path / "variants.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_aggressive_quantization_fails_on_accuracy(llm, tmp_path):
    """A 4-bit (8da4w, group 32) variant made by the quantize step misses a tight cosine bound."""
    from modelbuild.steps.quantize import QuantizeStep

    out = tmp_path / "q"
    run_step(QuantizeStep, {"linear": "8da4w", "group_size": 32},
             {"program": as_artifact(llm / "ep", "exported-program")}, out)
    measured = tmp_path / "val"
    run_step(ValidateStep, {"use_text_runner": False},
             {"artifact": as_artifact(out, "exported-program", target="q"),
              "reference": as_artifact(llm / "ref", "reference", target="ref")}, measured)
    s = json.loads((measured / "measurements.json").read_text())["summary"]
    assert 0.5 < s["cosine"] < 0.9999
    v = _judge(measured, min_cosine=0.9999)
    assert not v.ok and v.reason == f"cosine {s['cosine']:.6g} < min_cosine 0.9999"
    assert _judge(measured, min_cosine=0.5).ok  # the same cached figures, a looser bound


def test_judging_a_broken_artifact_is_a_clean_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(StepError, match="measurements.json unreadable"):
        _judge(tmp_path / "m", min_cosine=0.9)


def test_program_without_kv_cache_validates_by_rerunning_the_sequence(tmp_path):
    """A no-KV-cache export (dynamic token dimension) is scored by feeding the whole
    sequence each step; it must agree with the reference as the KV-cache export does."""
    from modelbuild import api
    project = tmp_path / "proj"
    (project / "recipes").mkdir(parents=True)
    recipe = ENGINE_RECIPE.replace("use_kv_cache = true", "use_kv_cache = false\nenable_dynamic_shape = true")
    (project / "recipes" / "v.toml").write_text(recipe)
    result = api.build(["v-validate"], project=project, cache_dir=tmp_path / "cache", jobs=2)
    assert result.ok, {n: (t.status, t.reason) for n, t in result.targets.items()}
    measured = json.loads((result.targets["v-validate"].out / "measurements.json").read_text())["summary"]
    assert measured["cosine"] > 0.999 and measured["token_agreement"] == 1.0
