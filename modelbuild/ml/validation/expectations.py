"""Expectations (thresholds) and the verdict: pure Python, no numpy or torch.

Each expectation is a recipe parameter of ``validate`` that names a figure of
``measurements.json``'s ``summary`` and a bound. Judging reads the cached
figures only, so changing a threshold re-judges in milliseconds.

Example::

    >>> ok, reason, checks = judge_summary({"cosine": 0.71}, {"min_cosine": 0.999})
    >>> ok, reason
    (False, 'cosine 0.71 < min_cosine 0.999')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Expectation", "EXPECTATIONS", "PARAM_NAMES", "TIMING_FIGURES", "judge_summary", "fmt"]


@dataclass(frozen=True)
class Expectation:
    """A threshold parameter: ``figure op param`` must hold (op is ">=" or "<=")."""

    param: str
    figure: str
    op: str
    doc: str


EXPECTATIONS: tuple[Expectation, ...] = (
    Expectation("min_cosine", "cosine", ">=", "worst cosine similarity of logits/outputs over all runs"),
    Expectation("min_top1_agreement", "top1_agreement", ">=", "share of positions whose argmax matches"),
    Expectation("min_token_agreement", "token_agreement", ">=", "greedy tokens equal to the reference's (mean over prompts)"),
    Expectation("max_abs_error", "max_abs_error", "<=", "largest absolute difference of any logit/output"),
    Expectation("max_mean_abs_error", "mean_abs_error", "<=", "mean absolute difference"),
    Expectation("max_perplexity_ratio", "perplexity_ratio", "<=", "artifact perplexity / reference perplexity on the eval text"),
    Expectation("max_perplexity", "perplexity", "<=", "artifact perplexity on the eval text"),
    Expectation("max_size_mb", "size_mb", "<=", "artifact file size in MB (10^6 bytes)"),
    Expectation("min_decode_tokens_per_s", "decode_tokens_per_s", ">=", "decode speed on this host"),
    Expectation("min_prefill_tokens_per_s", "prefill_tokens_per_s", ">=", "prefill speed on this host"),
    Expectation("max_load_time_s", "load_time_s", "<=", "time to load the artifact"),
    Expectation("max_peak_memory_mb", "peak_rss_mb", "<=", "peak RSS of the validating process"),
    Expectation("max_latency_ms", "latency_ms", "<=", "generic modules: mean wall time per sample"),
)

PARAM_NAMES = frozenset(e.param for e in EXPECTATIONS)

#: Figures of this run on this machine (clocks, memory): they change from run to run, so the
#: validate step writes them to ``timings.json``, which rebuild checks leave out of the compared
#: bytes, and releases keep outside the archive. Every other figure is reproducible.
TIMING_FIGURES = ("load_time_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb", "latency_ms")


def fmt(value: Any) -> str:
    """A figure as people read it: 6 significant digits, integers as integers."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.6g}"
    return str(value)


def judge_summary(summary: Mapping[str, Any], thresholds: Mapping[str, Any]) -> tuple[bool, str, list[dict]]:
    """Check every set threshold against the summary figures.

    Returns ``(ok, reason, checks)``: ``reason`` joins the failed checks
    ("cosine 0.71 < min_cosine 0.999; size_mb 12.3 > max_size_mb 10"), ``checks``
    lists each check with its figure, bound and outcome.
    """
    checks, failures = [], []
    for e in EXPECTATIONS:
        bound = thresholds.get(e.param)
        if bound is None:
            continue
        value = summary.get(e.figure)
        if value is None or (isinstance(value, float) and value != value):
            ok = False
            failures.append(f"{e.figure} not measured for this artifact ({e.param} {fmt(bound)})")
        else:
            ok = value >= bound if e.op == ">=" else value <= bound
            if not ok:
                sign = "<" if e.op == ">=" else ">"
                failures.append(f"{e.figure} {fmt(value)} {sign} {e.param} {fmt(bound)}")
        checks.append({"expectation": e.param, "figure": e.figure, "value": value, "op": e.op,
                       "bound": bound, "ok": ok})
    return not failures, "; ".join(failures), checks
