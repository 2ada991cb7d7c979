"""Profile reports and drift wording (light: JSON, text and SVG only; no numpy, no torch).

:func:`summarize` turns the rows of an ETDump (:mod:`.etdump`) into the
``profile.json`` figures; :func:`write_profile` writes ``profile.json``,
``profile.md``, ``profile.svg`` (the top operators as bars) and a small
``report.json`` that lets ``modelbuild report`` put profiles of several
variants side by side. :func:`first_drift` and :func:`describe_drift` name
the first operator past a tolerance; the validate step's judge uses them, so
they must stay light.

Example::

    profile = summarize(rows, load=..., memory=..., artifact=..., inputs="5 calls (...)")
    write_profile(out, profile, title="tiny-llama-pte")
    describe_drift(first_drift(drift["ops"], 0.999))   # "aten.linear in layers.3.attention.wo, cosine 0.91"
"""

from __future__ import annotations

import statistics
from html import escape
from pathlib import Path
from typing import Any

from modelbuild.step import write_json

__all__ = ["PROFILE_VERSION", "TOP", "summarize", "write_profile", "render_profile_md", "bar_svg",
           "first_drift", "describe_drift", "first_drift_of"]

PROFILE_VERSION = 1
#: Rows in the "top by total time" table and chart.
TOP = 20


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def summarize(rows: dict[str, Any], *, load: dict[str, float], wall_forward_ms: list[float],
              memory: dict[str, dict], artifact: dict[str, Any], inputs: str, warmup: int) -> dict[str, Any]:
    """The profile.json figures from :func:`modelbuild.ml.profile.etdump.instruction_rows`' ``rows``."""
    instructions = rows["instructions"]
    forward = _stats(rows["forward_ms"])
    covered = sum(r["mean_ms"] for r in instructions)
    by_name: dict[str, dict[str, Any]] = {}
    for r in instructions:
        op = by_name.setdefault(r["name"], {"name": r["name"], "kind": r["kind"], "time_ms": 0.0, "calls": 0,
                                            "instructions": 0})
        op["time_ms"] += r["total_ms"]
        op["calls"] += r["calls"]
        op["instructions"] += 1
    operators = sorted(by_name.values(), key=lambda o: (-o["time_ms"], o["name"]))
    for op in operators:
        op["mean_ms"] = op["time_ms"] / op["calls"] if op["calls"] else 0.0
    total = sum(r["total_ms"] for r in instructions) or 1.0
    top = sorted(instructions, key=lambda r: (-r["total_ms"], r["index"]))[:TOP]
    delegates = [r for r in instructions if r["kind"] == "delegate"]
    load_s = (load.get("load_program_ms", 0.0) + load.get("load_method_ms", 0.0)) / 1e3
    plan = memory.get("forward", {})
    return {
        "format_version": PROFILE_VERSION,
        "kind": "profile",
        "artifact": artifact,
        "inputs": inputs,
        "warmup": warmup,
        "runs": len(rows["forward_ms"]),
        "forward_ms": forward,
        "wall_forward_ms": _stats(wall_forward_ms),
        "coverage": covered / forward["mean"] if forward["mean"] else None,
        "load": {**load, "load_time_s": load_s},
        "memory_plan": memory,
        "planned_memory_bytes": plan.get("total_bytes"),
        "operators": operators,
        "delegates": [{"index": r["index"], "name": r["name"], "backend": r.get("backend"), "module": r["module"],
                       "ops": r["ops"], "mean_ms": r["mean_ms"], "total_ms": r["total_ms"], "inner": r["inner"]}
                      for r in delegates],
        "top": [{"rank": i + 1, "index": r["index"], "name": r["name"], "kind": r["kind"], "module": r["module"],
                 "mean_ms": r["mean_ms"], "total_ms": r["total_ms"], "share": r["total_ms"] / total}
                for i, r in enumerate(top)],
        "instructions": instructions,
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def render_profile_md(p: dict[str, Any], title: str, plot: str | None = "profile.svg") -> str:
    """profile.md: what ran, the load time, the memory plan, the top instructions, the operators, the delegates."""
    fw, load = p["forward_ms"], p["load"]
    art = p.get("artifact", {})
    coverage = "-" if p["coverage"] is None else f"{100 * p['coverage']:.1f}%"
    lines = [f"# Profile: {title}", "",
             f"ExecuTorch ETDump of `{art.get('target', '?')}` ({art.get('backend') or 'unknown backend'}), "
             f"{p['inputs']}, {p['runs']} measured after {p['warmup']} warm-up.", "",
             "| figure | value |", "|---|---|",
             f"| forward (ETDump Method::execute), mean ms | {_ms(fw['mean'])} |",
             f"| forward, min / median / max ms | {_ms(fw['min'])} / {_ms(fw['median'])} / {_ms(fw['max'])} |",
             f"| forward (wall clock around execute), mean ms | {_ms(p['wall_forward_ms']['mean'])} |",
             f"| time in the rows below / forward | {coverage} |",
             f"| load time (program + method), s | {load['load_time_s']:.4g} |",
             f"| Method::init (ETDump), ms | {_ms(load.get('Method::init'))} |",
             f"| planned memory (forward arenas), bytes | {p['planned_memory_bytes']} |", ""]
    lines += ["## Memory plan", "", "| method | arenas (bytes) | total bytes |", "|---|---|---:|"]
    for name, plan in p["memory_plan"].items():
        lines.append(f"| {name} | {', '.join(str(a) for a in plan['arenas'])} | {plan['total_bytes']} |")
    lines += ["", f"## Top {len(p['top'])} instructions by total time", "",
              "| # | instruction | kind | module | mean ms | total ms | share |", "|---:|---|---|---|---:|---:|---:|"]
    for r in p["top"]:
        lines.append(f"| {r['rank']} | `{r['name']}` | {r['kind']} | {r['module'] or '-'} | {_ms(r['mean_ms'])} | "
                     f"{_ms(r['total_ms'])} | {100 * r['share']:.1f}% |")
    lines += ["", "## Time per operator", "", "| operator | instructions | calls | total ms | mean ms |",
              "|---|---:|---:|---:|---:|"]
    for o in p["operators"]:
        lines.append(f"| `{o['name']}` | {o['instructions']} | {o['calls']} | {_ms(o['time_ms'])} | "
                     f"{_ms(o['mean_ms'])} |")
    if p["delegates"]:
        lines += ["", "## Delegate calls", "", "| # | partition | module | mean ms | inside (delegate's own events) |",
                  "|---:|---|---|---:|---|"]
        for d in p["delegates"]:
            inner = "; ".join(f"{e['name']} {_ms(e['mean_ms'])}" for e in d["inner"][:8])
            more = f" (+{len(d['inner']) - 8} more)" if len(d["inner"]) > 8 else ""
            lines.append(f"| {d['index']} | {d['name']} | {d['module'] or '-'} | {_ms(d['mean_ms'])} | "
                         f"{inner or '-'}{more} |")
    if plot:
        lines += ["", f"![top instructions by total time]({plot})"]
    return "\n".join(lines) + "\n"


def bar_svg(items: list[tuple[str, float]], title: str, unit: str = "ms") -> str:
    """A horizontal bar chart as deterministic SVG text (labels escaped)."""
    width, left, right, row, top = 760, 330, 80, 18, 30
    longest = max((v for _, v in items), default=0.0) or 1.0
    height = top + row * len(items) + 12
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = (width - left - right) * value / longest
        short = label if len(label) <= 52 else label[:51] + "…"
        out.append(f'<g data-label="{escape(label, quote=True)}"><title>{escape(label)}: {value:.4g} {unit}</title>'
                   f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(short)}</text>'
                   f'<rect x="{left}" y="{y + 2}" width="{w:.2f}" height="{row - 5}" fill="#4c78a8"/>'
                   f'<text x="{left + w + 4:.2f}" y="{y + 12}">{value:.4g} {unit}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_profile(out: Path, p: dict[str, Any], title: str) -> None:
    """profile.json, profile.md, profile.svg and report.json (for ``modelbuild report``) into ``out``."""
    out = Path(out)
    write_json(out / "profile.json", p)
    items = [(f"{r['name']} [{r['module']}]" if r["module"] else r["name"], r["total_ms"]) for r in p["top"]]
    (out / "profile.svg").write_text(bar_svg(items, f"{title}: top {len(items)} instructions by total time"))
    (out / "profile.md").write_text(render_profile_md(p, title))
    art = p.get("artifact", {})
    write_json(out / "report.json", {
        "report_version": 1, "kind": "profile", "title": title, "status": "measured",
        "artifact": {"target": art.get("target"), "kind": "pte", "size_bytes": art.get("pte_bytes")},
        "reference": {"target": art.get("reference")},
        "summary": {"size_mb": (art.get("pte_bytes") or 0) / 1e6 or None, "load_time_s": p["load"]["load_time_s"],
                    "latency_ms": p["forward_ms"]["mean"], "planned_memory_mb": (p["planned_memory_bytes"] or 0) / 1e6},
        "runs": [], "plot": None,
    })


def first_drift(ops: list[dict[str, Any]], min_cosine: float) -> dict[str, Any] | None:
    """The first row (graph order) whose cosine is below ``min_cosine`` (NaN counts as below), or None."""
    for row in ops:
        cos = row.get("cosine")
        if cos is None:
            continue
        if cos != cos or cos < min_cosine:
            return row
    return None


def first_drift_of(drift: dict[str, Any], min_cosine: float) -> tuple[dict[str, Any] | None, str]:
    """(row, where) for :func:`modelbuild.ml.profile.drift.locate`'s figures: the first call's first
    drifting row, else the later call's; ``where`` says which call when it is the later one."""
    row = first_drift(drift.get("ops") or [], min_cosine)
    later = drift.get("later")
    if row is None and later:
        row = first_drift(later.get("ops") or [], min_cosine)
        if row is not None:
            return row, f"at {later['input']}, none at {drift.get('input') or 'the first call'}"
    return row, ""


def describe_drift(row: dict[str, Any] | None) -> str:
    """"aten.linear in layers.3.attention.wo, cosine 0.91" (a delegate call says which partition)."""
    if row is None:
        return ""
    where = f" in {row['module']}" if row.get("module") else ""
    what = row["op"]
    if row.get("delegate"):
        held = ", ".join(f"{op} ×{n}" for op, n in sorted(row.get("ops", {}).items(), key=lambda kv: (-kv[1], kv[0])))
        what = f"delegate call ({held})"
    cos = row.get("cosine")
    return f"{what}{where}, cosine {cos:.4g}" if cos == cos else f"{what}{where}, cosine nan"


def drift_note(drift: dict[str, Any] | None, min_cosine: float | None) -> tuple[str, dict[str, Any] | None]:
    """For a failed verdict: ``("first drift: ...", row)`` from cached drift figures, or ``("", None)``.

    Without ``min_cosine`` the tolerance is unknown and nothing is named. When
    no operator falls below it, the drift came before lowering (the exported
    or quantized program already differs from the original model) and the
    note says so.
    """
    if not drift or not drift.get("ops") or min_cosine is None:
        return "", None
    row, where = first_drift_of(drift, min_cosine)
    if row is None:
        if drift.get("later"):  # an LLM: two fresh-cache calls cannot see a bad read of real cache entries
            return (f"no operator of the .pte drifts below cosine {min_cosine:g} from the program it was lowered "
                    f"from at {drift['input']} or {drift['later']['input']}: the drift is upstream of lowering, "
                    "or shows only with earlier entries in the KV cache", None)
        return (f"no operator of the .pte drifts below cosine {min_cosine:g} from the program it was lowered "
                "from: the drift is upstream of lowering", None)
    return f"first drift: {describe_drift(row)}" + (f" ({where})" if where else ""), row
