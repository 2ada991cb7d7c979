"""Torch ops coremltools 9 cannot convert, converted here.

- ``index_copy(x, dim, index, source)``: what ExecuTorch's llama KV cache
  does when exported with ``enable_dynamic_shape`` (write ``S`` new positions
  starting at ``input_pos[0]``). It maps one-to-one onto MIL
  ``scatter(data=x, indices=index, updates=source, axis=dim, mode="update")``:
  both replace the slices of ``x`` along ``dim`` named by ``index``.

Registration is global to coremltools' op registry and done once, when
:func:`register_extra_ops` is first called (by ``convert_program``).
Prediction is not available on Linux: the converted programs are checked
structurally here, their numerics only on a Mac.
"""

from __future__ import annotations

__all__ = ["register_extra_ops", "EXTRA_OPS"]

EXTRA_OPS = ("index_copy",)
_registered = False


def register_extra_ops() -> None:
    """Register the converters of :data:`EXTRA_OPS` with coremltools (idempotent)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def index_copy(context, node):
        x, dim, index, source = _get_inputs(context, node, expected=4)
        axis = int(dim.val)
        if axis < 0:
            axis += x.rank
        context.add(mb.scatter(data=x, indices=index, updates=source, axis=axis, mode="update", name=node.name))

    try:
        register_torch_op(index_copy)
    except ValueError:
        # coremltools (a later version) converts it itself: keep theirs.
        pass
    _registered = True
