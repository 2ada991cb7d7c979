"""Quantizing an already-exported program, then exporting it again.

In modelbuild's graph quantize runs *after* export, so that a quantization
tweak reruns quantize and what follows but never fetch or export. The program
is turned back into a module (``ep.module()``), rewritten, and re-exported
with the example inputs and dynamic shapes stored next to it.

- torchao linear schemes (``8da4w``, ``8da8w``, ``4w``, ``8w``): each
  ``aten.linear`` whose weight is a constant 2-D tensor becomes a call to a
  small ``nn.Linear`` quantized with torchao's ``quantize_`` (the same configs
  ExecuTorch's export_llm uses: ``Int8DynamicActivationIntxWeightConfig`` and
  ``IntxWeightOnlyConfig`` with ``PerGroup``/``PerAxis``), so the re-exported
  program has the Q/DQ pattern the XNNPACK partitioner delegates.
- embedding 4/8-bit: each ``aten.embedding`` on a constant table becomes
  ExecuTorch's ``QuantizedGroupEmbedding`` (``quantized_decomposed.embedding_4bit``
  / ``embedding_byte``, run by the portable quantized kernels), as export_llm's
  ``-E`` does.
- pt2e quantizers (``xnnpack_dynamic``, ``xnnpack_dynamic_qc4``,
  ``coreml_8a_c8w``): prepare/convert on the re-captured program.

Example::

    from modelbuild.ml.quantize import Scheme, quantize_program
    ep2, applied, log = quantize_program(ep, example_inputs, dynamic_shapes, Scheme(linear="8da4w", group_size=32))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .hqq import blocked_hqq

__all__ = ["Scheme", "SchemeError", "quantize_program", "LINEAR_SCHEMES", "PT2E_SCHEMES"]

LINEAR_SCHEMES = ("none", "8da4w", "8da8w", "4w", "8w")
PT2E_SCHEMES = ("none", "xnnpack_dynamic", "xnnpack_dynamic_qc4", "coreml_8a_c8w")


class SchemeError(ValueError):
    """The scheme cannot apply to this program (reported as a step error)."""


@dataclass(frozen=True)
class Scheme:
    """A quantization recipe. ``group_size`` 0 means per channel."""

    linear: str = "none"
    group_size: int = 128
    hqq: bool = True
    embedding_bits: int = 0  # 0 = leave embeddings alone, else 4 or 8
    embedding_group_size: int = 0
    pt2e: str = "none"

    def record(self) -> dict[str, Any]:
        """What goes into ProgramInfo.quantization (only the parts that apply)."""
        out: dict[str, Any] = {}
        if self.linear != "none":
            out.update(linear=self.linear, group_size=self.group_size, hqq=self.hqq)
        if self.embedding_bits:
            out.update(embedding_bits=self.embedding_bits, embedding_group_size=self.embedding_group_size)
        if self.pt2e != "none":
            out.update(pt2e=self.pt2e)
        return out


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _constant(gm, node):
    """The tensor behind a get_attr node, or None if ``node`` is not one."""
    import torch

    if node is None or getattr(node, "op", None) != "get_attr":
        return None
    value = _attr(gm, node.target)
    return value if isinstance(value, torch.Tensor) else None


def _linear_config(scheme: Scheme):
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    granularity = PerAxis(0) if scheme.group_size == 0 else PerGroup(scheme.group_size)
    algorithm = "hqq_scale_only" if scheme.hqq else "affine"
    bits = {"8da4w": 4, "8da8w": 8, "4w": 4, "8w": 8}[scheme.linear]
    dtype = getattr(torch, f"int{bits}")
    if scheme.linear.startswith("8da"):
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=dtype, weight_granularity=granularity, intx_choose_qparams_algorithm=algorithm
        )
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity, intx_choose_qparams_algorithm=algorithm)


def _replace(gm, node, module, name: str, args: tuple) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _owner(gm, target: str):
    """``(module, attribute name)`` holding the dotted attribute ``target`` of ``gm``."""
    owner_name, _, attr = target.rpartition(".")
    return (gm.get_submodule(owner_name) if owner_name else gm), attr


def _release(gm, attr_node) -> None:
    """Erase a get_attr node nothing reads any more and drop the tensor behind it.

    Called right after each replacement, so the float original is freed before
    the next weight is quantized: the float model and the quantized one never
    sit in memory whole, side by side.
    """
    if attr_node is None or getattr(attr_node, "op", None) != "get_attr" or attr_node.users:
        return
    target = attr_node.target
    if any(n is not attr_node and n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return  # another node still reads the same tensor (tied weights)
    gm.graph.erase_node(attr_node)
    owner, attr = _owner(gm, target)
    for table in (owner._parameters, owner._buffers):
        table.pop(attr, None)
    owner.__dict__.pop(attr, None)


def _quantize_linears(gm, scheme: Scheme, log: list[str]) -> int:
    import torch
    from torchao.quantization import quantize_

    config = _linear_config(scheme)
    count = skipped = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        weight = _constant(gm, node.args[1])
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = _constant(gm, bias_node)
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            continue
        if bias_node is not None and bias is None:
            continue  # a computed bias cannot live inside the quantized module
        out_f, in_f = weight.shape
        if scheme.group_size and in_f % scheme.group_size:
            skipped += 1  # as export_llm: a row that groups do not tile stays in float
            continue
        linear = torch.nn.Linear(in_f, out_f, bias=bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            # No copy: quantize_ makes the quantized tensor; the float original is dropped below.
            linear.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
            if bias is not None:
                linear.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)
        quantize_(linear, config)
        weight_node = node.args[1]
        _replace(gm, node, linear, f"_mb_qlinear_{count}", (node.args[0],))
        del weight, bias
        _release(gm, weight_node)
        _release(gm, bias_node)
        count += 1
    if skipped:
        log.append(f"{skipped} linear(s) left in float: in_features not a multiple of group_size {scheme.group_size}")
    return count


def _quantize_embeddings(gm, scheme: Scheme, log: list[str]) -> int:
    import torch
    from executorch.examples.models.llama.source_transformation.quantize import EmbeddingQuantHandler

    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.embedding.default:
            continue
        table = _constant(gm, node.args[0])
        if table is None or table.dim() != 2:
            continue
        holder = torch.nn.Module()
        holder.emb = torch.nn.Embedding(table.shape[0], table.shape[1], dtype=table.dtype)
        holder.emb.weight = torch.nn.Parameter(table.detach(), requires_grad=False)
        EmbeddingQuantHandler(
            holder,
            bitwidth=scheme.embedding_bits,
            group_size=scheme.embedding_group_size or None,
            packed=scheme.embedding_bits in (2, 4),
            quantize_with_hqq=scheme.hqq,
        ).quantized_model()
        table_node = node.args[0]
        _replace(gm, node, holder.emb, f"_mb_qembedding_{count}", (node.args[1],))
        del table
        _release(gm, table_node)
        count += 1
    return count


def _drop_unused_attrs(gm) -> None:
    """Drop parameters no get_attr node reads (left over after dead-code elimination).

    The quantized weights' float originals are already gone (:func:`_release`).
    """
    import torch

    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used or name.startswith("_mb_q"):
            continue
        owner, attr = _owner(gm, name)
        if isinstance(getattr(owner, attr, None), torch.Tensor) and attr in owner._parameters:
            del owner._parameters[attr]


def _pt2e_quantizer(name: str):
    if name.startswith("xnnpack_dynamic"):
        from executorch.extension.llm.export.quantizer_lib import (
            DynamicQuantLinearOptions,
            PT2EQuantOptions,
            get_pt2e_quantizers,
        )

        options = PT2EQuantOptions(quantize_linear=DynamicQuantLinearOptions(is_qc4=name.endswith("qc4")))
        return get_pt2e_quantizers(options)[0]
    from executorch.extension.llm.export.quantizer_lib import get_coreml_quantizer

    return get_coreml_quantizer(name)


def _is_quantized(ep) -> bool:
    quant_namespaces = ("quantized_decomposed", "torchao")
    for node in ep.graph.nodes:
        if node.op == "call_function" and str(getattr(node.target, "namespace", "")) in quant_namespaces:
            return True
    return False


def _export(module, example_inputs: tuple, dynamic_shapes, strict: bool = False):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .program import no_stack_traces

    with sdpa_kernel([SDPBackend.MATH]), torch.no_grad(), no_stack_traces():
        return torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=strict)


def quantize_program(
    ep, example_inputs: tuple, dynamic_shapes, scheme: Scheme, *, strict: bool = False
) -> tuple[Any, dict[str, Any], list[str]]:
    """Apply ``scheme`` to ``ep``; return ``(new program, applied record, log lines)``.

    The rewritten module is exported again non-strict by default. export_llm
    traces its quantized model strictly (dynamo); ``strict=True`` does that
    here, and gives the same operators in the same order and the same numbers
    (tests/steps/test_backends_ml.py), so non-strict, the faster, is the default.

    Consumes ``ep``: its weights move into the new program (``ep`` is left
    without them).

    Raises :class:`SchemeError` when the scheme finds nothing to apply to
    (e.g. embedding quantization on a program without an embedding) or
    cannot apply (a pt2e quantizer on an already-quantized program).
    """
    import torch

    log: list[str] = []
    record = scheme.record()
    if not record:
        raise SchemeError("no quantization scheme selected (set linear, embedding_bits or pt2e)")
    if scheme.pt2e != "none" and _is_quantized(ep):
        raise SchemeError(f"pt2e quantizer {scheme.pt2e!r} needs a float program, but this one is already quantized")

    gm = ep.module()
    # gm holds the same weight tensors as ep. Dropping ep's references lets each
    # float weight be freed as soon as its quantized replacement exists, instead
    # of keeping the whole float model alive next to the quantized one.
    ep._state_dict.clear()
    ep._constants.clear()
    # HQQ in cache-sized row blocks: torchao's numbers, several times faster and
    # without weight-sized temporaries (modelbuild.ml.hqq).
    with blocked_hqq():
        if scheme.embedding_bits:
            n = _quantize_embeddings(gm, scheme, log)
            if n == 0:
                raise SchemeError("embedding quantization found no embedding on a constant table in this program")
            record["embeddings_quantized"] = n
        if scheme.linear != "none":
            n = _quantize_linears(gm, scheme, log)
            if n == 0:
                raise SchemeError(f"{scheme.linear}: no linear with a constant 2-D float weight to quantize")
            record["linears_quantized"] = n
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _drop_unused_attrs(gm)
    gm.recompile()

    if scheme.pt2e != "none":
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        captured = _export(gm, example_inputs, dynamic_shapes).module()
        prepared = prepare_pt2e(captured, _pt2e_quantizer(scheme.pt2e))
        with torch.no_grad():
            # Calibrate on the stored example inputs, as export_llm does without calibration data.
            prepared(*example_inputs)
        gm = convert_pt2e(prepared)
    return _export(gm, example_inputs, dynamic_shapes, strict), record, log


def scheme_from_params(params) -> Scheme:
    """Build a :class:`Scheme` from the quantize step's params."""
    data = params.model_dump()
    return Scheme(**{k: data[k] for k in asdict(Scheme()).keys()})
