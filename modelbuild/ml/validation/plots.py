"""PNG plots for validation reports (matplotlib, Agg backend, deterministic metadata).

Example::

    plot_positions(positions, Path("errors.png"), title="tiny-llama-pte vs reference")
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_positions", "plot_variants"]

# Without these, matplotlib stamps the PNG with its version and nothing else;
# an explicit empty "Software" keeps the bytes independent of the install.
_PNG_META = {"Software": None}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_positions(positions: Mapping[str, Mapping[str, list]], path: Path, title: str) -> Path:
    """Error per position (LLM: per token, with top-1 mismatches marked) or per output element."""
    plt = _pyplot()
    names = list(positions)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.8 * len(names) + 0.6), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        series = positions[name]
        err = series.get("max_abs_error") or series.get("abs_error") or []
        floor = [max(e, 1e-12) for e in err]
        ax.semilogy(range(len(floor)), floor, lw=1, color="tab:blue")
        miss = [i for i, ok in enumerate(series.get("top1_match", [])) if not ok]
        if miss:
            ax.scatter(miss, [floor[i] for i in miss], color="tab:red", s=10, zorder=3, label="top-1 differs")
            ax.legend(loc="upper left", fontsize=7)
        if series.get("prompt_tokens"):
            # Left of the line: the prompt; right: the reference's greedy continuation.
            ax.axvline(series["prompt_tokens"] - 0.5, color="gray", lw=0.8, ls="--")
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_ylabel("abs error", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("token position" if "top1_match" in positions[names[-1]] else "output element", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80, metadata=_PNG_META)
    plt.close(fig)
    return path


def plot_variants(rows: Sequence[Mapping], path: Path, title: str = "size against speed") -> Path:
    """Size (MB) against decode tokens/s, one labelled point per variant (rows of modelbuild.compare)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get("size_mb") is None or r.get("decode_tokens_per_s") is None:
            continue
        ax.scatter([r["size_mb"]], [r["decode_tokens_per_s"]], color="tab:red" if r.get("status") == "fail" else "tab:blue")
        ax.annotate(r["target"], (r["size_mb"], r["decode_tokens_per_s"]), fontsize=7)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80, metadata=_PNG_META)
    plt.close(fig)
    return path
