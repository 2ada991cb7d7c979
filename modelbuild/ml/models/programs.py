"""Write small exported-program artifacts directly (tests, docs, benchmarks).

These bypass the ``export`` step so that Core ML conversion can be exercised
on its own: :func:`tinyconv_program` (the vision example, optionally with
dynamic H and W) and :func:`tiny_llama_program` (ExecuTorch's llama
``Transformer`` with tiny dimensions and a KV cache held in mutable buffers,
exported without the custom sdpa op, i.e. the Core ML flavour of an LLM export).

Example::

    >>> tinyconv_program(tmp / "prog", size=32, dynamic=(16, 128))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["tinyconv_program", "tiny_llama_program"]


def tinyconv_program(
    out: Path, *, size: int = 32, dynamic: tuple[int, int] | None = None, seed: int = 0, width: int = 16
) -> Path:
    """Export :mod:`tinyconv` on a 1x3xSIZExSIZE input into ``out``.

    ``dynamic=(lo, hi)`` makes H and W dynamic in ``[lo, hi]``.
    """
    import torch
    from torch.export import Dim

    from modelbuild.ml.models.tinyconv import make
    from modelbuild.ml.program import ProgramInfo, save_program

    model = make(seed=seed, width=width)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    dyn = None
    shapes = None
    if dynamic is not None:
        lo, hi = dynamic
        dyn = [{"2": {"name": "height", "min": lo, "max": hi}, "3": {"name": "width", "min": lo, "max": hi}}]
        shapes = ({2: Dim("height", min=lo, max=hi), 3: Dim("width", min=lo, max=hi)},)
    ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    info = ProgramInfo(
        kind="module",
        family="tinyconv",
        dynamic_shapes=dyn,
        input_names=["image"],
        output_names=["logits"],
        model_args={"width": width, "seed": seed},
    )
    save_program(Path(out), ep, info, (x,))
    return Path(out)


def tiny_llama_program(
    out: Path,
    *,
    max_seq_len: int = 32,
    dim: int = 64,
    n_layers: int = 2,
    vocab_size: int = 128,
    seed: int = 0,
    dynamic: bool = False,
) -> Path:
    """Export a tiny llama decoder with a KV cache (no custom sdpa op) into ``out``.

    Forward: ``(tokens[1, S] int64, {"input_pos": [1] int64}) -> logits[1, vocab]``
    with ``S = 1``, or ``S`` dynamic in ``1..max_seq_len - 1`` with ``dynamic``
    (as ExecuTorch's export_llm with ``enable_dynamic_shape``); the KV cache
    lives in mutable buffers.
    """
    import torch
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    from modelbuild.ml.program import ProgramInfo, save_program

    args = dict(
        dim=dim,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        hidden_dim=2 * dim,
        max_seq_len=max_seq_len,
        max_context_len=max_seq_len,
        use_kv_cache=True,
        use_sdpa_with_kv_cache_op=False,
        enable_dynamic_shape=dynamic,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = construct_transformer(ModelArgs(**args)).eval()
    finally:
        torch.random.set_rng_state(state)
    tokens = [[2, 3, 4]] if dynamic else [[1]]
    example = (torch.tensor(tokens, dtype=torch.long), {"input_pos": torch.tensor([0], dtype=torch.long)})
    shapes = None
    dyn = None
    if dynamic:
        shapes = ({1: torch.export.Dim("token_dim", max=max_seq_len - 1)}, {"input_pos": None})
        dyn = [{"1": {"name": "token_dim", "min": 1, "max": max_seq_len - 1}}, None]
    ep = torch.export.export(model, example, dynamic_shapes=shapes, strict=False)
    info = ProgramInfo(
        kind="llm",
        family="llama",
        max_seq_len=max_seq_len,
        max_context_len=max_seq_len,
        use_kv_cache=True,
        enable_dynamic_shape=dynamic,
        dynamic_shapes=dyn,
        input_names=["tokens", "input_pos"],
        output_names=["logits"],
        model_args=args,
    )
    save_program(Path(out), ep, info, example)
    return Path(out)
