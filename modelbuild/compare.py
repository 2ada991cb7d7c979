"""Compare validation reports side by side: ``modelbuild report TARGET...``.

Pure Python (json + rich): reads the ``report.json`` that the ``validate``
step leaves in ``out/<target>/`` and never runs a model or imports torch or
numpy. Rows come in the order given, so a chain (export, quantize, lower,
Core ML) reads as a story, and :attr:`Comparison.note` names the stage where
accuracy breaks.

The same :class:`Comparison` renders as a terminal table (:meth:`Comparison.render`)
and as a self-contained HTML page (:meth:`Comparison.html`, drawn by
:mod:`modelbuild.report_html`); for the page it also keeps each target's
per-run figures, its ``errors.png``, an operator ``profile.json`` when one sits
beside the report, and the chain of steps that made the artifact.

Example::

    cmp = compare_reports({"tiny-llama-export-validate": Path("out/tiny-llama-export-validate/report.json"),
                           "tiny-llama-pte-validate": Path("out/tiny-llama-pte-validate/report.json")})
    cmp.rows[0]["cosine"]        # 0.99999...
    Console().print(cmp.render())
    print(cmp.note)              # "cosine 1 after tiny-llama-export, 0.71 after tiny-llama-pte: look at tiny-llama-pte"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Comparison", "COLUMNS", "compare_reports", "distinguishing_params", "load_profile", "load_row",
           "stage_drift", "where_accuracy_breaks"]

#: (row key, column title) of the table, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("target", "target"),
    ("artifact", "artifact"),
    ("kind", "kind"),
    ("size_mb", "size MB"),
    ("decode_tokens_per_s", "decode tok/s"),
    ("cosine", "cosine"),
    ("top1_agreement", "top-1"),
    ("token_agreement", "tokens"),
    ("perplexity_ratio", "ppl ratio"),
    ("status", "status"),
)

_FIGURES = ("size_mb", "decode_tokens_per_s", "prefill_tokens_per_s", "cosine", "top1_agreement",
            "token_agreement", "first_divergence", "max_abs_error", "perplexity", "perplexity_ratio",
            "peak_rss_mb", "load_time_s", "latency_ms")

#: Engine states (history ``status``) that are outcomes of their own, not a verdict on figures.
_STATES = {"unavailable": "unavailable", "failed": "fail", "skipped": "skipped"}

#: Operators per profile in the side-by-side table of ``markdown`` (the profile step's top 20).
PROFILE_ROWS = 20

#: A drop in cosine at least this large between two stages is called out.
BREAK_DROP = 1e-3


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) <= 1:  # cosines and shares: 6 significant digits
            return f"{value:.6g}"
        return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def load_row(target: str, report_path: Path, verdict: Mapping[str, Any] | None = None, *, timings: bool = True) -> dict:
    """One comparison row from a target's report.json (and its verdict, if known).

    With ``timings`` the speed and memory figures come from the ``timings.json``
    beside the report (the validate step keeps them out of report.json so that
    it rebuilds byte for byte); the validate step's own report.html, which must
    be reproducible too, is drawn with ``timings=False``.

    ``verdict`` is the engine's verdict record (``{"ok", "reason", "status",
    "figures"}``, plus ``state`` and ``command`` when the engine did not judge
    because the target was unavailable, failed or skipped); without it the
    status is "measured" (figures exist, not judged). A report that is missing
    or unreadable gives a row with status "no report".

    ``status`` is text for people; ``outcome`` is the typed value behind it:
    one of pass, fail, unavailable (e.g. needs macOS), skipped, measured, missing.
    """
    row: dict[str, Any] = {"target": target, "artifact": None, "kind": None, "status": "no report", "reason": "",
                           "outcome": "missing", "command": None}
    row.update({k: None for k in _FIGURES})
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, ValueError) as err:
        row["reason"] = f"cannot read {report_path}: {err.__class__.__name__}"
        report = {"status": "no report"}
        if verdict is None:
            return row
    summary = report.get("summary", {})
    artifact = report.get("artifact", {})
    row["artifact"] = artifact.get("target")
    row["kind"] = artifact.get("kind")
    if timings:
        summary = {**summary, **_timings_beside(Path(report_path))}
    for key in _FIGURES:
        row[key] = summary.get(key)
    row["status"] = report.get("status", "measured")
    row["outcome"] = "missing" if row["status"] == "no report" else "measured"
    if verdict is not None:
        row["status"] = verdict.get("status") or ("pass" if verdict.get("ok") else "fail")
        row["reason"] = verdict.get("reason") or ""
        row["command"] = verdict.get("command")
        row["outcome"] = _outcome(verdict, row["status"])
    return row


def _timings_beside(report_path: Path) -> dict:
    try:
        data = json.loads((report_path.parent / "timings.json").read_text())
        return dict(data.get("summary") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _outcome(verdict: Mapping[str, Any], status: str) -> str:
    if verdict.get("state") in _STATES:
        return _STATES[verdict["state"]]
    if "needs " in status:  # "not validated here: needs macOS" from an older history entry
        return "unavailable"
    return "pass" if verdict.get("ok") else "fail"


def where_accuracy_breaks(rows: list[dict]) -> str:
    """One line naming the stage whose cosine dropped the most from the previous one.

    Empty when fewer than two rows have a cosine or nothing dropped by
    ``BREAK_DROP`` or more.
    """
    staged = [r for r in rows if isinstance(r.get("cosine"), (int, float))]
    if len(staged) < 2:
        return ""
    trail = ", ".join(f"cosine {_fmt(r['cosine'])} after {r['artifact'] or r['target']}" for r in staged)
    worst, drop = None, 0.0
    for prev, cur in zip(staged, staged[1:]):
        d = prev["cosine"] - cur["cosine"]
        if d > drop:
            worst, drop = cur, d
    if worst is None or drop < BREAK_DROP:
        return trail
    return f"{trail}: look at {worst['artifact'] or worst['target']}"


def stage_drift(rows: list[dict], chains: Mapping[str, list[dict]] | None = None) -> list[dict]:
    """Per stage: the cosine before and after it, and the drop; the worst drop is marked ``breaks``.

    A stage is measured against the nearest variant upstream of its artifact
    in its chain (``chains``: target -> chain of steps, see
    :func:`compare_reports`), or the reference (cosine 1) when none was
    measured. Without chains the previous row in the given order stands in,
    as in :func:`where_accuracy_breaks`. Rows without a cosine are left out.
    """
    staged = [r for r in rows if _number(r.get("cosine"))]
    by_artifact = {r["artifact"] or r["target"]: r for r in staged}
    stages = []
    for i, r in enumerate(staged):
        if chains is not None:
            upstream = [step["target"] for step in chains.get(r["target"], [])][:-1]
            prev = next((by_artifact[t] for t in reversed(upstream) if t in by_artifact), None)
        else:
            prev = staged[i - 1] if i else None
        before = prev["cosine"] if prev else 1.0
        stages.append({"target": r["target"], "artifact": r["artifact"] or r["target"],
                       "after": (prev["artifact"] or prev["target"]) if prev else "reference",
                       "cosine_before": before, "cosine": r["cosine"], "drop": before - r["cosine"], "breaks": False})
    worst = max(stages, key=lambda s: s["drop"], default=None)
    if worst is not None and worst["drop"] >= BREAK_DROP:
        worst["breaks"] = True
    return stages


def distinguishing_params(chains: Mapping[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """The step parameters that set the variants apart, per target: ``{"quantize.group_size": 32}``.

    Chains hold the parameters the recipes set (defaults left out). A step
    that every chain uses shows only the parameters whose values differ; a
    step that only some chains use (a quantize) shows all it sets, since
    that is what makes those variants what they are. Keys are ``step.param``
    (``step#2.param`` for a step's second use in one chain). With fewer than
    two chains nothing distinguishes anything.
    """
    steps: dict[str, dict[str, dict[str, Any]]] = {}
    prefixes: list[str] = []
    for target, chain in chains.items():
        seen: dict[str, int] = {}
        steps[target] = {}
        for step in chain:
            seen[step["step"]] = seen.get(step["step"], 0) + 1
            prefix = step["step"] if seen[step["step"]] == 1 else f"{step['step']}#{seen[step['step']]}"
            steps[target][prefix] = dict(step.get("params", {}))
            if prefix not in prefixes:
                prefixes.append(prefix)
    out: dict[str, dict[str, Any]] = {t: {} for t in steps}
    if len(steps) < 2:
        return out

    def value(params: dict, name: str) -> str | None:  # None: left at its default
        return json.dumps(params[name], sort_keys=True, default=str) if name in params else None

    for prefix in prefixes:
        having = [t for t in steps if prefix in steps[t]]
        everywhere = len(having) == len(steps)
        names = list(dict.fromkeys(n for t in having for n in steps[t][prefix]))
        for name in names:
            if everywhere and len({value(steps[t][prefix], name) for t in having}) == 1:
                continue
            for t in having:
                if name in steps[t][prefix]:
                    out[t][f"{prefix}.{name}"] = steps[t][prefix][name]
    return out


def load_profile(path: Path) -> list[dict] | None:
    """Operators of a ``profile.json``, slowest first: ``[{"name", "time_ms", "calls"}]``; None if absent.

    The format expected from a profile step: ``{"operators": [{"name":
    "aten::linear", "time_ms": 12.5, "calls": 64}, ...]}`` (``ops`` and
    ``total_ms`` or ``time_us`` are read too). An unreadable file reads as absent.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ops = data.get("operators", data.get("ops")) if isinstance(data, dict) else data
    if not isinstance(ops, list):
        return None
    out = []
    for op in ops:
        if not isinstance(op, dict):
            continue
        name = op.get("name") or op.get("op") or op.get("operator")
        ms = op.get("time_ms", op.get("total_ms"))
        if ms is None and _number(op.get("time_us")):
            ms = op["time_us"] / 1000
        if name is None or not _number(ms):
            continue
        out.append({"name": str(name), "time_ms": float(ms), "calls": op.get("calls")})
    return sorted(out, key=lambda o: (-o["time_ms"], o["name"]))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _details(report_path: Path) -> dict[str, Any]:
    """What the HTML page shows beyond the row: per-run figures, the error plot, a profile."""
    folder = Path(report_path).parent
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, ValueError):
        report = {}
    plot = report.get("plot")
    return {
        "title": report.get("title"),
        "reference": (report.get("reference") or {}).get("target"),
        "runs": report.get("runs") or [],
        "plot": folder / plot if isinstance(plot, str) and (folder / plot).is_file() else None,
        "profile": load_profile(folder / "profile.json"),
        "chain": [],
    }


