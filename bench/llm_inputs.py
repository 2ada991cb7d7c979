"""What both tools read in the ``export_llm`` comparisons: the weights, modelbuild's recipe, export_llm's command lines.

Shared by ``bench_pairs.py`` (single configs), ``bench_export.py`` (the
4-variant matrix) and ``bench_llama1b.py``, so that each compares the same
programs. Measuring a run is ``bench_pairs.measure``; nothing here times
anything.

The checkpoint is written once, before any timing: an HF-layout synthetic
checkpoint for modelbuild (a project-local ``source``), and the same weights
in Meta layout (``consolidated.00.pth`` + ``params.json``) for export_llm,
which takes only that layout (users run a convert_weights script first; that
conversion is not timed, while modelbuild's conversion inside export is).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: The 4-variant matrix, as modelbuild targets of RECIPE and export_llm variants of export_llm_cmd.
MATRIX = ("xnnpack-fp32", "xnnpack-8da4w", "coreml-fp32", "coreml-b4w")

#: The iOS guide's metadata for the Llama 3.2 1B configs.
LLAMA1B_METADATA = {"get_bos_id": 128000, "get_eos_ids": [128009, 128001]}


def prepare_checkpoints(work: Path, architecture: str, size: str, dtype: str = "fp32") -> tuple[Path, Path, dict]:
    """HF-layout dir (for modelbuild) and Meta-layout dir (for export_llm) of the same weights.

    The Meta-layout weights are stored in ``dtype`` (Meta's own checkpoints are bf16).
    """
    import torch

    from modelbuild.ml.llm.checkpoint import load_checkpoint
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    hf = work / "project" / "ckpt"
    fields = write_synthetic_checkpoint(hf, architecture, size, 0)
    (hf / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
    loaded = load_checkpoint(hf, dtype=dtype)
    meta = work / "meta"
    meta.mkdir(parents=True)
    torch.save(loaded.state_dict, meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps(loaded.model_args, sort_keys=True))
    shutil.copy(hf / "tokenizer.json", meta / "tokenizer.json")
    return hf, meta, dict(loaded.metadata)


#: modelbuild's side of the SmolLM2 configs and of the matrix (``.format(seq=...)``). The
#: Core ML export applies export_llm's Core ML source transforms (``backend = "coreml"``:
#: Core ML SDPA, Core ML KV cache, static shapes), as ``backend.coreml.enabled`` does.
#: The checkpoint and its KV-cache export (fp32, SDPA, dynamic shape): the head of
#: every LLM recipe of the benchmarks (``.format(seq=...)``).
CHAIN_HEAD = """
[targets.ckpt]
step = "fetch"
source = "ckpt"

[targets.export]
step = "export"
inputs = {{ checkpoint = "ckpt" }}
dtype = "fp32"
max_seq_len = {seq}
use_kv_cache = true
use_sdpa_with_kv_cache = true
enable_dynamic_shape = true
"""

#: 8da4w (group 32) of the exported program, as export_llm's ``quantization.qmode=8da4w``.
QUANTIZE_8DA4W = """
[targets.q8da4w]
step = "quantize"
inputs = {{ program = "export" }}
linear = "8da4w"
group_size = 32
"""

RECIPE = CHAIN_HEAD + """
[targets.xnnpack-fp32]
step = "lower"
inputs = {{ program = "export" }}
backend = "xnnpack"
""" + QUANTIZE_8DA4W + """
[targets.xnnpack-8da4w]
step = "lower"
inputs = {{ program = "q8da4w" }}
backend = "xnnpack"

[targets.export-static]
extends = "export"
use_sdpa_with_kv_cache = false
enable_dynamic_shape = false
backend = "coreml"
backend_options = {{ minimum_deployment_target = "iOS18" }}

[targets.coreml-fp32]
step = "lower"
inputs = {{ program = "export-static" }}
backend = "coreml"
minimum_deployment_target = "iOS18"

[targets.coreml-b4w]
extends = "coreml-fp32"
coreml_quantize = "b4w"
"""


def write_recipe(project: Path, seq: int) -> str:
    """Write RECIPE (``max_seq_len = seq``) as the project's ``recipes/bench.toml``; return its text."""
    recipe = RECIPE.format(seq=seq)
    (project / "recipes").mkdir(parents=True, exist_ok=True)
    (project / "recipes" / "bench.toml").write_text(recipe)
    return recipe


def export_llm_cmd(variant: str, meta: Path, out: Path, metadata: dict, seq: int, model_class: str) -> list[str]:
    """export_llm for one of MATRIX, writing ``out/<variant>.pte`` (run it with cwd=out: hydra writes outputs/ there)."""
    args = [
        PY, "-m", "executorch.extension.llm.export.export_llm",
        f"base.model_class={model_class}",
        f"base.checkpoint={meta / 'consolidated.00.pth'}",
        f"base.params={meta / 'params.json'}",
        f"base.metadata='{json.dumps(metadata, separators=(',', ':'))}'",
        "model.use_kv_cache=True",
        "model.dtype_override=fp32",
        f"export.max_seq_length={seq}",
        f"export.output_dir={out}",
        f"export.output_name={out / (variant + '.pte')}",
    ]
    if variant.startswith("xnnpack"):
        args += [
            "model.use_sdpa_with_kv_cache=True",
            "model.enable_dynamic_shape=True",
            "backend.xnnpack.enabled=True",
            "backend.xnnpack.extended_ops=True",
        ]
        if variant.endswith("8da4w"):
            args += ["quantization.qmode=8da4w", "quantization.group_size=32"]
    else:
        args += [
            "model.use_sdpa_with_kv_cache=False",
            "model.enable_dynamic_shape=False",
            "backend.coreml.enabled=True",
            "backend.coreml.ios=18",
            "backend.coreml.compute_units=cpu_only",
        ]
        if variant.endswith("b4w"):
            args += ["backend.coreml.quantize=b4w"]
    return args


def llama1b_export_llm_cmd(config: str, meta: Path, out: Path, group: int, seq: int) -> list[str]:
    """The ExecuTorch iOS guide's export_llm command (``bf16`` or ``8da4w``), writing ``out/<config>.pte``."""
    args = [
        PY, "-m", "executorch.extension.llm.export.export_llm",
        "base.model_class=llama3_2",
        f"base.checkpoint={meta / 'consolidated.00.pth'}",
        f"base.params={meta / 'params.json'}",
        f"base.metadata='{json.dumps(LLAMA1B_METADATA, separators=(',', ':'))}'",
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        "model.dtype_override=bf16",
        f"export.max_seq_length={seq}",
        f"export.output_dir={out}",
        f"export.output_name={out / (config + '.pte')}",
    ]
    if config == "8da4w":
        args += [
            "quantization.qmode=8da4w",
            f"quantization.group_size={group}",
            "quantization.embedding_quantize='4,32'",
            "backend.xnnpack.enabled=True",
        ]
    return args
