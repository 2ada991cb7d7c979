"""The variants report as an HTML page: content, determinism, and a real browser rendering it.

The report.json fixtures are written the way the validate step writes them
(see modelbuild/ml/validation/report.py and docs/validation.md), with the
figures measured on the tiny llama, so no ML stack is needed.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from modelbuild.compare import compare_reports, distinguishing_params, load_profile, stage_drift
from modelbuild.report_html import render_page
from modelbuild.svgchart import Point, nines, pareto_front

#: Debian's chromium (.ci/run installs it); Playwright launches it by path and never downloads a browser.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: target -> (artifact, kind, summary figures, per-run cosines), as measured on the tiny llama.
VARIANTS = {
    "tiny-llama-export-validate": ("tiny-llama-export", "exported-program", dict(
        size_mb=0.893199, cosine=0.99999994, top1_agreement=1.0, token_agreement=1.0, first_divergence=None,
        max_abs_error=2.1e-7, perplexity_ratio=1.0, prefill_tokens_per_s=205.1, decode_tokens_per_s=182.2,
        peak_rss_mb=611.3), [0.99999994, 0.99999996, 0.99999995]),
    "tiny-llama-8da4w-validate": ("tiny-llama-8da4w", "exported-program", dict(
        size_mb=0.828379, cosine=0.989707, top1_agreement=0.994595, token_agreement=1.0, first_divergence=None,
        max_abs_error=0.127, perplexity_ratio=0.999071, prefill_tokens_per_s=52.7, decode_tokens_per_s=46.3,
        peak_rss_mb=640.8), [0.989707, 0.990213, 0.990969]),
    "tiny-llama-pte-validate": ("tiny-llama-pte", "pte", dict(
        size_mb=0.717056, cosine=0.9999998, top1_agreement=1.0, token_agreement=1.0, first_divergence=None,
        max_abs_error=1.1e-5, perplexity_ratio=1.0, prefill_tokens_per_s=2310.0, decode_tokens_per_s=1764.7,
        peak_rss_mb=402.5), [0.9999998, 0.9999999, 0.9999998]),
    "tiny-llama-8da4w-pte-validate": ("tiny-llama-8da4w-pte", "pte", dict(
        size_mb=0.27328, cosine=0.989787, top1_agreement=0.994595, token_agreement=1.0, first_divergence=None,
        max_abs_error=0.127162, perplexity_ratio=0.998998, prefill_tokens_per_s=9120.0, decode_tokens_per_s=15000.0,
        peak_rss_mb=388.1), [0.989787, 0.990301, 0.990969]),
    "tiny-llama-bad-rope-validate": ("tiny-llama-bad-rope", "exported-program", dict(
        size_mb=0.893199, cosine=0.317, top1_agreement=0.114, token_agreement=0.0, first_divergence=0,
        max_abs_error=4.2, perplexity_ratio=1.31, prefill_tokens_per_s=198.4, decode_tokens_per_s=179.0,
        peak_rss_mb=612.0), [0.317, 0.402, 0.355]),
}
COREML = "tiny-llama-coreml-validate"  # an .mlpackage: "needs macOS" on Linux, no report.json
VERDICTS = {
    "tiny-llama-export-validate": {"ok": True, "status": "pass", "reason": "meets min_cosine, min_token_agreement"},
    "tiny-llama-8da4w-validate": {"ok": True, "status": "pass", "reason": "meets min_cosine, min_token_agreement"},
    "tiny-llama-pte-validate": {"ok": True, "status": "pass", "reason": "meets min_cosine, max_size_mb"},
    "tiny-llama-8da4w-pte-validate": None,  # measured, never judged
    "tiny-llama-bad-rope-validate": {"ok": False, "status": "fail",
                                     "reason": "cosine 0.317 < min_cosine 0.9999; token_agreement 0 < min_token_agreement 1"},
    COREML: {"ok": False, "state": "unavailable", "status": "not validated here: needs macOS", "reason": "",
             "command": f"modelbuild build {COREML}"},
}
_FETCH = {"target": "tiny-llama-ckpt", "step": "fetch", "params": {"source": "synthetic", "size": "tiny", "seed": 0}}
_EXPORT = {"target": "tiny-llama-export", "step": "export", "params": {"dtype": "fp32", "max_seq_len": 128}}
_Q = {"target": "tiny-llama-8da4w", "step": "quantize", "params": {"linear": "8da4w", "group_size": 32}}
CHAINS = {
    "tiny-llama-export-validate": [_FETCH, _EXPORT],
    "tiny-llama-8da4w-validate": [_FETCH, _EXPORT, _Q],
    "tiny-llama-pte-validate": [_FETCH, _EXPORT, {"target": "tiny-llama-pte", "step": "lower",
                                                  "params": {"backend": "xnnpack"}}],
    "tiny-llama-8da4w-pte-validate": [_FETCH, _EXPORT, _Q, {"target": "tiny-llama-8da4w-pte", "step": "lower",
                                                            "params": {"backend": "xnnpack"}}],
    "tiny-llama-bad-rope-validate": [_FETCH, {**_EXPORT, "target": "tiny-llama-bad-rope",
                                              "params": {**_EXPORT["params"], "permute_qk": False}}],
    COREML: [_FETCH, _EXPORT, {"target": "tiny-llama-coreml", "step": "coreml", "params": {"precision": "fp16"}}],
}
PROFILE = {"operators": [
    {"name": "aten::linear", "time_ms": 4.8, "calls": 448}, {"name": "llama::sdpa_with_kv_cache", "time_ms": 1.9,
                                                             "calls": 64},
    {"name": "aten::embedding", "time_ms": 0.3, "calls": 32}, {"name": "<script>alert(1)</script>", "time_ms": 0.1},
    {"name": "aten::rms_norm", "time_ms": 0.7, "calls": 160}]}


def _png(width: int = 4, height: int = 2) -> bytes:
    """A tiny valid PNG standing in for errors.png."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_reports(root: Path, profile: bool = True) -> dict[str, Path]:
    """out/<target>/report.json (+ errors.png, + a profile.json for one variant) as validate leaves them."""
    paths = {}
    for target, (artifact, kind, summary, run_cosines) in VARIANTS.items():
        out = root / target
        out.mkdir(parents=True)
        runs = [{"name": name, "positions": n, "cosine": c, "top1_agreement": summary["top1_agreement"]}
                for name, n, c in zip(("prompt 0", "prompt 1", "eval text"), (18, 24, 64), run_cosines)]
        report = {
            "report_version": 1, "kind": "validation-measurements", "title": f"{artifact} vs tiny-llama-ref",
            "status": "measured",
            "artifact": {"kind": kind, "target": artifact, "size_bytes": int(summary["size_mb"] * 1e6)},
            "reference": {"target": "tiny-llama-ref", "implementation": "transformers LlamaForCausalLM", "kind": "llm"},
            "summary": {**summary, "mean_abs_error": summary["max_abs_error"] / 10, "perplexity": 318.0,
                        "reference_perplexity": 318.0 / summary["perplexity_ratio"], "load_time_s": 0.04},
            "runs": runs, "runner": None, "versions": {"python": "3.11.2", "torch": "2.13.0"}, "plot": "errors.png",
        }
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        (out / "errors.png").write_bytes(_png())
        paths[target] = out / "report.json"
    if profile:
        (root / "tiny-llama-8da4w-pte-validate" / "profile.json").write_text(json.dumps(PROFILE))
    paths[COREML] = root / COREML / "report.json"  # never measured here
    return paths


