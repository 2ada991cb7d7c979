"""Blocked scale-only HQQ gives torchao's numbers exactly, and the quantize path uses it."""

from __future__ import annotations

import pytest

import torch
from torchao.quantization.quant_primitives import (  # noqa: E402
    _choose_qparams_and_quantize_scale_only_hqq as torchao_hqq,
)

from modelbuild.ml import hqq  # noqa: E402

pytestmark = pytest.mark.ml


def _weight(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(dtype)


@pytest.mark.parametrize(
    "n, k, group, dtype, qmin, qmax, iters",
    [
        (96, 256, 32, torch.bfloat16, -8, 7, 20),  # 4-bit, converges before 20 iterations
        (70, 384, 128, torch.float32, -8, 7, 3),  # stops on the iteration limit
        (33, 512, 256, torch.float16, -128, 127, 20),  # 8-bit
        (64, 64, 64, torch.bfloat16, -8, 7, 20),  # one group per row
    ],
)
def test_same_numbers_as_torchao_across_many_row_blocks(n, k, group, dtype, qmin, qmax, iters):
    w = _weight(n, k, dtype)
    want_q, want_s = torchao_hqq(w, [1, group], qmin, qmax, iters=iters)
    # 3 rows per block: many blocks, and a last block shorter than the others.
    got_q, got_s = hqq.hqq_scale_only(w, [1, group], qmin, qmax, iters=iters, block_elements=3 * k)
    assert got_q.dtype == torch.int8 and got_q.shape == w.shape
    assert torch.equal(got_q.to(torch.int32), want_q)
    assert got_s.dtype == want_s.dtype == dtype
    assert torch.equal(got_s, want_s)


def test_zero_rows_and_outliers_match():
    # All-zero groups (den == 0 keeps the previous scale) and one large outlier per row.
    w = _weight(40, 128, torch.float32, seed=1)
    w[5:9] = 0
    w[:, 3] = 1.5
    want_q, want_s = torchao_hqq(w, [1, 32], -8, 7)
    got_q, got_s = hqq.hqq_scale_only(w, [1, 32], -8, 7, block_elements=7 * 128)
    assert torch.equal(got_q.to(torch.int32), want_q)
    assert torch.equal(got_s, want_s)


def test_stopping_is_decided_over_all_blocks():
    # With a loose tolerance some rows settle before others. Stopping each
    # block on its own change (what a naive per-block loop does) gives other
    # scales than torchao's one global test; one row per block makes every
    # row its own block.
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    want_q, want_s = torchao_hqq(w, [1, 32], -8, 7, early_stop_tol=0.05)
    per_row = [torchao_hqq(w[i : i + 1], [1, 32], -8, 7, early_stop_tol=0.05)[1] for i in range(16)]
    assert not torch.equal(torch.cat(per_row), want_s)  # the case tells the two apart
    got_q, got_s = hqq.hqq_scale_only(w, [1, 32], -8, 7, early_stop_tol=0.05, block_elements=64)
    assert torch.equal(got_q.to(torch.int32), want_q)
    assert torch.equal(got_s, want_s)


@pytest.mark.parametrize("block_size", [[2, 32], [1, 48], [32]])
def test_rejects_block_sizes_torchao_rejects(block_size):
    with pytest.raises(ValueError):
        hqq.hqq_scale_only(_weight(4, 64, torch.float32), block_size, -8, 7)


def test_blocked_hqq_is_used_by_quantize_and_gives_the_same_linear(monkeypatch):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as mod

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(32), intx_choose_qparams_algorithm="hqq_scale_only"
    )

    def linear():
        m = torch.nn.Linear(128, 48, bias=False, dtype=torch.bfloat16)
        with torch.no_grad():
            m.weight.copy_(_weight(48, 128, torch.bfloat16, seed=3))
        return m

    plain = linear()
    quantize_(plain, config)

    calls = []
    real = hqq.hqq_scale_only
    monkeypatch.setattr(hqq, "hqq_scale_only", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    original = mod._choose_qparams_and_quantize_scale_only_hqq
    blocked = linear()
    with hqq.blocked_hqq() as active:
        assert active
        quantize_(blocked, config)
    assert mod._choose_qparams_and_quantize_scale_only_hqq is original  # restored
    assert calls == [torch.Size([48, 128])]
    assert torch.equal(blocked.weight.qdata, plain.weight.qdata)
    assert torch.equal(blocked.weight.scale, plain.weight.scale)
    x = _weight(2, 128, torch.bfloat16, seed=4)
    assert torch.equal(blocked(x), plain(x))
