"""The export step: LLM checkpoints (tiny synthetic llama) and plain nn.Module factories."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelbuild.errors import RecipeError
from modelbuild.steps.export import ExportStep
from modelbuild.testing import as_artifact, run_step

pytestmark = pytest.mark.ml

SEQ = 32


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("ckpt")
    fields = write_synthetic_checkpoint(out, "llama3_2", "tiny", seed=0)
    (out / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
    return out


def _export(ckpt: Path, out: Path, **params):
    return run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint", "ckpt")}, out)


@pytest.fixture(scope="module")
def kv_sdpa_dynamic(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kv_sdpa_dyn")
    _export(
        tiny_ckpt,
        out,
        max_seq_len=SEQ,
        use_kv_cache=True,
        use_sdpa_with_kv_cache=True,
        enable_dynamic_shape=True,
        metadata={"get_eos_ids": [2], "extra_key": 7},
    )
    return out


def test_step_module_does_not_import_torch():
    code = "import sys, modelbuild.steps.export as e; e.ExportStep(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_llm_artifact_layout_and_info(kv_sdpa_dynamic):
    from modelbuild.ml.program import ProgramInfo

    files = sorted(p.name for p in kv_sdpa_dynamic.iterdir())
    assert files == ["example_inputs.pt", "model.json", "program.pt2", "tokenizer.json", "tokenizer_config.json"]
    info = ProgramInfo.from_json((kv_sdpa_dynamic / "model.json").read_text())
    assert (info.kind, info.family, info.dtype, info.tokenizer) == ("llm", "llama3_2", "fp32", "tokenizer.json")
    assert info.use_kv_cache and info.use_sdpa_with_kv_cache and info.enable_dynamic_shape
    assert info.dynamic_shapes == [{"1": {"name": "token_dim", "min": 0, "max": SEQ - 1}}, {"input_pos": None}]
    assert info.source == {
        "architecture": "llama3_2",
        "family": "llama3_2",
        "format": "hf",
        "seed": 0,
        "size": "tiny",
        "source": "synthetic",
        "synthetic": True,
    }
    # export_llama_lib's defaults, the checkpoint's bos/eos, then the recipe's metadata on top.
    assert info.metadata == {
        "get_max_seq_len": SEQ,
        "get_max_context_len": SEQ,
        "get_n_layers": 2,
        "get_vocab_size": 512,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_bos_id": 0,
        "get_eos_ids": [2],
        "extra_key": 7,
    }
    assert info.input_names == ["tokens", "input_pos"]


def test_llm_program_matches_the_eager_model(kv_sdpa_dynamic, tiny_ckpt):
    import torch

    from modelbuild.ml.llm.model import load_llm
    from modelbuild.ml.program import load_program

    ep, info, example = load_program(kv_sdpa_dynamic)
    tokens, opts = example
    assert tokens.tolist() == [[2, 3, 4]] and opts["input_pos"].tolist() == [0]  # export_llm's dynamic example
    eager, args, _ = load_llm(tiny_ckpt, "fp32", max_seq_len=SEQ, use_kv_cache=True)
    program = ep.module()
    prompt = torch.tensor([[0, 17, 99, 250, 3, 42]])
    with torch.no_grad():
        # prefill 6 tokens, then decode 2 single tokens, in both models
        got = [program(prompt, {"input_pos": torch.tensor([0])})]
        want = [eager(prompt, {"input_pos": torch.tensor([0])})]
        for pos, tok in ((6, 11), (7, 300)):
            step = torch.tensor([[tok]])
            got.append(program(step, {"input_pos": torch.tensor([pos])}))
            want.append(eager(step, {"input_pos": torch.tensor([pos])}))
    for g, w in zip(got, want):
        assert g.shape == (1, 512)
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_program_can_be_re_exported_from_its_info(kv_sdpa_dynamic):
    # What quantize does after rewriting the graph: export ep.module() again.
    import torch

    from modelbuild.ml.program import load_program

    ep, info, example = load_program(kv_sdpa_dynamic)
    again = torch.export.export(ep.module(), example, dynamic_shapes=info.torch_dynamic_shapes(), strict=False)
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    out = again.module()(tokens, {"input_pos": torch.tensor([0])})
    assert out.shape == (1, 512)


def test_export_is_byte_for_byte_reproducible(tiny_ckpt, tmp_path):
    params = dict(max_seq_len=16, use_kv_cache=True, use_sdpa_with_kv_cache=True)
    _export(tiny_ckpt, tmp_path / "a", **params)
    # a second export in a fresh process: no per-process ids may leak in
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from modelbuild.steps.export import ExportStep
        from modelbuild.testing import as_artifact, run_step
        run_step(ExportStep, {params!r}, {{"checkpoint": as_artifact(Path({str(tiny_ckpt)!r}), "checkpoint")}},
                 Path({str(tmp_path / "b")!r}))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert str(tmp_path) not in (tmp_path / "a" / "model.json").read_text()


def test_static_no_kv_bf16_export(tiny_ckpt, tmp_path):
    import torch

    from modelbuild.ml.program import load_program

    _export(tiny_ckpt, tmp_path, dtype="bf16", max_seq_len=8, enable_dynamic_shape=False)
    ep, info, example = load_program(tmp_path)
    assert info.dtype == "bf16" and not info.use_kv_cache and info.dynamic_shapes is None
    # export_llm's static example: arange(max_seq_len) % (vocab - 1) + 1
    assert example[0].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert ep.state_dict["tok_embeddings.weight"].dtype == torch.bfloat16
    assert ep.module()(example[0]).dtype == torch.bfloat16


def test_checkpoint_errors_are_one_line(tmp_path):
    from modelbuild.errors import StepError

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("no weights here")
    with pytest.raises(StepError, match="no checkpoint found"):
        _export(tmp_path / "ckpt", tmp_path / "out")


# -- plain nn.Module -----------------------------------------------------------

MODULE_SRC = '''
import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x, scale):
        return self.fc2(torch.relu(self.fc1(x))) * scale


def make():
    torch.manual_seed(0)
    return MLP()


def make_with_inputs():
    return make(), (torch.ones(2, 16), torch.ones(1))
'''


@pytest.fixture
def project(tmp_path) -> Path:
    pkg = tmp_path / "proj" / "mymodels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mlp.py").write_text(MODULE_SRC)
    yield tmp_path / "proj"
    for name in [m for m in sys.modules if m == "mymodels" or m.startswith("mymodels.")]:
        del sys.modules[name]


def test_module_export_with_dynamic_batch(project, tmp_path):
    import torch

    from modelbuild.ml.program import load_program

    params = {
        "module": "mymodels.mlp:make",
        "example_inputs": [{"shape": [4, 16]}, {"shape": [1]}],
        "dynamic_dims": [{"0": {"name": "batch", "min": 1, "max": 64}}, None],
        "seed": 3,
    }
    step = ExportStep()
    parsed = ExportStep.Params.model_validate(params)
    step.check(parsed, {})
    from modelbuild.step import ResolveContext

    resolved = step.resolve(parsed, ResolveContext(project=project, cache=tmp_path / "resolved"))
    assert step.sources(resolved) == ["mymodels/mlp.py"]
    run_step(ExportStep, params, {}, tmp_path / "out", project=project)
    ep, info, example = load_program(tmp_path / "out")
    assert info.kind == "module" and info.input_names == ["x", "scale"] and info.output_names == ["output"]
    assert info.dynamic_shapes == [{"0": {"name": "batch", "min": 1, "max": 64}}, None]
    assert [tuple(x.shape) for x in example] == [(4, 16), (1,)]
    sys.path.insert(0, str(project))
    try:
        from mymodels.mlp import make
    finally:
        sys.path.remove(str(project))
    x = torch.randn(9, 16)  # a batch size the example did not have
    torch.testing.assert_close(ep.module()(x, torch.tensor([2.0])), make()(x, torch.tensor([2.0])))


def test_module_factory_may_return_inputs(project, tmp_path):
    from modelbuild.ml.program import load_program

    run_step(ExportStep, {"module": "mymodels.mlp:make_with_inputs"}, {}, tmp_path / "out", project=project)
    ep, info, example = load_program(tmp_path / "out")
    assert [tuple(x.shape) for x in example] == [(2, 16), (1,)] and info.dynamic_shapes is None


@pytest.mark.parametrize(
    ("params", "kinds", "key", "message"),
    [
        ({"use_sdpa_with_kv_cache": True}, {"checkpoint": "checkpoint"}, "use_sdpa_with_kv_cache", "needs use_kv_cache"),
        ({"max_seq_len": 64, "max_context_len": 32}, {"checkpoint": "checkpoint"}, "max_context_len", "must be >="),
        ({}, {}, "inputs", "needs a `checkpoint` input"),
        ({"module": "a.b:f"}, {"checkpoint": "checkpoint"}, "module", "not both"),
        ({"module": "a.b"}, {}, "module", "package.module:factory"),
        ({"module": "a.b:f", "use_kv_cache": True}, {}, "use_kv_cache", "applies only to LLM"),
        ({"example_inputs": [{"shape": [1]}]}, {"checkpoint": "checkpoint"}, "example_inputs", "only to `module`"),
        ({"metadata": {"get_eos_ids": [1, "x"]}}, {"checkpoint": "checkpoint"}, "metadata", "metadata.get_eos_ids"),
        ({"metadata": {"bad-name": 1}}, {"checkpoint": "checkpoint"}, "metadata", "identifier"),
        (
            {"module": "a.b:f", "example_inputs": [{"shape": [1]}], "dynamic_dims": [None, None]},
            {},
            "dynamic_dims",
            "2 entries for 1 example inputs",
        ),
    ],
)
def test_check_rejects_bad_combinations(params, kinds, key, message):
    step = ExportStep()
    with pytest.raises(RecipeError, match=message) as info:
        step.check(ExportStep.Params.model_validate(params), kinds)
    assert info.value.key == key


# -- parity with ExecuTorch's own export_llm pipeline ------------------------------


def _meta_layout(hf_dir: Path, dest: Path) -> Path:
    """The tiny HF checkpoint as Meta ships Llama 3.2 (consolidated.00.pth + params.json)."""
    import torch

    from modelbuild.ml.llm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(hf_dir)
    dest.mkdir()
    torch.save({k: v.clone() for k, v in ckpt.state_dict.items()}, dest / "consolidated.00.pth")
    params = {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "vocab_size": 512,
        "ffn_dim_multiplier": 1.0,
        "multiple_of": 32,  # -> hidden_dim 192, as the tiny config
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "use_scaled_rope": True,
    }
    (dest / "params.json").write_text(json.dumps(params))
    (dest / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    (dest / "checkpoint.json").write_text(json.dumps({"format": "meta", "family": "llama3_2"}))
    return dest


def _transposes(gm) -> int:
    return sum(str(n.target).startswith(("aten.transpose", "aten.permute")) for n in gm.graph.nodes)


@pytest.mark.parametrize("dynamic", [True, False])
def test_same_program_as_executorch_export_llm(tiny_ckpt, tmp_path, dynamic):
    """ExecuTorch's _prepare_for_llama_export + LLMEdgeManager.export on the same
    checkpoint and options gives the same graph, inputs, dynamic shapes, metadata
    and outputs as the export step."""
    import torch
    from executorch.examples.models.llama.export_llama_lib import _prepare_for_llama_export
    from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType

    from modelbuild.ml.program import load_program

    meta = _meta_layout(tiny_ckpt, tmp_path / "meta")
    config = LlmConfig()
    config.base.model_class = ModelType.llama3_2
    config.base.checkpoint = str(meta / "consolidated.00.pth")
    config.base.params = str(meta / "params.json")
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True
    config.model.enable_dynamic_shape = dynamic
    config.export.max_seq_length = SEQ
    config.export.max_context_length = SEQ
    config.export.output_dir = str(tmp_path / "et")
    theirs = _prepare_for_llama_export(config).export()
    transposes_before = _transposes(theirs.pre_autograd_graph_module)
    theirs.run_canonical_optimizations()  # as _export_llama does right after export()

    _export(
        meta, tmp_path / "ours", max_seq_len=SEQ, use_kv_cache=True, use_sdpa_with_kv_cache=True,
        enable_dynamic_shape=dynamic,
    )
    ep, info, example = load_program(tmp_path / "ours")

    # example inputs and dynamic shapes
    their_example = theirs.example_inputs
    assert example[0].tolist() == their_example[0].tolist() and example[0].dtype == their_example[0].dtype
    assert example[1]["input_pos"].tolist() == their_example[1]["input_pos"].tolist()
    if dynamic:
        dim = theirs.dynamic_shapes[0][1]
        assert info.dynamic_shapes[0]["1"] == {"name": dim.__name__, "min": dim.min, "max": dim.max}
    else:
        assert theirs.dynamic_shapes is None and info.dynamic_shapes is None
    # runtime metadata: theirs plus the checkpoint's bos/eos
    assert {k: v for k, v in info.metadata.items() if k not in ("get_bos_id", "get_eos_ids")} == theirs.metadata

    # the same graph: op sequence of the exported modules
    def ops(gm):
        return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]

    ours_gm = ep.module()
    their_gm = theirs.pre_autograd_graph_module
    their_gm.graph.eliminate_dead_code()  # export_llm's re-export before lowering drops bypassed nodes
    assert _transposes(their_gm) < transposes_before  # RemoveRedundantTransposes had work to do
    assert ops(ours_gm) == ops(their_gm)
    # the same numbers
    tokens = torch.tensor([[0, 5, 77]]) if dynamic else torch.tensor([[5]])
    with torch.no_grad():
        a = ours_gm(tokens, {"input_pos": torch.tensor([0])})
        b = theirs.pre_autograd_graph_module(tokens, {"input_pos": torch.tensor([0])})
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_non_strict_export_computes_the_same_program(kv_sdpa_dynamic, tiny_ckpt, tmp_path):
    import torch

    from modelbuild.ml.program import load_program

    _export(
        tiny_ckpt, tmp_path, max_seq_len=SEQ, use_kv_cache=True, use_sdpa_with_kv_cache=True,
        enable_dynamic_shape=True, metadata={"get_eos_ids": [2], "extra_key": 7}, strict=False,
    )
    strict_ep, strict_info, _ = load_program(kv_sdpa_dynamic)
    loose_ep, loose_info, example = load_program(tmp_path)
    assert loose_info == strict_info

    def ops(ep):
        return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]

    assert ops(loose_ep) == ops(strict_ep)
    tokens = torch.tensor([[0, 9, 8, 7]])
    with torch.no_grad():
        a = loose_ep.module()(tokens, {"input_pos": torch.tensor([0])})
        b = strict_ep.module()(tokens, {"input_pos": torch.tensor([0])})
    torch.testing.assert_close(a, b, atol=0, rtol=0)
