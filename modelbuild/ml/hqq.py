"""Scale-only HQQ in row blocks: the same numbers as torchao's, in cache-sized pieces.

torchao's ``_choose_qparams_and_quantize_scale_only_hqq`` (what export_llm's
and the quantize step's ``hqq = true`` run) iterates up to 20 times over the
whole weight, and each iteration allocates several float32 temporaries the
size of the weight. For Llama 3.2 1B's 128256 x 2048 output projection and
embedding each temporary is 1 GB: the quantize step spent 80 % of its time
there (199 of 253 s) and peaked at 7.3 GB.

:func:`hqq_scale_only` computes the same result one block of rows at a time.
Every group's update depends only on its own weights; the one global quantity,
the largest relative scale change that decides when to stop, is taken over
all blocks after each iteration, exactly as the whole-tensor version takes it.
The elementwise ops and per-group sums are the same ones on the same values,
so the result is bit for bit identical (``tests/ml/test_hqq.py`` checks it
against torchao on several shapes and dtypes).

:func:`blocked_hqq` swaps it in for torchao's, inside a ``with`` block.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["hqq_scale_only", "blocked_hqq"]

#: Elements per block of rows: 4 MB of float32, so each temporary stays in cache.
BLOCK_ELEMENTS = 1 << 20


def hqq_scale_only(
    hp_tensor,
    block_size,
    qmin: int,
    qmax: int,
    *,
    iters: int = 20,
    early_stop_tol: float = 1e-5,
    block_elements: int = BLOCK_ELEMENTS,
):
    """Symmetric scale-only HQQ of a 2-D weight in groups along the last dim.

    Returns ``(qdata, scale)``: ``qdata`` int8 of the weight's shape,
    ``scale`` in the weight's dtype, one per group (``[out, in // group]``).
    Same arguments and same values as torchao's deterministic
    ``_choose_qparams_and_quantize_scale_only_hqq`` (its ``qdata`` is int32;
    int8 holds every value in ``[qmin, qmax]`` and is what its caller keeps).
    """
    import torch

    if hp_tensor.ndim != 2 or len(block_size) != 2 or block_size[0] != 1 or block_size[1] < 1:
        raise ValueError(f"hqq_scale_only needs a 2-D weight and block_size [1, group], got {list(block_size)}")
    if not qmin < qmax:
        raise ValueError(f"qmin {qmin} must be below qmax {qmax}")
    n, k = hp_tensor.shape
    group = int(block_size[1])
    if k % group:
        raise ValueError(f"in_features={k} must be divisible by group_size={group}")
    groups = k // group
    eps = torch.finfo(torch.float32).eps
    qabs = max(abs(qmin), abs(qmax)) or 1
    rows = max(1, block_elements // k)
    spans = [(r, min(n, r + rows)) for r in range(0, n, rows)]

    def block(r0: int, r1: int):
        return hp_tensor[r0:r1].to(torch.float32).contiguous().view(r1 - r0, groups, group)

    def quantized(w, s):
        q = w / s.unsqueeze(-1)
        return q.round_().clamp_(qmin, qmax)

    scale = torch.empty(n, groups, dtype=torch.float32)
    for r0, r1 in spans:
        scale[r0:r1] = (block(r0, r1).abs().amax(dim=2) / qabs).clamp_min(eps)
    prev = scale.clone()
    for _ in range(max(1, iters)):
        scale = torch.empty_like(prev)
        rel = torch.zeros((), dtype=torch.float32)
        for r0, r1 in spans:
            w = block(r0, r1)
            p = prev[r0:r1]
            q = quantized(w, p)
            num = (w * q).sum(dim=2, dtype=torch.float32)
            den = (q * q).sum(dim=2, dtype=torch.float32)
            s = torch.where(den > 0, num / den, p).clamp_min(eps).abs()
            scale[r0:r1] = s
            rel = torch.maximum(rel, ((s - p).abs() / p.clamp_min(eps)).max())
        if rel < early_stop_tol:
            break
        prev = scale

    qdata = torch.empty(n, k, dtype=torch.int8)
    for r0, r1 in spans:
        qdata[r0:r1] = quantized(block(r0, r1), scale[r0:r1]).view(r1 - r0, k)
    return qdata, scale.to(hp_tensor.dtype)


@contextlib.contextmanager
def blocked_hqq() -> Iterator[bool]:
    """Within the block, torchao's Intx weight quantization uses :func:`hqq_scale_only`.

    Yields False (and changes nothing) when the installed torchao does not
    have the function where this expects it; the quantization then runs
    torchao's own, with the same result.
    """
    try:
        from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as mod
    except ImportError:
        yield False
        return
    original = getattr(mod, "_choose_qparams_and_quantize_scale_only_hqq", None)
    if original is None:
        yield False
        return

    def replacement(hp_tensor, block_size, qmin, qmax, *, iters=20, stochastic=False, early_stop_tol=1e-5):
        if stochastic or hp_tensor.ndim != 2:
            return original(hp_tensor, block_size, qmin, qmax, iters=iters, stochastic=stochastic, early_stop_tol=early_stop_tol)
        return hqq_scale_only(hp_tensor, block_size, qmin, qmax, iters=iters, early_stop_tol=early_stop_tol)

    mod._choose_qparams_and_quantize_scale_only_hqq = replacement
    try:
        yield True
    finally:
        mod._choose_qparams_and_quantize_scale_only_hqq = original