def _page(tmp_path: Path, **kw) -> tuple[str, object]:
    cmp = compare_reports(write_reports(tmp_path / "out", **kw), VERDICTS, CHAINS)
    return cmp.html(title="tiny-llama variants"), cmp


def _figured() -> list[str]:
    return list(VARIANTS)


# -- the model behind the page ---------------------------------------------------------------------------------


def test_rows_carry_typed_outcomes_and_the_new_figures(tmp_path):
    _, cmp = _page(tmp_path)
    outcome = {r["target"]: r["outcome"] for r in cmp.rows}
    assert outcome == {"tiny-llama-export-validate": "pass", "tiny-llama-8da4w-validate": "pass",
                       "tiny-llama-pte-validate": "pass", "tiny-llama-8da4w-pte-validate": "measured",
                       "tiny-llama-bad-rope-validate": "fail", COREML: "unavailable"}
    row = cmp.rows[3]
    assert (row["peak_rss_mb"], row["prefill_tokens_per_s"]) == (388.1, 9120.0)
    json.dumps(cmp.rows)  # rows stay JSON for `report --json`


def test_drift_follows_the_chain_of_steps_not_the_given_order(tmp_path):
    _, cmp = _page(tmp_path)
    stages = {s["target"]: s for s in stage_drift(cmp.rows, CHAINS)}
    # The 8da4w .pte is measured after the 8da4w program (its nearest validated ancestor), not after the fp32 .pte.
    assert stages["tiny-llama-8da4w-pte-validate"]["after"] == "tiny-llama-8da4w"
    assert stages["tiny-llama-export-validate"]["after"] == "reference"
    assert stages["tiny-llama-8da4w-validate"]["drop"] == pytest.approx(0.99999994 - 0.989707)
    assert [s["target"] for s in stages.values() if s["breaks"]] == ["tiny-llama-bad-rope-validate"]
    assert COREML not in stages
    # Without chains, the order given stands in (like the terminal note).
    plain = stage_drift(cmp.rows)
    assert plain[3]["after"] == "tiny-llama-pte"


