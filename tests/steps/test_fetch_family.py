"""fetch infers `family` from the checkpoint's own files; a declared family they contradict fails.

No torch here: the HF configs are plain config.json files, the GGUF files are
written with the ``gguf`` package (numpy) with the metadata llama.cpp's
converter writes; the weights are stand-in bytes the inference never reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from modelbuild.errors import StepError
from modelbuild.ml.llm.families import FAMILIES, family_for_hf_config

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_fetch import record, run_fetch  # noqa: E402

# config.json as the Hub has them (the fields inference looks at).
CONFIGS = {
    "phi_4_mini": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 200064},
    "lfm2": {"architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "vocab_size": 65536},
    "qwen3_5": {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
                "text_config": {"model_type": "qwen3_5_text", "vocab_size": 248320}},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936},
    "smollm2": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152},
    "llama3_2": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
                 "rope_scaling": {"rope_type": "llama3", "factor": 32.0}},
}


def _hf_dir(project: Path, name: str, config: dict) -> str:
    d = project / "ckpts" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    return f"ckpts/{name}"


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_is_inferred_from_config_json(tmp_path, family):
    source = _hf_dir(tmp_path, family, CONFIGS[family])
    out, _ = run_fetch({"source": source}, tmp_path)
    assert record(out)["family"] == family


def test_declared_family_consistent_with_the_files_is_kept(tmp_path):
    # smollm2 and llama3_2 both read model_type "llama": declaring either is consistent.
    source = _hf_dir(tmp_path, "x", CONFIGS["smollm2"])
    out, _ = run_fetch({"source": source, "family": "llama3_2"}, tmp_path)
    assert record(out)["family"] == "llama3_2"


def test_declared_family_contradicting_config_json_is_one_line(tmp_path):
    source = _hf_dir(tmp_path, "x", CONFIGS["lfm2"])
    with pytest.raises(StepError) as info:
        run_fetch({"source": source, "family": "qwen3"}, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message == "family = 'qwen3' contradicts config.json: its model_type 'lfm2' is read by lfm2"
    assert not (tmp_path / "out" / "checkpoint.json").exists()  # nothing half-written


def test_unsupported_model_type_is_recorded_as_unknown(tmp_path):
    source = _hf_dir(tmp_path, "x", {"model_type": "smollm3", "vocab_size": 128256})
    out, _ = run_fetch({"source": source}, tmp_path)
    assert record(out)["family"] is None  # export then fails with the reason:
    with pytest.raises(ValueError, match="model_type 'smollm3' is not supported: .*NoPE"):
        family_for_hf_config({"model_type": "smollm3"})


def _gguf(path: Path, arch: str, *, pre: str = "gpt2", vocab: int | None = None, rope_freqs=None) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_name("model")
    if vocab is not None:
        writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([f"t{i}" for i in range(8)])
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "kwargs", "family"),
    [
        ("qwen3", {}, "qwen3"),
        ("qwen2", {}, "qwen2_5"),
        ("llama", {"pre": "smollm"}, "smollm2"),
        ("llama", {"vocab": 32000}, "llama2"),
        ("llama", {"vocab": 128256}, "llama3"),
        ("llama", {"vocab": 128256, "rope_freqs": [1.0, 1.0, 2.5, 8.0]}, "llama3_1"),  # largest divisor: factor 8
        ("llama", {"vocab": 128256, "rope_freqs": [1.0, 4.0, 32.0]}, "llama3_2"),
    ],
)
def test_family_is_inferred_from_the_gguf_header(tmp_path, arch, kwargs, family):
    (tmp_path / "g").mkdir()
    _gguf(tmp_path / "g" / "model.gguf", arch, **kwargs)
    out, _ = run_fetch({"source": "g"}, tmp_path)
    assert record(out)["format"] == "gguf"
    assert record(out)["family"] == family


def test_declared_family_contradicting_the_gguf_architecture_fails(tmp_path):
    (tmp_path / "g").mkdir()
    _gguf(tmp_path / "g" / "model.gguf", "qwen3")
    with pytest.raises(StepError, match=r"^family = 'llama3_2' contradicts model.gguf: .*'qwen3'"):
        run_fetch({"source": "g", "family": "llama3_2"}, tmp_path)


def test_unsupported_gguf_architecture_is_recorded_as_unknown(tmp_path):
    (tmp_path / "g").mkdir()
    _gguf(tmp_path / "g" / "model.gguf", "gemma3")
    out, _ = run_fetch({"source": "g"}, tmp_path)
    assert record(out)["family"] is None


def test_every_registered_family_reads_some_model_type():
    # One place for the mapping: every family says which config.json model_type it reads.
    for fam in FAMILIES.values():
        assert fam.hf_model_types, fam.name


# -- while planning: a local checkpoint's files are read before anything runs ------------


def _plan_and_build(project, recipe: str):
    from modelbuild.api import plan

    project.recipe(recipe)
    row = next(r for r in plan(["ckpt"], project=project.root).rows if r.target == "ckpt")
    result = project.build("ckpt", keep_going=True)
    return row, result.targets["ckpt"]


def _lfm2_config_dir(root: Path) -> str:
    _hf_dir(root, "lfm", CONFIGS["lfm2"])
    return "ckpts/lfm"


def _phi3_gguf(root: Path) -> str:
    (root / "g").mkdir(parents=True)
    _gguf(root / "g" / "model.gguf", "phi3")
    return "g/model.gguf"


@pytest.mark.parametrize("write, family, line", [
    (_lfm2_config_dir, "qwen3",
     "family = 'qwen3' contradicts ckpts/lfm/config.json: its model_type 'lfm2' is read by lfm2"),
    (_phi3_gguf, "llama3_2",
     "family = 'llama3_2' contradicts g/model.gguf: its general.architecture 'phi3' is read by phi_4_mini"),
], ids=["config.json", "gguf"])
def test_declared_family_contradicting_a_local_checkpoint_fails_the_plan(project, write, family, line):
    source = write(project.root)
    row, built = _plan_and_build(project, f"""
        [targets.ckpt]
        step = "fetch"
        source = "{source}"
        family = "{family}"
    """)
    assert (row.decision, list(row.reasons)) == ("error", [line])
    assert (built.status, built.reason) == ("failed", line)  # the build refuses it the same way, running nothing
    assert not (project.root / "out" / "ckpt").exists()


def test_declared_family_consistent_with_a_local_checkpoint_plans_as_usual(project):
    from modelbuild.api import plan

    (project.root / "g").mkdir(parents=True)
    _gguf(project.root / "g" / "model.gguf", "lfm2")
    project.recipe("""
        [targets.ckpt]
        step = "fetch"
        source = "g"
        family = "lfm2"
    """)
    (row,) = plan(["ckpt"], project=project.root).rows
    assert (row.decision, list(row.reasons)) == ("miss", ["new target"])


def test_gguf_architecture_is_read_from_the_header_alone(tmp_path):
    """The standard-library reader skips every value type on its way (arrays of strings, numbers, booleans)."""
    from gguf import GGUFReader, GGUFWriter

    from modelbuild.ml.llm.gguf_header import gguf_architecture

    path = tmp_path / "late.gguf"
    writer = GGUFWriter(str(path), "qwen35")
    del writer.kv_data[0]["general.architecture"]  # written last here, so the reader must skip the rest
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_token_scores([0.5] * 300)
    writer.add_head_count_kv([0, 2, 0])
    writer.add_bool("x.flag", True)
    writer.add_float64("x.f64", 1.5)
    writer.add_array("x.nested", [[1, 2], [3]])
    writer.add_architecture()
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert list(GGUFReader(str(path)).fields)[-1] == "general.architecture"
    assert gguf_architecture(path) == "qwen35"
    assert gguf_architecture(_gguf(tmp_path / "first.gguf", "phi3")) == "phi3"
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + b"\x00" * 32)
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_architecture(tmp_path / "not.gguf")