@dataclass
class Comparison:
    """Rows of figures per target (JSON-ready) and a note on where accuracy breaks.

    ``details`` (target -> runs, plot, profile, chain) feeds the HTML page and
    stays out of the JSON rows.
    """

    rows: list[dict] = field(default_factory=list)
    note: str = ""
    details: dict[str, dict] = field(default_factory=dict)

    def render(self):
        """A rich Table of the rows (the caption carries the note)."""
        from rich.table import Table

        table = Table(title="validation", caption=self.note or None)
        for key, title in COLUMNS:
            numeric = key not in ("target", "artifact", "kind", "status")
            table.add_column(title, justify="right" if numeric else "left")
        styles = {"pass": "green", "fail": "red", "measured": "", "no report": "dim"}
        for r in self.rows:
            cells = [_fmt(r.get(k)) for k, _ in COLUMNS]
            style = styles.get(r["status"], "yellow")  # e.g. "needs macOS"
            table.add_row(*cells, style=style or None)
        return table

    def markdown(self) -> str:
        """The rows as a Markdown table, every value in full (for files and CI logs: no width to fit).

        >>> print(Comparison(rows=[{"target": "t", "status": "pass", "cosine": 0.9999991}]).markdown().splitlines()[2])
        | t | - | - | - | - | 0.999999 | - | - | - | pass |
        """
        numeric = [key not in ("target", "artifact", "kind", "status") for key, _ in COLUMNS]
        lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
                 "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
        for r in self.rows:
            cells = [_fmt(r.get(k)).replace("|", "\\|").replace("\n", " ") for k, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        if self.note:
            lines += ["", self.note]
        profiles = self.profiles_markdown()
        if profiles:
            lines += ["", profiles]
        return "\n".join(lines)

    def profiles_markdown(self, top: int = PROFILE_ROWS) -> str:
        """The targets' operator profiles side by side: total ms per operator, slowest first ("" if none).

        Rows are the union of each profile's ``top`` slowest operators, ordered
        by their largest time in any target; ``-`` where a target has no such
        operator (e.g. an op one backend delegates and another does not).
        """
        profiles = {r["target"]: self.details.get(r["target"], {}).get("profile") for r in self.rows}
        profiles = {t: ops for t, ops in profiles.items() if ops}
        if not profiles:
            return ""
        times = {t: {o["name"]: o["time_ms"] for o in ops} for t, ops in profiles.items()}
        names: dict[str, float] = {}
        for ops in profiles.values():
            for o in ops[:top]:
                names[o["name"]] = max(names.get(o["name"], 0.0), o["time_ms"])
        order = sorted(names, key=lambda n: (-names[n], n))
        esc = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = [f"Operator profiles (total ms; top {top} of each)", "",
                 "| operator | " + " | ".join(esc(t) for t in profiles) + " |",
                 "| --- | " + " | ".join("---:" for _ in profiles) + " |"]
        for name in order:
            cells = [f"{times[t][name]:.4g}" if name in times[t] else "-" for t in profiles]
            lines.append(f"| `{esc(name)}` | " + " | ".join(cells) + " |")
        totals = [f"{sum(o['time_ms'] for o in profiles[t]):.4g}" for t in profiles]
        lines.append("| all operators | " + " | ".join(totals) + " |")
        return "\n".join(lines)

    def html(self, title: str = "Variants") -> str:
        """The variants report as one self-contained HTML page (deterministic text)."""
        from .report_html import render_page

        return render_page(self, title=title)

    def chains(self) -> dict[str, list[dict]]:
        """target -> chain of steps, for the targets whose chain is known."""
        return {t: d["chain"] for t, d in self.details.items() if d.get("chain")}


def compare_reports(paths: Mapping[str, Path], verdicts: Mapping[str, Mapping[str, Any] | None] | None = None,
                    chains: Mapping[str, list[dict]] | None = None, *, timings: bool = True) -> Comparison:
    """Compare the report.json files of several targets (``target -> path``), in order.

    ``chains`` (target -> ``[{"target", "step", "params"}]``, the artifact's
    producers from the source down to the artifact) lets the page name the
    steps and the parameters that distinguish the variants. ``timings``: see
    :func:`load_row`.
    """
    verdicts = verdicts or {}
    rows = [load_row(name, Path(path), verdicts.get(name), timings=timings) for name, path in paths.items()]
    details = {name: _details(Path(path)) for name, path in paths.items()}
    for name, chain in (chains or {}).items():
        if name in details:
            details[name]["chain"] = list(chain)
    return Comparison(rows=rows, note=where_accuracy_breaks(rows), details=details)
