"""The ``exported-program`` artifact: how it is written and read.

Layout of the artifact directory::

    program.pt2          torch.export.save() of the ExportedProgram
    example_inputs.pt    torch.save() of the tuple of example inputs (weights_only-loadable)
    model.json           ProgramInfo (below), deterministic JSON
    <tokenizer file>     for LLMs: the tokenizer copied from the checkpoint

Steps downstream (quantize, lower, coreml, validate) read it with
:func:`load_program`; steps upstream (export, quantize) write it with
:func:`save_program`.

Example::

    info = ProgramInfo(kind="module", dtype="fp32")
    save_program(ctx.out, ep, info, example_inputs=(x,))
    ep, info, example = load_program(artifact.path)
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ProgramInfo",
    "save_program",
    "load_program",
    "register_ops",
    "make_deterministic",
    "no_stack_traces",
    "PROGRAM_FILE",
    "INFO_FILE",
]

PROGRAM_FILE = "program.pt2"
INPUTS_FILE = "example_inputs.pt"
INFO_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass
class ProgramInfo:
    """What downstream steps need to know about an exported program.

    - ``kind``: ``"llm"`` (a decoder with the ExecuTorch LLM runner contract) or
      ``"module"`` (any nn.Module)
    - ``dynamic_shapes``: per positional input, ``{dim_index: {"name", "min", "max"}}``
      (JSON keys are strings), or None for static shapes
    - ``metadata``: runtime metadata methods written into the .pte
      (``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``, ``use_kv_cache``, ...)
    - ``tokenizer``: file name of the tokenizer inside the artifact, if any
    - ``model_args``: the family's model arguments (for rebuilding the eager model)
    - ``input_names`` / ``output_names``: names for Core ML and reports
    - ``quantization``: schemes applied so far, in order (``[]`` if none)
    - ``source``: provenance carried from the checkpoint (format, synthetic, revision)
    """

    kind: str
    dtype: str = "fp32"
    family: str | None = None
    max_seq_len: int | None = None
    max_context_len: int | None = None
    use_kv_cache: bool = False
    use_sdpa_with_kv_cache: bool = False
    enable_dynamic_shape: bool = False
    dynamic_shapes: list[dict[str, dict[str, Any]] | None] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    quantization: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: ``{"backend": name, "options": {...}}`` when a backend's export-time source
    #: transforms were applied (Core ML SDPA + KV cache); written only then.
    source_transforms: dict[str, Any] = field(default_factory=dict)
    #: The checkpoint's chat template (GGUF ``tokenizer.chat_template``, HF tokenizer_config.json),
    #: carried to the package metadata; written only when there is one.
    chat_template: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if not data["source_transforms"]:
            del data["source_transforms"]  # programs without backend transforms: model.json as before
        if data["chat_template"] is None:
            del data["chat_template"]
        return json.dumps(data, sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ProgramInfo":
        data = json.loads(text)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{INFO_FILE}: format_version {version}, expected {FORMAT_VERSION}")
        return cls(**data)

    def torch_dynamic_shapes(self):
        """``dynamic_shapes`` as torch.export expects it (torch.export.Dim objects).

        An entry for an input that is a dict (e.g. the LLM's
        ``{"input_pos": pos}``) is a dict keyed by the input's own keys, each
        value again None or ``{dim_index: {...}}``.
        """
        if self.dynamic_shapes is None:
            return None
        from torch.export import Dim

        dims: dict[str, Any] = {}

        def convert(arg):
            if arg is None:
                return None
            if not all(str(k).isdigit() for k in arg):
                return {k: convert(v) for k, v in arg.items()}
            entry = {}
            for index, d in arg.items():
                if d["name"] not in dims:
                    dims[d["name"]] = Dim(d["name"], min=d["min"], max=d["max"])
                entry[int(index)] = dims[d["name"]]
            return entry

        return tuple(convert(arg) for arg in self.dynamic_shapes)


@contextlib.contextmanager
def no_stack_traces():
    """Trace without capturing a Python stack trace for every new FX node.

    Each ``torch.export`` / ``run_decompositions`` / lowering pass re-traces the
    graph, and for nodes without a ``stack_trace`` (saved programs carry none:
    :func:`make_deterministic` drops them) the tracer captures and formats the
    interpreter stack per node. That was 20-30 s of a 135M lowering. The traces
    are debugging aids: neither the saved program nor the ``.pte`` holds them.
    """
    import torch.fx.config as fx_config

    before = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = before


def make_deterministic(ep) -> None:
    """Strip per-process values from node metadata so the saved program is byte-stable.

    ``torch.export.save`` serializes each node's ``nn_module_stack`` (keyed by
    ``id()`` of module objects), ``from_node`` provenance (holding ``id()`` of
    graphs) and ``stack_trace`` (absolute source paths). Module-stack keys are
    renamed by order of first appearance (the structure is kept); the other two
    are dropped: they are debugging aids, not part of the program.
    """
    keys: dict[str, str] = {}
    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            node.meta.pop("from_node", None)
            node.meta.pop("stack_trace", None)
            stack = node.meta.get("nn_module_stack")
            if stack:
                renamed = {}
                for key, value in stack.items():
                    if key not in keys:
                        keys[key] = key if not key.isdigit() else f"m{len(keys)}"
                    renamed[keys[key]] = value
                node.meta["nn_module_stack"] = renamed


def save_program(out: Path, ep, info: ProgramInfo, example_inputs: tuple, tokenizer: Path | None = None) -> None:
    """Write an exported-program artifact into ``out``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    make_deterministic(ep)
    torch.export.save(ep, out / PROGRAM_FILE)
    torch.save(tuple(example_inputs), out / INPUTS_FILE)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / tokenizer.name)
        info.tokenizer = tokenizer.name
    (out / INFO_FILE).write_text(info.to_json())


def register_ops(info: ProgramInfo) -> None:
    """Register the operator libraries a program described by ``info`` may hold.

    :func:`load_program` does it before deserializing; a step handed a program
    in memory by a fused session (``StepContext.input_value``) calls it too, so
    its process has the same operators (and out-variants for lowering) as one
    that loaded the files.
    """
    if info.use_sdpa_with_kv_cache or info.quantization:
        # Programs may hold ExecuTorch custom ops and quantized ops; they must be
        # registered before the program is deserialized.
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
    if info.source_transforms:
        from modelbuild.backends import get_backend

        get_backend(info.source_transforms["backend"]).load_ops()  # e.g. coreml::sdpa


def load_program(path: Path):
    """Read an exported-program artifact: ``(ExportedProgram, ProgramInfo, example_inputs)``."""
    import torch

    info = ProgramInfo.from_json((path / INFO_FILE).read_text())
    register_ops(info)
    ep = torch.export.load(path / PROGRAM_FILE)
    example = torch.load(path / INPUTS_FILE, weights_only=True)
    return ep, info, tuple(example)
