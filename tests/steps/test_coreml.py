"""The coreml step: exported program -> .mlpackage, checked by opening the spec on Linux."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import coremltools as ct  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from modelbuild.errors import RecipeError, StepError  # noqa: E402
from modelbuild.ml.models.programs import tiny_llama_program, tinyconv_program  # noqa: E402
from modelbuild.steps.coreml import CoreMLStep  # noqa: E402
from modelbuild.testing import run_step  # noqa: E402

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def conv_static(tmp_path_factory):
    return tinyconv_program(tmp_path_factory.mktemp("conv-static"), size=32)


@pytest.fixture(scope="module")
def conv_dynamic(tmp_path_factory):
    return tinyconv_program(tmp_path_factory.mktemp("conv-dyn"), size=32, dynamic=(16, 128))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama_program(tmp_path_factory.mktemp("llama"), max_seq_len=32)


def convert(program, params, out):
    art = run_step(CoreMLStep, params, {"program": program}, out)
    spec = ct.models.MLModel(str(art.path / "model.mlpackage"), skip_model_load=True).get_spec()
    record = json.loads((art.path / "coreml.json").read_text())
    return spec, record


def test_static_fp16_ios17(conv_static, tmp_path):
    spec, record = convert(conv_static, {}, tmp_path / "out")
    assert spec.specificationVersion == 8  # iOS17
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["image"]
    assert [o.name for o in spec.description.output] == ["logits"]
    arr = spec.description.input[0].type.multiArrayType
    assert list(arr.shape) == [1, 3, 32, 32]
    assert arr.WhichOneof("ShapeFlexibility") is None
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 10]
    assert record["minimum_deployment_target"] == "iOS17"
    assert record["precision"] == "fp16"
    assert record["inputs"][0] == {"name": "image", "type": "multiArray", "dtype": "fp16", "shape": [1, 3, 32, 32]}
    assert record["size_bytes"] == sum(
        p.stat().st_size for p in (tmp_path / "out" / "model.mlpackage").rglob("*") if p.is_file()
    )
    # ExecuTorch's debug side file is not shipped in a standalone package
    assert not (tmp_path / "out" / "model.mlpackage" / "executorch_debug_handle_mapping.json").exists()
    assert any("executorch_debug_handle_mapping.json" in n for n in record["notes"])
    # No wall-clock date in the artifact.
    assert "com.github.apple.coremltools.conversion_date" not in spec.description.metadata.userDefined


def test_fp32_ios16_names_and_metadata(conv_static, tmp_path):
    params = {
        "minimum_deployment_target": "iOS16",
        "precision": "fp32",
        "float_io": "fp32",
        "input_names": ["pixels"],
        "output_names": ["scores"],
        "model_description": "tiny convnet",
        "metadata": {"com.example.revision": "abc"},
    }
    spec, record = convert(conv_static, params, tmp_path / "out")
    assert spec.specificationVersion == 7  # iOS16
    assert [i.name for i in spec.description.input] == ["pixels"]
    assert [o.name for o in spec.description.output] == ["scores"]
    assert record["inputs"][0]["dtype"] == "fp32"
    assert record["outputs"][0]["dtype"] == "fp32"
    assert spec.description.metadata.shortDescription == "tiny convnet"
    assert spec.description.metadata.userDefined["com.example.revision"] == "abc"
    # fp32 weights take about twice the bytes of fp16 ones
    spec16, record16 = convert(conv_static, {"minimum_deployment_target": "iOS16"}, tmp_path / "out16")
    assert record["size_bytes"] > 1.7 * record16["size_bytes"]


def test_dynamic_dims_become_ranges(conv_dynamic, tmp_path):
    spec, record = convert(conv_dynamic, {}, tmp_path / "out")
    arr = spec.description.input[0].type.multiArrayType
    assert list(arr.shape) == [1, 3, 32, 32]  # the example shape is the default
    ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
    assert ranges == [(1, 1), (3, 3), (16, 128), (16, 128)]
    assert record["inputs"][0]["shape_range"] == [[1, 1], [3, 3], [16, 128], [16, 128]]
    assert any("dynamic" in n for n in record["notes"])


def test_image_input(conv_dynamic, tmp_path):
    params = {"image_inputs": {"image": {"scale": 1 / 255, "bias": [-0.5, -0.5, -0.5], "color_layout": "BGR"}}}
    spec, record = convert(conv_dynamic, params, tmp_path / "out")
    img = spec.description.input[0].type.imageType
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    assert (img.height, img.width) == (32, 32)
    assert img.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.BGR
    assert (img.imageSizeRange.heightRange.lowerBound, img.imageSizeRange.heightRange.upperBound) == (16, 128)
    assert record["inputs"][0]["type"] == "image"
    # scale and bias are applied inside the program: they are MIL constants now
    text = str(spec.mlProgram)
    assert "0.0039215" in text and "-0.5" in text


def test_enumerated_shapes(conv_dynamic, tmp_path):
    shapes = [[1, 3, 32, 32], [1, 3, 64, 64], [1, 3, 128, 128]]
    spec, record = convert(conv_dynamic, {"enumerated_shapes": {"image": shapes}}, tmp_path / "out")
    arr = spec.description.input[0].type.multiArrayType
    assert arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes"
    assert [list(s.shape) for s in arr.enumeratedShapes.shapes] == shapes
    assert record["inputs"][0]["enumerated_shapes"] == shapes


def test_enumerated_shape_outside_export_range_fails(conv_dynamic, conv_static, tmp_path):
    with pytest.raises(StepError, match="outside the exported range"):
        run_step(CoreMLStep, {"enumerated_shapes": {"image": [[1, 3, 256, 256]]}}, {"program": conv_dynamic}, tmp_path / "a")
    with pytest.raises(StepError, match="static"):
        run_step(CoreMLStep, {"enumerated_shapes": {"image": [[1, 3, 64, 64]]}}, {"program": conv_static}, tmp_path / "b")
    with pytest.raises(StepError, match="no input named 'img'"):
        run_step(CoreMLStep, {"enumerated_shapes": {"img": [[1, 3, 64, 64]]}}, {"program": conv_static}, tmp_path / "c")


def test_llm_kv_cache_becomes_states_on_ios18(llama, tmp_path):
    spec, record = convert(llama, {"minimum_deployment_target": "iOS18"}, tmp_path / "out")
    assert spec.specificationVersion == 9
    assert [i.name for i in spec.description.input] == ["tokens", "input_pos"]
    assert [i.type.multiArrayType.dataType for i in spec.description.input] == [
        ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    ] * 2
    states = {s.name: list(s.type.stateType.arrayType.shape) for s in spec.description.state}
    # 2 layers x (k, v), each [batch, kv_heads, max_seq_len, head_dim]
    assert len(states) == 4
    assert all(shape == [1, 2, 32, 16] for shape in states.values())
    assert [s["type"] for s in record["states"]] == ["state"] * 4
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 128]


def test_llm_dynamic_prefill_converts(tmp_path):
    # enable_dynamic_shape: S tokens per call, the cache written with index_copy
    # (converted by modelbuild.ml.coreml.ops; numerics need a Mac to check)
    prog = tiny_llama_program(tmp_path / "prog", max_seq_len=32, dynamic=True)
    spec, record = convert(prog, {"minimum_deployment_target": "iOS18"}, tmp_path / "out")
    tokens = spec.description.input[0].type.multiArrayType
    assert [(r.lowerBound, r.upperBound) for r in tokens.shapeRange.sizeRanges] == [(1, 1), (1, 31)]
    assert len(spec.description.state) == 4
    assert any("index_copy" in n for n in record["notes"])
    # the cache update is a scatter into the state, not a dense rewrite
    ops = {op.type for f in spec.mlProgram.functions.values() for b in f.block_specializations.values() for op in b.operations}
    assert {"scatter", "read_state", "write_state"} <= ops


def test_llm_kv_cache_needs_ios18(llama, tmp_path):
    with pytest.raises(StepError, match="iOS18"):
        run_step(CoreMLStep, {"minimum_deployment_target": "iOS17"}, {"program": llama}, tmp_path / "out")


def test_custom_sdpa_program_is_refused(conv_static, tmp_path):
    # A program exported with ExecuTorch's custom sdpa op: refused with the fix,
    # before anything is converted. (The op itself is not needed to see the flag.)
    prog = tmp_path / "prog"
    prog.mkdir()
    for f in conv_static.iterdir():
        (prog / f.name).write_bytes(f.read_bytes())
    text = json.loads((prog / "model.json").read_text())
    text["use_sdpa_with_kv_cache"] = True
    (prog / "model.json").write_text(json.dumps(text))
    with pytest.raises(StepError, match="use_sdpa_with_kv_cache = false"):
        run_step(CoreMLStep, {}, {"program": prog}, tmp_path / "out")


@pytest.mark.parametrize(
    "params, key",
    [
        ({"image_inputs": {"image": {"color_layout": "G"}}}, "image_inputs"),  # 3 bias values for 1 channel
        ({"input_names": ["a", "a"]}, "input_names"),
        ({"input_names": ["x"], "image_inputs": {"image": {}}}, "image_inputs"),
        ({"enumerated_shapes": {"image": []}}, "enumerated_shapes"),
    ],
)
def test_check_rejects_bad_params(params, key):
    step = CoreMLStep()
    with pytest.raises(RecipeError) as err:
        step.check(step.Params.model_validate(params), {"program": "exported-program"})
    assert err.value.key == key


def test_params_validation():
    with pytest.raises(ValidationError):
        CoreMLStep.Params.model_validate({"minimum_deployment_target": "iOS15"})
    with pytest.raises(ValidationError):
        CoreMLStep.Params.model_validate({"precision": "int8"})
    assert CoreMLStep.Params().minimum_deployment_target == "iOS17"


def test_step_modules_do_not_import_heavy_packages():
    code = (
        "import sys\n"
        "import modelbuild.steps.coreml, modelbuild.steps.compress, modelbuild.steps.mlmodelc\n"
        "from modelbuild.steps.compress import CompressStep\n"
        "s = CompressStep(); s.check(s.Params(method='palettize'), {})\n"
        "heavy = [m for m in ('torch', 'coremltools', 'numpy', 'executorch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_core_ml_recipes_plan_without_heavy_imports():
    """recipes/vision.toml and llama-1b-coreml.toml resolve (kinds check) without torch."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    code = (
        "import sys, tempfile\n"
        "from pathlib import Path\n"
        "from modelbuild.api import plan\n"
        "targets = ['tinyconv-pte', 'tinyconv-mlpackage-int8', 'tinyconv-mlpackage-sparse-pal4', 'tinyconv-mlmodelc',\n"
        "           'llama-1b-mlpackage-pal4', 'llama-1b-mlmodelc', 'tiny-llama-mlmodelc']\n"
        "p = plan(targets, project=Path(sys.argv[1]), cache_dir=Path(tempfile.mkdtemp()))\n"
        "rows = p.to_json()['rows']\n"
        "print(sorted({r['step'] for r in rows}))\n"
        "print([m for m in ('torch', 'coremltools', 'numpy') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, check=True)
    steps, heavy = done.stdout.strip().splitlines()[-2:]
    assert steps == str(["compress", "coreml", "export", "fetch", "lower", "mlmodelc"])
    assert heavy == "[]"
