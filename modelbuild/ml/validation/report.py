"""Report files of the validate step, and the verdict report.

Light module (JSON and text only), so the build process can render a verdict
without numpy or torch.

In the artifact (measured once, cached):

- ``measurements.json``: the reproducible figures (see :mod:`.measure`)
- ``report.json``: the same figures plus versions and what was compared
  (no thresholds and no pass/fail: those change without rerunning)
- ``report.md`` + ``errors.png``: the human-readable measurement report
- ``report.html``: the same as one self-contained page (the variants report of
  :mod:`modelbuild.report_html` with this one variant), deterministic bytes
- ``timings.json``: what this run measured of this machine (load time,
  speeds, peak memory; :data:`.expectations.TIMING_FIGURES`). Kept apart so
  that the files above rebuild byte for byte: the step declares it a
  measurement file (``ValidateStep.measurement_files``), which ``verify
  --rebuild`` and ``release`` report as "not compared" instead of a difference.

Beside it, written by whoever judges (the engine's build report):
:func:`render_verdict_report` turns a verdict into markdown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from modelbuild.compare import compare_reports
from modelbuild.step import write_json

from .expectations import EXPECTATIONS, TIMING_FIGURES, fmt

__all__ = ["write_reports", "render_measurements_md", "render_verdict_report", "load_measurements",
           "load_timings", "split_timings", "TIMINGS_FILE"]

REPORT_VERSION = 1
#: The measurement file of the validate step's output (machine- and run-dependent figures).
TIMINGS_FILE = "timings.json"
TIMINGS_VERSION = 1
#: Keys of the TextLLMRunner stats that are clock readings (the token counts are reproducible).
_RUNNER_TIMINGS = ("prefill_ms", "decode_ms", "load_ms", "prefill_tokens_per_s", "decode_tokens_per_s")

_LLM_ROWS = [
    ("cosine", "cosine similarity (worst run)"), ("top1_agreement", "top-1 agreement"),
    ("token_agreement", "greedy token agreement"), ("first_divergence", "first divergence (token)"),
    ("max_abs_error", "max abs error"), ("mean_abs_error", "mean abs error"),
    ("perplexity", "perplexity (eval text)"), ("reference_perplexity", "reference perplexity"),
    ("perplexity_ratio", "perplexity ratio"), ("size_mb", "size (MB)"), ("load_time_s", "load time (s)"),
    ("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s"),
    ("latency_ms", "latency per sample (ms)"), ("peak_rss_mb", "peak RSS (MB)"),
]


def load_measurements(path: Path) -> dict:
    """measurements.json of a measurements artifact directory."""
    return json.loads((Path(path) / "measurements.json").read_text())


def load_timings(path: Path) -> dict | None:
    """timings.json of a measurements artifact directory; None if absent or unreadable
    (artifacts measured before timings were split off keep them in measurements.json)."""
    try:
        data = json.loads((Path(path) / TIMINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def split_timings(m: Mapping[str, Any]) -> tuple[dict, dict]:
    """(reproducible measurements, timings) of what :mod:`.measure` returned.

    The timing figures of the summary, the TextLLMRunner's clock readings and
    ``timing_source`` move to the timings; everything else (accuracy, size,
    token counts) stays. Accuracy figures come out bit-identical from run to
    run (:mod:`.metrics` reduces without BLAS threads), so nothing is rounded.
    """
    kept = {k: v for k, v in m.items() if k != "timing_source"}
    summary = dict(m.get("summary") or {})
    timings: dict[str, Any] = {
        "format_version": TIMINGS_VERSION,
        "note": "Measured on this machine in this run: not reproducible, so kept apart from the "
                "other files (rebuild checks report this file as not compared).",
        "summary": {k: summary.pop(k) for k in TIMING_FIGURES if k in summary},
        "timing_source": m.get("timing_source"),
        "runner": None,
    }
    kept["summary"] = summary
    runner = m.get("runner")
    if isinstance(runner, Mapping):
        kept["runner"] = {k: v for k, v in runner.items() if k not in _RUNNER_TIMINGS}
        timings["runner"] = {k: runner[k] for k in _RUNNER_TIMINGS if k in runner}
    return kept, timings


def render_measurements_md(m: Mapping[str, Any], title: str, plot: str | None) -> str:
    """Markdown of the measurements (figures only; the verdict is not part of it)."""
    s = m["summary"]
    lines = [f"# Validation measurements: {title}", "",
             f"Artifact: `{m['artifact']['kind']}` ({fmt(m['artifact']['size_bytes'])} bytes), "
             f"compared with the reference `{m['reference']['target']}` "
             f"({m['reference']['implementation']}).", "",
             "These are measurements. Whether they pass is judged against the recipe's "
             "expectations at build time and shown in the build report.", "",
             "| figure | value |", "|---|---|"]
    for key, label in _LLM_ROWS:
        if key in s:
            lines.append(f"| {label} | {fmt(s[key])} |")
    lines += ["", "## Runs", "", "| run | positions | cosine | top-1 | max abs error | tokens | first divergence |",
              "|---|---|---|---|---|---|---|"]
    for r in m["runs"]:
        lines.append(f"| {r['name']} | {fmt(r.get('positions'))} | {fmt(r.get('cosine'))} | "
                     f"{fmt(r.get('top1_agreement'))} | {fmt(r.get('max_abs_error'))} | "
                     f"{fmt(r.get('token_agreement'))} | {fmt(r.get('first_divergence'))} |")
    if m.get("runner"):
        rn = m["runner"]
        lines += ["", f"TextLLMRunner: prompt tokens {rn['prompt_tokens']}, generated {rn['generated_tokens']}."]
    lines += ["", f"Timings and memory of the run (load time, speeds, peak RSS) are in `{TIMINGS_FILE}`: "
              "they depend on the machine and the run, so this report leaves them out and stays "
              "byte-identical when rebuilt."]
    if plot:
        lines += ["", f"![error per position]({plot})"]
    versions = m.get("versions", {})
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, m: dict, title: str, plot: str | None, target: str | None = None) -> None:
    """Write measurements.json, report.json, report.md, report.html and timings.json into ``out``.

    ``m`` is what :mod:`.measure` returned; its timings go to timings.json
    only (:func:`split_timings`), so the other files are reproducible.
    ``target`` names the variant on the page (default: the artifact's target,
    which, like the title, is already in report.json; the validate step keeps
    that default so its output does not depend on its own target name, which
    is not in the action key). ``plot``, when given, must already be written
    (it is inlined in the page).
    """
    m, timings = split_timings(m)
    write_json(out / "measurements.json", m)
    report = {
        "report_version": REPORT_VERSION,
        "kind": "validation-measurements",
        "title": title,
        "status": m["status"],
        "artifact": m["artifact"],
        "reference": m["reference"],
        "summary": m["summary"],
        "runs": m["runs"],
        "runner": m.get("runner"),
        "versions": m.get("versions", {}),
        "plot": plot,
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_measurements_md(m, title, plot))
    name = target or m["artifact"].get("target") or title
    page = compare_reports({name: out / "report.json"}, timings=False).html(title=f"Validation: {title}")
    (out / "report.html").write_text(page, encoding="utf-8")
    write_json(out / TIMINGS_FILE, timings)


def render_verdict_report(measurements_dir: Path, verdict) -> str:
    """Markdown for a verdict on cached measurements: pass/fail, each expectation, the figures.

    ``verdict`` is the :class:`modelbuild.step.Verdict` returned by
    ``ValidateStep.judge`` (its ``figures`` carry the checks).
    """
    m = load_measurements(measurements_dir)
    status = verdict.status or ("pass" if verdict.ok else "fail")
    lines = [f"# Validation verdict: {status.upper()}", ""]
    if verdict.reason:
        lines += [verdict.reason, ""]
    checks = verdict.figures.get("checks", [])
    if checks:
        lines += ["| expectation | figure | value | bound | result |", "|---|---|---|---|---|"]
        docs = {e.param: e for e in EXPECTATIONS}
        for c in checks:
            sign = docs[c["expectation"]].op if c["expectation"] in docs else c["op"]
            lines.append(f"| {c['expectation']} | {c['figure']} | {fmt(c['value'])} | {sign} {fmt(c['bound'])} | "
                         f"{'ok' if c['ok'] else 'FAIL'} |")
    else:
        lines.append("No expectations set: the measurements are recorded, nothing is gated.")
    lines += ["", render_measurements_md(m, m.get("title", str(measurements_dir.name)), "errors.png"
                                         if (Path(measurements_dir) / "errors.png").exists() else None)]
    timings = load_timings(measurements_dir)
    if timings and timings.get("summary"):
        lines += ["## Timings of this run (not reproducible)", "",
                  f"From `{TIMINGS_FILE}` ({timings.get('timing_source') or 'timed'}): they depend on the machine "
                  "and its load.", "", "| figure | value |", "|---|---|"]
        labels = dict(_LLM_ROWS)
        lines += [f"| {labels.get(k, k)} | {fmt(v)} |" for k, v in timings["summary"].items()]
        lines.append("")
    return "\n".join(lines)
