"""The compress step: each method shrinks the tiny convnet's .mlpackage as expected."""

from __future__ import annotations

import json

import pytest

import coremltools as ct  # noqa: E402

from modelbuild.errors import RecipeError, StepError  # noqa: E402
from modelbuild.ml.models.programs import tinyconv_program  # noqa: E402
from modelbuild.steps.compress import CompressStep  # noqa: E402
from modelbuild.steps.coreml import CoreMLStep  # noqa: E402
from modelbuild.testing import as_artifact, run_step  # noqa: E402

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return tinyconv_program(tmp_path_factory.mktemp("prog"), size=32)


@pytest.fixture(scope="module")
def mlpackage_ios18(program, tmp_path_factory):
    out = tmp_path_factory.mktemp("ios18")
    run_step(CoreMLStep, {"minimum_deployment_target": "iOS18"}, {"program": program}, out)
    return out


@pytest.fixture(scope="module")
def mlpackage_ios17(program, tmp_path_factory):
    out = tmp_path_factory.mktemp("ios17")
    run_step(CoreMLStep, {"minimum_deployment_target": "iOS17"}, {"program": program}, out)
    return out


@pytest.fixture(scope="module")
def compressed(mlpackage_ios18, tmp_path_factory):
    """Run the step once per parameter set (cached for the module)."""
    cache: dict[str, dict] = {}

    def compress(**params):
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            out = tmp_path_factory.mktemp("c")
            run_step(CompressStep, params, {"model": as_artifact(mlpackage_ios18, "mlpackage", "conv")}, out)
            record = json.loads((out / "compress.json").read_text())
            spec = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
            cache[key] = {"out": out, "record": record, "spec": spec}
        return cache[key]

    return compress


def ratio(result) -> float:
    rec = result["record"]
    assert rec["size_after_bytes"] == sum(
        p.stat().st_size for p in (result["out"] / "model.mlpackage").rglob("*") if p.is_file()
    )
    return rec["size_after_bytes"] / rec["size_before_bytes"]


def test_palettize_kmeans_4bit(compressed):
    r = compressed(method="palettize", nbits=4)
    assert r["record"]["compressed_ops"] == {"constexpr_lut_to_dense": 2}  # conv2, conv3 (> 2048 weights)
    assert r["record"]["compression"] == {
        "method": "palettize", "nbits": 4, "granularity": "per_tensor", "mode": "kmeans", "weight_threshold": 2048
    }
    # 16-bit weights -> 4-bit indices on ~95% of the weights
    assert ratio(r) < 0.45
    assert r["record"]["ratio"] == pytest.approx(ratio(r), abs=1e-4)


def test_palettize_fewer_bits_are_smaller(compressed):
    sizes = [ratio(compressed(method="palettize", nbits=n, palettize_mode="uniform")) for n in (8, 4, 2)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[0] < 0.65


def test_palettize_per_grouped_channel(compressed):
    grouped = compressed(method="palettize", nbits=4, granularity="per_grouped_channel", group_size=8)
    per_tensor = compressed(method="palettize", nbits=4)
    assert grouped["record"]["compression"]["group_size"] == 8
    # more lookup tables cost a little more than one per tensor, still far below dense
    assert ratio(per_tensor) < ratio(grouped) < 0.5


def test_quantize_int8_per_channel(compressed):
    r = compressed(method="quantize", nbits=8)
    ops = r["record"]["compressed_ops"]
    assert sum(ops.values()) == 2
    assert 0.45 < ratio(r) < 0.6  # 16 -> 8 bits, plus scales and the uncompressed small weights


def test_quantize_int4_per_block_smaller_than_int8(compressed):
    int4 = compressed(method="quantize", nbits=4, granularity="per_block", group_size=16)
    assert int4["record"]["compression"]["granularity"] == "per_block"
    assert ratio(int4) < ratio(compressed(method="quantize", nbits=8))


def test_prune_shrinks_with_sparsity(compressed):
    half = compressed(method="prune", target_sparsity=0.5)
    most = compressed(method="prune", target_sparsity=0.75)
    assert half["record"]["compressed_ops"] == {"constexpr_sparse_to_dense": 2}
    assert ratio(most) < ratio(half) < 0.75


def test_joint_compression_beats_either_alone(compressed):
    pp = compressed(method="prune+palettize", nbits=4, target_sparsity=0.5)
    pq = compressed(method="prune+quantize", nbits=8, target_sparsity=0.5)
    assert ratio(pp) < ratio(compressed(method="palettize", nbits=4))
    assert ratio(pp) < ratio(compressed(method="prune", target_sparsity=0.5))
    assert ratio(pq) < ratio(compressed(method="quantize", nbits=8))
    # joint compression stores the sparse mask around the palettized / quantized values
    assert "constexpr_sparse_to_dense" in pp["record"]["compressed_ops"]
    assert "constexpr_lut_to_sparse" in pp["record"]["compressed_ops"]
    assert "constexpr_sparse_blockwise_shift_scale" in pq["record"]["compressed_ops"]


def test_output_is_a_valid_mlpackage_with_coreml_json(compressed):
    r = compressed(method="palettize", nbits=4)
    coreml = json.loads((r["out"] / "coreml.json").read_text())
    assert coreml["size_bytes"] == r["record"]["size_after_bytes"]
    assert coreml["compression"]["method"] == "palettize"
    assert coreml["minimum_deployment_target"] == "iOS18"
    assert [i.name for i in r["spec"].description.input] == ["image"]


def test_compression_is_deterministic(mlpackage_ios18, tmp_path):
    files = []
    for n in ("a", "b"):
        out = tmp_path / n
        run_step(CompressStep, {"method": "prune+palettize", "nbits": 4}, {"model": mlpackage_ios18}, out)
        files.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert files[0].keys() == files[1].keys()
    assert files[0] == files[1]


def test_ios18_features_on_ios17_model_fail_clearly(mlpackage_ios17, tmp_path):
    for params in (
        {"method": "palettize", "granularity": "per_grouped_channel"},
        {"method": "quantize", "nbits": 4, "granularity": "per_block"},
        {"method": "prune+quantize", "nbits": 8},
    ):
        with pytest.raises(StepError, match="iOS18"):
            run_step(CompressStep, params, {"model": mlpackage_ios17}, tmp_path / params["method"])


def test_nothing_to_compress_is_an_error(mlpackage_ios18, tmp_path):
    with pytest.raises(StepError, match="no weight was compressed"):
        run_step(CompressStep, {"method": "palettize", "weight_threshold": 10**6}, {"model": mlpackage_ios18}, tmp_path)


@pytest.mark.parametrize(
    "params, key",
    [
        ({"method": "palettize", "nbits": 5}, "nbits"),
        ({"method": "quantize", "nbits": 2}, "nbits"),
        ({"method": "palettize", "granularity": "per_block"}, "granularity"),
        ({"method": "quantize", "granularity": "per_grouped_channel"}, "granularity"),
        ({"method": "prune", "target_sparsity": 1.0}, "target_sparsity"),
        ({"method": "palettize", "group_size": 0}, "group_size"),
    ],
)
def test_check_rejects_bad_combinations(params, key):
    step = CompressStep()
    with pytest.raises(RecipeError) as err:
        step.check(step.Params.model_validate(params), {"model": "mlpackage"})
    assert err.value.key == key