def test_distinguishing_params_are_those_that_differ():
    params = distinguishing_params(CHAINS)
    assert params["tiny-llama-8da4w-pte-validate"] == {"quantize.linear": "8da4w", "quantize.group_size": 32,
                                                        "lower.backend": "xnnpack"}
    assert params["tiny-llama-export-validate"] == {}  # shares fetch and export with everyone
    assert params["tiny-llama-bad-rope-validate"] == {"export.permute_qk": False}
    assert "fetch.seed" not in {k for p in params.values() for k in p}
    assert distinguishing_params({"one": CHAINS[COREML]}) == {"one": {}}
    # A step every chain uses shows only what differs.
    g64 = [_FETCH, _EXPORT, {**_Q, "params": {"linear": "8da4w", "group_size": 64}}]
    assert distinguishing_params({"g32": CHAINS["tiny-llama-8da4w-validate"], "g64": g64}) == {
        "g32": {"quantize.group_size": 32}, "g64": {"quantize.group_size": 64}}


def test_pareto_front_on_both_axes():
    pts = [Point("small-rough", 0.27, 0.9898), Point("big-exact", 0.89, 0.99999994),
           Point("mid-exact", 0.72, 0.9999998), Point("big-rough", 0.83, 0.9897)]
    assert pareto_front(pts, "low") == [True, True, True, False]
    speed = [Point("fast", 15000, 0.9898), Point("slow-exact", 182, 0.99999994), Point("slow-rough", 46, 0.9897)]
    assert pareto_front(speed, "high") == [True, True, False]
    assert nines(0.99) == pytest.approx(2) and nines(1.0) == 7 and nines(0.0) == 0


