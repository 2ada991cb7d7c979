"""Numeric comparison of an artifact's outputs with the reference's.

All functions take numpy arrays and return plain Python numbers or lists so the
results go straight into JSON.

Example::

    >>> import numpy as np
    >>> ref = np.array([[1.0, 2.0, 0.5]]); got = ref + 0.01
    >>> compare_arrays(ref, got)["max_abs_error"] < 0.02
    True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cosine", "compare_arrays", "compare_logits", "token_agreement", "nll_per_token", "perplexity"]


#: Elements per partial sum in :func:`_dot`: bounds its scratch memory (8 MB of float64).
_BLOCK = 1 << 20


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """The sum of ``a * b`` (1-D float64), the same bits whatever the thread count.

    ``np.dot`` hands float64 vectors to BLAS, whose ``ddot`` splits a long
    vector among its threads (OpenBLAS: above 10,000 elements) and so adds in
    an order that depends on how many it has: the last digits of a cosine
    changed with the share of cores the engine gave the step, and a rebuilt
    validation report differed. numpy's own reduction (single-threaded
    pairwise summation) over fixed blocks, added exactly by ``math.fsum``, does not.
    """
    return math.fsum(float(np.add.reduce(a[i:i + _BLOCK] * b[i:i + _BLOCK])) for i in range(0, a.size, _BLOCK))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (flattened, in float64): 1.0 when both are zero, 0.0 when one is.

    The same bits whatever the thread count (:func:`_dot`), so a rebuilt report is identical.
    """
    a = a.astype(np.float64, copy=False).ravel()
    b = b.astype(np.float64, copy=False).ravel()
    na, nb = math.sqrt(_dot(a, a)), math.sqrt(_dot(b, b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return _dot(a, b) / (na * nb)


def compare_arrays(ref: np.ndarray, got: np.ndarray) -> dict:
    """Max/mean absolute error and cosine similarity of two same-shaped arrays."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {list(ref.shape)}, artifact {list(got.shape)}")
    diff = np.abs(ref - got)
    finite = bool(np.isfinite(got).all())
    return {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "cosine": cosine(ref, got) if finite else 0.0,
        "finite": finite,
    }


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict:
    """Compare logits of shape ``[positions, vocab]`` position by position.

    Returns the overall figures of :func:`compare_arrays`, the mean top-1
    agreement, and per-position lists (``per_position``: max abs error,
    cosine, top-1 match) for plots.
    """
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    figures = compare_arrays(ref, got)
    top1 = (ref.argmax(axis=-1) == got.argmax(axis=-1)).astype(bool)
    figures["top1_agreement"] = float(top1.mean()) if top1.size else 1.0
    figures["positions"] = int(ref.shape[0])
    figures["per_position"] = {
        "max_abs_error": [float(x) for x in np.abs(ref - got).max(axis=-1)],
        "cosine": [cosine(r, g) for r, g in zip(ref, got)],
        "top1_match": [bool(x) for x in top1],
    }
    return figures


def token_agreement(ref_tokens: list[int], got_tokens: list[int]) -> dict:
    """Greedy continuation agreement: the share of positions where the tokens match
    (over the reference's length) and the first position where they differ
    (``None`` when they never do)."""
    n = len(ref_tokens)
    matches = sum(1 for i in range(min(n, len(got_tokens))) if ref_tokens[i] == got_tokens[i])
    first = None
    for i in range(max(n, len(got_tokens))):
        if i >= n or i >= len(got_tokens) or ref_tokens[i] != got_tokens[i]:
            first = i
            break
    return {"token_agreement": matches / n if n else 1.0, "first_divergence": first,
            "reference_tokens": list(ref_tokens), "artifact_tokens": list(got_tokens)}


def nll_per_token(logits: np.ndarray, ids: list[int]) -> list[float]:
    """Negative log-likelihood of ``ids[i+1]`` under ``logits[i]`` (natural log)."""
    logits = np.asarray(logits, dtype=np.float64)
    out = []
    for i in range(min(len(ids) - 1, logits.shape[0])):
        row = logits[i]
        m = row.max()
        lse = m + math.log(float(np.exp(row - m).sum()))
        out.append(float(lse - row[ids[i + 1]]))
    return out


def perplexity(nll: list[float]) -> float:
    """exp(mean NLL); ``inf`` for a non-finite mean."""
    if not nll:
        return float("nan")
    mean = sum(nll) / len(nll)
    return math.exp(mean) if mean < 700 else float("inf")
