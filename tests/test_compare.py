"""modelbuild.compare: stage-by-stage / variant-by-variant tables from report.json files."""

from __future__ import annotations

import json
import subprocess
import sys

from modelbuild.compare import compare_reports, load_row, where_accuracy_breaks


def _report(path, target, *, cosine, size_mb, tok_s=None, tokens=None, kind="pte"):
    path.mkdir(parents=True, exist_ok=True)
    summary = {"cosine": cosine, "size_mb": size_mb, "decode_tokens_per_s": tok_s, "token_agreement": tokens,
               "top1_agreement": 1.0 if cosine > 0.99 else 0.4, "perplexity_ratio": 1.0}
    (path / "report.json").write_text(json.dumps({
        "report_version": 1, "kind": "validation-measurements", "status": "measured",
        "artifact": {"kind": kind, "target": target, "size_bytes": int(size_mb * 1e6)}, "summary": summary}))
    return path / "report.json"


def _chain(tmp_path):
    return {
        "export-validate": _report(tmp_path / "a", "export", cosine=0.99999, size_mb=4.0, tok_s=30.0, tokens=1.0,
                                   kind="exported-program"),
        "quantize-validate": _report(tmp_path / "b", "quantize", cosine=0.9991, size_mb=1.2, tok_s=31.0, tokens=0.95,
                                     kind="exported-program"),
        "pte-validate": _report(tmp_path / "c", "pte", cosine=0.71, size_mb=1.1, tok_s=250.0, tokens=0.1),
    }


def test_rows_follow_the_given_order_and_carry_the_figures(tmp_path):
    cmp = compare_reports(_chain(tmp_path))
    assert [r["target"] for r in cmp.rows] == ["export-validate", "quantize-validate", "pte-validate"]
    row = cmp.rows[2]
    assert (row["artifact"], row["kind"], row["size_mb"], row["decode_tokens_per_s"], row["cosine"],
            row["token_agreement"], row["status"]) == ("pte", "pte", 1.1, 250.0, 0.71, 0.1, "measured")
    json.dumps(cmp.rows)  # the CLI prints rows as JSON


def test_note_names_the_stage_where_accuracy_breaks(tmp_path):
    cmp = compare_reports(_chain(tmp_path))
    assert cmp.note == ("cosine 0.99999 after export, cosine 0.9991 after quantize, cosine 0.71 after pte: "
                        "look at pte")


def test_no_blame_when_nothing_drops():
    rows = [{"target": "a", "artifact": "a", "cosine": 0.99999}, {"target": "b", "artifact": "b", "cosine": 0.99995}]
    assert "look at" not in where_accuracy_breaks(rows)
    assert where_accuracy_breaks(rows[:1]) == ""


def test_verdicts_give_the_status_and_a_missing_report_says_so(tmp_path):
    paths = _chain(tmp_path)
    paths["coreml-validate"] = tmp_path / "missing" / "report.json"
    verdicts = {"pte-validate": {"ok": False, "status": "fail", "reason": "cosine 0.71 < min_cosine 0.999"},
                "export-validate": {"ok": True, "status": "pass", "reason": ""},
                "coreml-validate": {"ok": False, "status": "not validated here: needs macOS"}}
    cmp = compare_reports(paths, verdicts)
    status = {r["target"]: r["status"] for r in cmp.rows}
    assert status == {"export-validate": "pass", "quantize-validate": "measured", "pte-validate": "fail",
                      "coreml-validate": "not validated here: needs macOS"}
    assert cmp.rows[2]["reason"] == "cosine 0.71 < min_cosine 0.999"
    assert load_row("x", tmp_path / "nope.json")["status"] == "no report"


def test_render_is_a_rich_table_with_one_row_per_target(tmp_path):
    from rich.console import Console

    cmp = compare_reports(_chain(tmp_path))
    table = cmp.render()
    assert table.row_count == 3
    assert [c.header for c in table.columns] == ["target", "artifact", "kind", "size MB", "decode tok/s", "cosine",
                                                 "top-1", "tokens", "ppl ratio", "status"]
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "pte-validate" in text and "0.71" in text and "look at pte" in text


def test_compare_imports_neither_torch_nor_numpy():
    code = ("import sys, modelbuild.compare;"
            "print([m for m in ('torch', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
