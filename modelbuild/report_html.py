"""The variants report as one self-contained HTML page.

``modelbuild report TARGET... --html report.html`` and the validate step
(``report.html`` beside ``report.md``) both draw it from a
:class:`modelbuild.compare.Comparison`. Choosing a variant is a trade of size,
accuracy and speed; the page shows it at a glance: a table of the variants,
size- and speed-versus-accuracy charts with the Pareto front, the drift per
stage, and the top operators where a profile exists.

Self-contained and deterministic: styles inline, charts as hand-written SVG
(:mod:`modelbuild.svgchart`), the error plots as ``data:`` URIs, no script, no
network, no timestamp; the same reports give the same bytes. Every piece of
user data (target names, parameters, reasons) goes through ``html.escape``.
Pure Python: no numpy, torch or matplotlib.

Example::

    cmp = compare_reports({"a-validate": Path("out/a-validate/report.json")})
    Path("report.html").write_text(render_page(cmp, title="tiny-llama variants"))
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from typing import Any

from .compare import BREAK_DROP, Comparison, distinguishing_params, stage_drift
from .svgchart import Axis, Point, scatter

__all__ = ["render_page", "badge", "outcome_label"]

#: (row key, column title, better: "high" | "low" | None) of the variants table's figures.
_FIGURE_COLUMNS = (
    ("size_mb", "size MB", "low"),
    ("cosine", "cosine", "high"),
    ("token_agreement", "token agreement", "high"),
    ("perplexity_ratio", "ppl ratio", None),
    ("prefill_tokens_per_s", "prefill tok/s", "high"),
    ("decode_tokens_per_s", "decode tok/s", "high"),
    ("peak_rss_mb", "peak MB", "low"),
)
_TOP_OPERATORS = 10

_CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --unavailable:#8250df; --measured:#0969da; --missing:#6e7781;
        --skipped:#9a6700; --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --band:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
main { max-width: 1440px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 8px; }
h3 { font-size: 14px; margin: 18px 0 6px; }
.sub, .note { color: var(--muted); } .note { font-size: 13px; margin: 6px 0; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
th.num { white-space: normal; min-width: 64px; }
tbody tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.best { font-weight: 700; }
td.target { font-weight: 600; white-space: nowrap; }
.dim { color: var(--muted); }
.reason { display: block; color: var(--muted); font-size: 12px; max-width: 230px; margin-top: 2px; }
.made { display: block; color: var(--muted); font-size: 12px; font-weight: 400; }
.chain { white-space: nowrap; font-size: 12px; } td.how { min-width: 240px; max-width: 360px; }
code, .param { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.param { display: inline-block; background: var(--band); border: 1px solid var(--line); border-radius: 4px;
         padding: 0 5px; margin: 1px 2px 1px 0; white-space: nowrap; }
.badge { display: inline-block; border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600;
         color: #fff; white-space: nowrap; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.badge.unavailable { background: var(--unavailable); } .badge.measured { background: var(--measured); }
.badge.missing { background: var(--missing); } .badge.skipped { background: var(--skipped); }
tr.unavailable td, tr.missing td { background: #fbfaff; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 20px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; font-family: system-ui, sans-serif; }
svg .plot { fill: #fff; stroke: var(--line); } svg .grid { stroke: #eaeef2; }
svg .tick { font-size: 11px; fill: var(--muted); } svg .axis { font-size: 12px; fill: var(--ink); }
svg .label { font-size: 11px; fill: var(--ink); paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg .leader { stroke: #afb8c1; stroke-width: 1; }
svg .front { fill: none; stroke: #bf8700; stroke-width: 2; stroke-dasharray: 6 4; }
svg .pt { stroke: #fff; stroke-width: 1.5; } svg .pt.pareto { stroke: #bf8700; stroke-width: 3; }
svg .pt.pass { fill: var(--pass); } svg .pt.fail { fill: var(--fail); } svg .pt.measured { fill: var(--measured); }
svg .pt.skipped { fill: var(--skipped); }
.legend { font-size: 12px; color: var(--muted); margin-top: 4px; }
.legend span { margin-right: 12px; white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; vertical-align: -1px; }
.dot.ring { background: #fff; border: 3px solid #bf8700; }
tr.breaks td { background: #fff5f5; } .flag { color: var(--fail); font-weight: 600; white-space: nowrap; }
.bar { display: inline-block; height: 9px; background: var(--fail); border-radius: 2px; vertical-align: 0; }
.bar.op { background: var(--measured); }
.run { white-space: nowrap; } .worst { color: var(--fail); font-weight: 600; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--measured); }
details img { max-width: 100%; border: 1px solid var(--line); margin-top: 6px; }
footer { margin-top: 36px; font-size: 12px; color: var(--muted); }
"""


