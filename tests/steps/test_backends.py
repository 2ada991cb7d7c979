"""Backends as plugins (modelbuild.backends): registration and the lower step's composed parameters.

The built-in backends register through the ``modelbuild.backends`` entry
points like a third-party one; a plugin installed beside them (a real
dist-info on ``sys.path``, in a child process) adds its backend and keys to
the lower step without changing the action-key parameters of other targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from modelbuild.backends import Backend, BackendParams, BackendRegistry, registry
from modelbuild.backends.registry import GROUP, lower_params_model
from modelbuild.errors import InternalError, RecipeError
from modelbuild.steps.lower import LowerStep

BUILT_IN = {"coreml", "mps", "portable", "vulkan", "xnnpack"}


def test_builtin_backends_register_through_the_entry_point_group():
    names = {ep.name for ep in metadata.entry_points(group=GROUP) if ep.value.startswith("modelbuild.backends.")}
    assert names == BUILT_IN
    assert BUILT_IN <= set(registry().names())
    for name in BUILT_IN:
        assert registry().get(name).name == name
    assert registry().get("coreml").runs_on.platforms == ("macos",)
    assert set(LowerStep.code_modules) >= {f"modelbuild.backends.{n}" for n in BUILT_IN}


def _keyed(params) -> dict:
    """The backend part of what enters the action key (the step's own keys, e.g. etrecord, left out)."""
    own = set(type(params).model_fields) - set(type(params).owners) - {"backend"}
    return {k: v for k, v in params.model_dump(mode="json").items() if k not in own}


def test_the_key_holds_the_chosen_backend_and_its_keys_only():
    P = LowerStep.Params
    assert _keyed(P()) == {"backend": "xnnpack", "xnnpack_ops": "all", "xnnpack_bf16": False}
    assert _keyed(P(backend="portable")) == {"backend": "portable"}
    assert _keyed(P(backend="vulkan", vulkan_force_fp16=True)) == {"backend": "vulkan", "vulkan_force_fp16": True}
    coreml = P(backend="coreml", coreml_quantize="b4w")
    assert _keyed(coreml) == {"backend": "coreml", "compute_units": "cpu_only", "minimum_deployment_target": "iOS18",
                              "precision": "fp16", "coreml_quantize": "b4w"}
    assert coreml.backend_params() == registry().get("coreml").Params(coreml_quantize="b4w")
    # The step's own validation round-trips what the engine hands a worker.
    assert P.model_validate(coreml.model_dump(mode="json")) == coreml


def test_a_key_of_another_backend_is_a_recipe_error_naming_it():
    step = LowerStep()
    with pytest.raises(RecipeError) as err:
        step.check(LowerStep.Params(backend="xnnpack", vulkan_force_fp16=True), {"program": "exported-program"})
    assert err.value.key == "vulkan_force_fp16" and '"vulkan"' in err.value.message


class _A(Backend):
    name = "a"

    class Params(BackendParams):
        shared_level: int = 1


class _B(Backend):
    name = "b"

    class Params(BackendParams):
        shared_level: int = 2  # same key, different default


class _C(Backend):
    name = "c"

    class Params(BackendParams):
        shared_level: int = 1  # same key, same type and default: shared


def test_two_backends_declaring_one_key_differently_is_an_internal_error():
    here = __name__
    with pytest.raises(InternalError, match="both declare parameter 'shared_level'"):
        lower_params_model(BackendRegistry({"a": f"{here}:_A", "b": f"{here}:_B"}))
    model = lower_params_model(BackendRegistry({"a": f"{here}:_A", "c": f"{here}:_C"}))
    assert model.owners == {"shared_level": ("a", "c")}
    assert model(backend="c", shared_level=5).model_dump() == {"backend": "c", "shared_level": 5}


def test_a_plugin_registered_under_another_name_is_refused():
    reg = BackendRegistry({"other": f"{__name__}:_A"})
    with pytest.raises(InternalError, match="calls itself 'a' but is registered as 'other'"):
        reg.get("other")


PLUGIN = '''
from pydantic import Field
from modelbuild.backends import Backend, BackendParams


class Lean(Backend):
    name = "lean"
    description = "XNNPACK, one partitioner"
    delegates = ("XnnpackBackend",)

    class Params(BackendParams):
        lean_per_op: bool = Field(False, description="one partition per op")

    def partitioners(self, params, info, log):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner(per_op_mode=params.lean_per_op)]
'''

PROBE = '''
import json, sys
from modelbuild.steps.lower import LowerStep
P = LowerStep.Params
own = set(P.model_fields) - set(P.owners) - {"backend"}  # the step's own keys (etrecord)
keyed = lambda p: {k: v for k, v in p.model_dump(mode="json").items() if k not in own}
print(json.dumps({
    "fields": list(P.model_fields),
    "xnnpack": P().model_dump(mode="json"),
    "lean": keyed(P(backend="lean", lean_per_op=True)),
    "modules": list(LowerStep.code_modules),
    "torch": "torch" in sys.modules,
}))
'''


def test_an_installed_plugin_adds_its_backend_without_changing_other_keys(tmp_path):
    dist = tmp_path / "mb_lean-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mb_lean\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\nlean = mb_lean:Lean\n")
    (tmp_path / "mb_lean.py").write_text(PLUGIN)
    env_path = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    seen = json.loads(out.stdout)
    assert "lean_per_op" in seen["fields"] and "mb_lean" in seen["modules"]
    assert seen["lean"] == {"backend": "lean", "lean_per_op": True}
    assert seen["xnnpack"] == LowerStep.Params().model_dump(mode="json")  # unchanged by the plugin
    assert seen["torch"] is False


def test_what_running_a_pte_needs_comes_from_its_backend(tmp_path, monkeypatch):
    from modelbuild.backends import runtime_unmet

    (tmp_path / "program.json").write_text(json.dumps({"backend": "coreml"}))
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    needs, detail = runtime_unmet(tmp_path)
    assert needs == "macOS" and "Apple platforms" in detail
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    assert runtime_unmet(tmp_path) is None
    (tmp_path / "program.json").write_text(json.dumps({"backend": "portable"}))
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    assert runtime_unmet(tmp_path) is None