def test_profile_is_read_sorted_and_its_absence_is_fine(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    ops = load_profile(tmp_path / "profile.json")
    assert [o["name"] for o in ops][:2] == ["aten::linear", "llama::sdpa_with_kv_cache"]
    assert load_profile(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert load_profile(tmp_path / "bad.json") is None
    (tmp_path / "us.json").write_text(json.dumps({"ops": [{"op": "aten::mm", "time_us": 1500}]}))
    assert load_profile(tmp_path / "us.json") == [{"name": "aten::mm", "time_ms": 1.5, "calls": None}]


# -- the page as text --------------------------------------------------------------------------------------------


def test_page_is_self_contained_escaped_and_deterministic(tmp_path):
    page, cmp = _page(tmp_path)
    assert page == cmp.html(title="tiny-llama variants")  # same reports, same bytes
    assert page == render_page(compare_reports(write_reports(tmp_path / "again"), VERDICTS, CHAINS),
                               title="tiny-llama variants")  # nothing of the location leaks in
    # No network: nothing is fetched from anywhere; the error plots are inline.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "@import" not in page and "<script" not in page.replace("&lt;script&gt;", "")
    assert page.count("data:image/png;base64,") == len(VARIANTS)
    # User data is escaped: an operator named <script> is text, not markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # No timestamps.
    assert not re.search(r"20\d\d-\d\d-\d\d", page)


def test_page_holds_the_table_charts_drift_and_profile(tmp_path):
    page, _ = _page(tmp_path)
    for target in [*VARIANTS, COREML]:
        assert f'<td class="target">{target}<' in page
    assert page.count('data-chart="size"') == 1 and page.count('data-chart="speed"') == 1
    for chart in ("size", "speed"):
        svg = page.split(f'data-chart="{chart}"')[1].split("</svg>")[0]
        assert sorted(re.findall(r'data-target="([^"]+)"', svg)) == sorted(VARIANTS)
        assert COREML not in svg  # needs macOS: in the table, not in the charts
    assert '<span class="badge unavailable">needs macOS</span>' in page
    assert f"not measured on this host; run it on a host that can: <code>modelbuild build {COREML}</code>" in page
    assert "Not plotted, no figures from this host: tiny-llama-coreml-validate (needs macOS)" in page
    assert "fetch</span> → <span" in page and "quantize.group_size=32" in page
    assert "Accuracy breaks at <b>tiny-llama-bad-rope</b>" in page
    assert "top 5 of 5 operators by time" in page and "aten::linear" in page


def test_page_without_profiles_or_chains_still_renders(tmp_path):
    cmp = compare_reports(write_reports(tmp_path / "out", profile=False), VERDICTS)
    page = cmp.html()
    assert "No operator profile yet" in page
    assert "chain of steps" not in page  # no graph: no chain column
    assert "measured against the row before it" in page


def test_generic_modules_are_charted_by_samples_per_second(tmp_path):
    """A convnet has no tokens/s: its speed is 1000 / latency_ms, and the page says so."""
    out = tmp_path / "tinyconv-pte-validate"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({
        "report_version": 1, "kind": "validation-measurements", "status": "measured",
        "artifact": {"kind": "pte", "target": "tinyconv-pte", "size_bytes": 41000},
        "summary": {"cosine": 0.99999, "top1_agreement": 1.0, "max_abs_error": 3e-6, "size_mb": 0.041,
                    "latency_ms": 0.8, "peak_rss_mb": 300.0},
        "runs": [{"name": f"sample {i} output 0", "cosine": 0.99999} for i in range(4)]}))
    page = compare_reports({"tinyconv-pte-validate": out / "report.json"}).html()
    speed = page.split('data-chart="speed"')[1].split("</svg>")[0]
    assert "samples/s (1000 / latency ms)" in speed and speed.count("data-target=") == 1
    assert "sample 3 output 0: 0.99999" in page


def test_report_html_is_pure_python():
    code = ("import sys, modelbuild.report_html, modelbuild.svgchart;"
            "print([m for m in ('torch', 'numpy', 'matplotlib', 'networkx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- as a person sees it: a real browser --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_page_renders_in_a_headless_browser(tmp_path):
    """Chromium loads the page without console errors or requests; one point per measured variant per chart."""
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(_page(tmp_path)[0], encoding="utf-8")
    errors, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(page_file.as_uri(), wait_until="load")
            assert errors == []
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
            assert page.title() == "tiny-llama variants"
            for chart in ("size", "speed"):
                points = page.locator(f'svg[data-chart="{chart}"] circle[data-target]')
                assert points.count() == len(_figured())
                assert sorted(points.evaluate_all("els => els.map(e => e.dataset.target)")) == sorted(_figured())
                # Every point is drawn inside the chart, with a visible label beside it.
                box = page.locator(f'svg[data-chart="{chart}"]').bounding_box()
                for i in range(points.count()):
                    p = points.nth(i).bounding_box()
                    assert box["x"] <= p["x"] and p["x"] + p["width"] <= box["x"] + box["width"] + 1
                    assert box["y"] <= p["y"] and p["y"] + p["height"] <= box["y"] + box["height"] + 1
                labels = page.locator(f'svg[data-chart="{chart}"] text.label').all_text_contents()
                assert sorted(labels) == sorted(_figured())
                assert page.locator(f'svg[data-chart="{chart}"] circle[data-pareto="1"]').count() >= 1
            assert page.locator("table.variants tbody tr").count() == len(VARIANTS) + 1
            assert page.locator("tr.unavailable .badge").inner_text() == "needs macOS"
            # The inline error plots decode as images.
            page.locator("details summary").first.click()
            assert page.locator("details img").first.evaluate("img => img.naturalWidth") == 4
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- where the page is written: report --html and the validate step -----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["tiny-llama-export-validate", "tiny-llama-8da4w-validate", "tiny-llama-pte-validate",
           "tiny-llama-8da4w-pte-validate", "tinyconv-mlpackage-validate"]


def _shipped_project(tmp_path: Path) -> Path:
    """A copy of the shipped recipes whose validate targets have reports and verdicts, as after a build on Linux."""
    from modelbuild.history import History

    root = tmp_path / "proj"
    shutil.copytree(ROOT / "recipes", root / "recipes")
    fixtures = write_reports(tmp_path / "fixtures")
    renamed = dict(zip(SHIPPED[:4], list(VARIANTS)[:4]))
    history = History(root / "cache")
    for target, fixture in renamed.items():
        (root / "out" / target).mkdir(parents=True)
        shutil.copy(fixtures[fixture], root / "out" / target / "report.json")
        if VERDICTS[fixture]:
            history.save(target, {"status": "built", "reason": "new target", "verdict": VERDICTS[fixture]})
    history.save("tinyconv-mlpackage-validate", {
        "status": "unavailable", "reason": "not validated here: needs macOS", "verdict": None,
        "command": "modelbuild build tinyconv-mlpackage-validate"})
    return root


def test_report_html_for_the_shipped_validation_targets(tmp_path):
    """`modelbuild report ... --html FILE`: the graph adds each artifact's chain and what sets the variants apart."""
    from modelbuild.cli import main

    root = _shipped_project(tmp_path)
    page_file = tmp_path / "report.html"
    assert main(["report", *SHIPPED, "--project", str(root), "--html", str(page_file), "--json"]) == 0
    page = page_file.read_text(encoding="utf-8")
    assert "fetch</span> → <span" in page
    chain = page.split('<td class="target">tiny-llama-8da4w-pte-validate<')[1].split("</tr>")[0]
    assert re.search(r">fetch<.*>export<.*>quantize<.*>lower<", chain)
    assert "quantize.group_size=32" in chain and "quantize.linear=8da4w" in chain
    macos = page.split('<td class="target">tinyconv-mlpackage-validate<')[1].split("</tr>")[0]
    assert '<span class="badge unavailable">needs macOS</span>' in macos
    assert "<code>modelbuild build tinyconv-mlpackage-validate</code>" in macos
    for chart in ("size", "speed"):
        svg = page.split(f'data-chart="{chart}"')[1].split("</svg>")[0]
        assert sorted(re.findall(r'data-target="([^"]+)"', svg)) == sorted(SHIPPED[:4])
    # The chain places the 8da4w .pte after the 8da4w program, not after the row before it.
    assert re.search(r"tiny-llama-8da4w-pte</td><td>tiny-llama-8da4w</td>", page)
    from modelbuild.api import report

    again = tmp_path / "again.html"
    report(SHIPPED, project=root, html=again)
    assert again.read_bytes() == page_file.read_bytes()


def test_validate_writes_report_html_beside_report_md(tmp_path):
    """write_reports (the validate step's last act) adds report.html: same measurements, same bytes."""
    from modelbuild.ml.validation.report import write_reports as write_validation_reports

    artifact, kind, summary, run_cosines = VARIANTS["tiny-llama-8da4w-pte-validate"]
    m = {"format_version": 1, "status": "measured", "kind": "llm", "title": f"{artifact} vs tiny-llama-ref",
         "artifact": {"kind": kind, "size_bytes": 273280, "target": artifact},
         "reference": {"target": "tiny-llama-ref", "implementation": "transformers", "kind": "llm"},
         "summary": summary, "runs": [{"name": f"prompt {i}", "positions": 18, "cosine": c}
                                      for i, c in enumerate(run_cosines)],
         "runner": None, "versions": {"python": "3.11.2"}, "host": {"platform": "linux", "machine": "x86_64"}}
    pages = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        (out / "errors.png").write_bytes(_png())
        write_validation_reports(out, json.loads(json.dumps(m)), m["title"], "errors.png")
        assert {"report.json", "report.md", "report.html"} <= {p.name for p in out.iterdir()}
        pages.append((out / "report.html").read_bytes())
    assert pages[0] == pages[1]
    page = pages[0].decode()
    assert "<title>Validation: tiny-llama-8da4w-pte vs tiny-llama-ref</title>" in page
    assert '<td class="target">tiny-llama-8da4w-pte<' in page and "0.989787" in page
    # One point, in the size chart: speeds and memory are in timings.json, outside the reproducible page.
    assert page.count("circle class=") == 1
    assert str(summary["decode_tokens_per_s"]) not in page and str(summary["peak_rss_mb"]) not in page
    timings = json.loads((tmp_path / "a" / "timings.json").read_text())["summary"]
    assert timings["decode_tokens_per_s"] == summary["decode_tokens_per_s"]
    assert "data:image/png;base64," in page