def _num(value: Any, key: str = "") -> str:
    """A figure as people read it: cosines to 6 significant digits, speeds as whole numbers."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else escape(str(value))
    if value != value:
        return "nan"
    if isinstance(value, int) and key not in ("cosine", "top1_agreement", "token_agreement"):
        return f"{value:,}"
    if key in ("cosine", "top1_agreement", "token_agreement"):
        return f"{value:.6g}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.001 or value == 0 else f"{value:.2e}"


def outcome_label(row: dict) -> str:
    """The outcome in words: pass, fail, needs macOS, measured, no report, skipped."""
    outcome = row.get("outcome", "measured")
    status = str(row.get("status") or "")
    if outcome == "unavailable":
        return "needs " + status.split("needs ", 1)[1] if "needs " in status else "unavailable"
    return {"missing": "no report"}.get(outcome, outcome)


def badge(row: dict) -> str:
    """The outcome as a coloured badge."""
    return f'<span class="badge {escape(row.get("outcome", "measured"))}">{escape(outcome_label(row))}</span>'


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _chip(key: str, value: Any) -> str:
    text = _value(value)
    if len(key) + len(text) > 44:  # a dict of image preprocessing options: the whole of it on hover
        cut = max(44 - len(key), 8)
        return f'<span class="param" title="{escape(text)}">{escape(key)}={escape(text[:cut])}…</span>'
    return f'<span class="param">{escape(key)}={escape(text)}</span>'


def _variants_table(cmp: Comparison, params: dict[str, dict]) -> str:
    rows = cmp.rows
    measured = [r for r in rows if r.get("outcome") not in ("unavailable", "missing")]
    best: dict[str, Any] = {}
    for key, _, better in _FIGURE_COLUMNS:
        values = [r[key] for r in measured if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
        if better and len(values) > 1 and len(set(values)) > 1:
            best[key] = max(values) if better == "high" else min(values)
    has_chain = any(d.get("chain") for d in cmp.details.values())
    head = ["<th>variant</th>", "<th>verdict</th>"]
    head += [f'<th class="num">{escape(title)}</th>' for _, title, _ in _FIGURE_COLUMNS]
    if has_chain:
        head += ["<th>chain of steps, distinguishing parameters</th>"]
    body = []
    for r in rows:
        outcome = r.get("outcome", "measured")
        reason = escape(r.get("reason") or "")
        if outcome == "unavailable":
            # The badge already says what is missing; say what it means and where to run it.
            reason = "not measured on this host"
            if r.get("command"):
                reason += f'; run it on a host that can: <code>{escape(r["command"])}</code>'
        made = " · ".join(escape(x) for x in (r.get("artifact"), r.get("kind")) if x)
        cells = [f'<td class="target">{escape(r["target"])}{f"<span class=made>{made}</span>" if made else ""}</td>',
                 f'<td>{badge(r)}{f"<span class=reason>{reason}</span>" if reason else ""}</td>']
        for key, _, _ in _FIGURE_COLUMNS:
            value = r.get(key)
            cls = "num best" if key in best and value == best[key] and outcome not in ("unavailable", "missing") else "num"
            cells.append(f'<td class="{cls}">{_num(value, key)}</td>')
        if has_chain:
            chain = cmp.details.get(r["target"], {}).get("chain") or []
            steps = " → ".join(f'<span title="{escape(s["target"])}">{escape(s["step"])}</span>' for s in chain)
            ps = "".join(_chip(k, v) for k, v in params.get(r["target"], {}).items())
            cells.append(f'<td class="how"><span class="chain">{steps or "–"}</span>{f"<br>{ps}" if ps else ""}</td>')
        body.append(f'<tr class="{escape(outcome)}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table class="variants"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _tip(r: dict) -> str:
    return (f"{r['target']}: cosine {_num(r.get('cosine'), 'cosine')}, size {_num(r.get('size_mb'))} MB, "
            f"decode {_num(r.get('decode_tokens_per_s'))} tok/s, {r.get('status')}")


def _charts(cmp: Comparison) -> str:
    rows = cmp.rows
    plotted = [r for r in rows if r.get("outcome") not in ("unavailable", "missing")
               and isinstance(r.get("cosine"), (int, float)) and math.isfinite(r["cosine"])]
    left_out = [r for r in rows if r not in plotted]
    speed_key, speed_title = "decode_tokens_per_s", "decode tokens/s"
    if not any(isinstance(r.get(speed_key), (int, float)) for r in plotted):
        speed_key, speed_title = "samples_per_s", "samples/s (1000 / latency ms)"
    figures = []
    for chart, caption, key, axis_title, better in (
            ("size", "Size against accuracy", "size_mb", "size (MB)", "low"),
            ("speed", "Speed against accuracy", speed_key, speed_title, "high")):
        points, missing = [], []
        for r in plotted:
            x = r.get(key)
            if key == "samples_per_s" and isinstance(r.get("latency_ms"), (int, float)) and r["latency_ms"] > 0:
                x = 1000 / r["latency_ms"]
            if isinstance(x, (int, float)) and math.isfinite(x) and (x > 0 or better == "low"):
                points.append(Point(r["target"], float(x), float(r["cosine"]), r.get("outcome", "measured"),
                                    _tip(r)))
            else:
                missing.append(r["target"])
        xs = [p.x for p in points]
        log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 20
        svg = scatter(points, chart=chart, x=Axis(axis_title, log=log), x_better=better)
        note = ""
        if missing:
            note = f'<p class="note">Not on this chart (no {escape(axis_title)} measured): {escape(", ".join(missing))}.</p>'
        figures.append(f"<figure><figcaption>{caption}</figcaption>"
                       f"{svg or '<p class=note>No variant has this figure yet.</p>'}{note}</figure>")
    legend = ('<div class="legend"><span><i class="dot" style="background:var(--pass)"></i>pass</span>'
              '<span><i class="dot" style="background:var(--fail)"></i>fail</span>'
              '<span><i class="dot" style="background:var(--measured)"></i>measured, not judged</span>'
              '<span><i class="dot ring"></i>on the Pareto front (dashed): no other variant is better on both axes</span>'
              '</div>')
    note = ""
    if left_out:
        names = ", ".join(f"{r['target']} ({outcome_label(r)})" for r in left_out)
        note = f'<p class="note">Not plotted, no figures from this host: {escape(names)}.</p>'
    return (f'<div class="charts">{"".join(figures)}</div>{legend}{note}'
            '<p class="note">Accuracy is the worst-run cosine similarity of the logits with the reference model, '
            'on a nines scale: each step up is ten times closer (0.99, 0.999, ...). '
            'Speeds and memory vary between runs and hosts; accuracy does not.</p>')


def _drop(drop: float) -> str:
    """A cosine drop; float noise (an fp32 stage's 1e-14) reads as 0."""
    return "0" if abs(drop) < 1e-6 else f"{drop:.2g}"


def _drift(cmp: Comparison) -> str:
    chains = cmp.chains()
    stages = stage_drift(cmp.rows, chains if chains else None)
    if not stages:
        return '<p class="note">No variant has accuracy figures yet.</p>'
    rows = {r["target"]: r for r in cmp.rows}
    worst = next((s for s in stages if s["breaks"]), None)
    if worst:
        lead = (f'<p>Accuracy breaks at <b>{escape(worst["artifact"])}</b>: cosine '
                f'{_num(worst["cosine_before"], "cosine")} at {escape(worst["after"])}, '
                f'{_num(worst["cosine"], "cosine")} after it.</p>')
    else:
        lead = '<p>No stage loses 0.001 of cosine or more: accuracy holds along the chain.</p>'
    top = max(max(s["drop"] for s in stages), 1e-12)
    body = []
    for s in stages:
        r = rows[s["target"]]
        runs = cmp.details.get(s["target"], {}).get("runs") or []
        cos_runs = [(run.get("name", "?"), run["cosine"]) for run in runs if isinstance(run.get("cosine"), (int, float))]
        low = min((c for _, c in cos_runs), default=None)
        # The worst run is called out only where accuracy was lost at all (as for a stage).
        flag_low = low is not None and len(cos_runs) > 1 and 1.0 - low >= BREAK_DROP
        per_run = " · ".join(f'<span class="run{" worst" if flag_low and c == low else ""}">'
                             f'{escape(str(n))}: {_num(c, "cosine")}</span>' for n, c in cos_runs)
        width = max(0.0, s["drop"]) / top * 80
        flag = ' <span class="flag">← breaks here</span>' if s["breaks"] else ""
        body.append(
            f'<tr class="{"breaks" if s["breaks"] else ""}"><td class="target">{escape(s["artifact"])}{flag}</td>'
            f'<td>{escape(s["after"])}</td><td class="num">{_num(s["cosine_before"], "cosine")} → '
            f'{_num(s["cosine"], "cosine")}</td>'
            f'<td class="num"><span class="bar" style="width:{width:.1f}px"></span> {_drop(s["drop"])}</td>'
            f'<td class="num">{_num(r.get("top1_agreement"), "top1_agreement")}</td>'
            f'<td class="num">{_num(r.get("first_divergence"))}</td>'
            f'<td class="num">{_num(r.get("perplexity_ratio"))}</td><td>{per_run or "–"}</td></tr>')
    table = ('<div class="scroll"><table><thead><tr><th>stage (artifact)</th><th>upstream stage</th>'
             '<th class="num">cosine before → after</th><th class="num">drop</th><th class="num">top-1</th>'
             '<th class="num">first divergence</th><th class="num">ppl ratio</th><th>cosine per run (worst in red)</th>'
             f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    how = ("Each stage is measured against the nearest validated stage upstream of its artifact in the chain of steps "
           "(the reference model when there is none)." if chains else
           "Each stage is measured against the row before it, in the order given.")
    plots = []
    for r in cmp.rows:
        plot = cmp.details.get(r["target"], {}).get("plot")
        if plot is not None:
            data = base64.b64encode(plot.read_bytes()).decode("ascii")
            plots.append(f'<details><summary>Error per position (errors.png): {escape(r["target"])}</summary>'
                         f'<img alt="error per position of {escape(r["target"])}" src="data:image/png;base64,{data}">'
                         '</details>')
    return lead + table + f'<p class="note">{how}</p>' + "".join(plots)


def _profiles(cmp: Comparison) -> str:
    parts = []
    for r in cmp.rows:
        ops = cmp.details.get(r["target"], {}).get("profile")
        if not ops:
            continue
        total = sum(o["time_ms"] for o in ops) or 1.0
        top = ops[:_TOP_OPERATORS]
        longest = top[0]["time_ms"] or 1.0
        body = "".join(
            f'<tr><td><code>{escape(o["name"])}</code></td><td class="num">{_num(o.get("calls"))}</td>'
            f'<td class="num">{_num(o["time_ms"])}</td><td class="num">{100 * o["time_ms"] / total:.1f}%</td>'
            f'<td><span class="bar op" style="width:{160 * o["time_ms"] / longest:.1f}px"></span></td></tr>'
            for o in top)
        parts.append(f'<h3>{escape(r["target"])}: top {len(top)} of {len(ops)} operators by time</h3>'
                     '<div class="scroll"><table><thead><tr><th>operator</th><th class="num">calls</th>'
                     '<th class="num">time ms</th><th class="num">share</th><th></th></tr></thead>'
                     f'<tbody>{body}</tbody></table></div>')
    if not parts:
        return ('<p class="note">No operator profile yet: when a target\'s output holds a <code>profile.json</code> '
                '(from a profile step), its slowest operators appear here.</p>')
    return "".join(parts)


def render_page(cmp: Comparison, title: str = "Variants") -> str:
    """The whole page as text (UTF-8); identical comparisons give identical text."""
    rows = cmp.rows
    params = distinguishing_params(cmp.chains())
    counts: dict[str, int] = {}
    for r in rows:
        counts[outcome_label(r)] = counts.get(outcome_label(r), 0) + 1
    summary = ", ".join(f"{n} {label}" for label, n in counts.items())
    if any(r.get("outcome") not in ("measured", "missing") for r in rows):
        provenance = "Verdicts are the last build's; figures come from each target's <code>report.json</code>."
    else:
        provenance = ("Figures as measured (<code>report.json</code>); pass or fail is judged against the recipe's "
                      "expectations at build time and shown by <code>modelbuild report</code>.")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{len(rows)} variant{"s" if len(rows) != 1 else ""}: {escape(summary)}. {provenance}</p>',
        "<h2>Variants</h2>",
        _variants_table(cmp, params),
        "<h2>Size, speed and accuracy</h2>",
        _charts(cmp),
        "<h2>Where accuracy breaks</h2>",
        _drift(cmp),
        "<h2>Top operators by time</h2>",
        _profiles(cmp),
        "<footer>Written by modelbuild from <code>report.json</code> files; "
        "<code>modelbuild report TARGET... --html FILE</code> puts several variants side by side.</footer>",
        "</main></body></html>",
        "",
    ])
