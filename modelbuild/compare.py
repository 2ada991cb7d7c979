"""Compare validation reports side by side: ``modelbuild report TARGET...``.

Pure Python (json + rich): reads the ``report.json`` that the ``validate``
step leaves in ``out/<target>/`` and never runs a model or imports torch or
numpy. Rows come in the order given, so a chain (export, quantize, lower,
Core ML) reads as a story, and :attr:`Comparison.note` names the stage where
accuracy breaks.

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

__all__ = ["Comparison", "COLUMNS", "compare_reports", "load_row", "where_accuracy_breaks"]

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
            "token_agreement", "first_divergence", "max_abs_error", "perplexity", "perplexity_ratio")

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


def load_row(target: str, report_path: Path, verdict: Mapping[str, Any] | None = None) -> dict:
    """One comparison row from a target's report.json (and its verdict, if known).

    ``verdict`` is the engine's verdict record (``{"ok", "reason", "status",
    "figures"}``); without it the status is "measured" (figures exist, not judged).
    A report that is missing or unreadable gives a row with status "no report".
    """
    row: dict[str, Any] = {"target": target, "artifact": None, "kind": None, "status": "no report", "reason": ""}
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
    for key in _FIGURES:
        row[key] = summary.get(key)
    row["status"] = report.get("status", "measured")
    if verdict is not None:
        row["status"] = verdict.get("status") or ("pass" if verdict.get("ok") else "fail")
        row["reason"] = verdict.get("reason") or ""
    return row


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


@dataclass
class Comparison:
    """Rows of figures per target (JSON-ready) and a note on where accuracy breaks."""

    rows: list[dict] = field(default_factory=list)
    note: str = ""

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


def compare_reports(paths: Mapping[str, Path], verdicts: Mapping[str, Mapping[str, Any] | None] | None = None) -> Comparison:
    """Compare the report.json files of several targets (``target -> path``), in order."""
    verdicts = verdicts or {}
    rows = [load_row(name, Path(path), verdicts.get(name)) for name, path in paths.items()]
    return Comparison(rows=rows, note=where_accuracy_breaks(rows))
