"""Where the ETRecord is decided (the build graph), the profile step's platform status, package checks.

No model runs here: these need neither torch nor ExecuTorch.
"""

from __future__ import annotations

import json

import pytest

from modelbuild.errors import PlatformUnavailable, RecipeError
from modelbuild.graph import BuildGraph
from modelbuild.plugins import Registry
from modelbuild.recipe import load_recipes
from modelbuild.steps.package import PackageStep
from modelbuild.steps.profile import ProfileStep
from modelbuild.testing import as_artifact, run_step

RECIPE = """
[targets.net-export]
step = "export"
module = "modelbuild.ml.models.tinyconv:make"
example_inputs = [{ shape = [1, 3, 64, 64], dtype = "float32" }]

[targets.net-ref]
step = "reference"
inputs = { model = "net-export" }

[targets.profiled-pte]
step = "lower"
inputs = { program = "net-export" }

[targets.validated-pte]
step = "lower"
inputs = { program = "net-export" }
backend = "portable"

[targets.shipped-pte]
step = "lower"
inputs = { program = "net-export" }

[targets.opted-out-pte]
step = "lower"
inputs = { program = "net-export" }
etrecord = false

[targets.profile]
step = "profile"
inputs = { pte = "profiled-pte", reference = "net-ref" }

[targets.validate]
step = "validate"
inputs = { artifact = "validated-pte", reference = "net-ref" }

[targets.validate-opted-out]
step = "validate"
inputs = { artifact = "opted-out-pte", reference = "net-ref" }

[targets.app]
step = "package"
inputs = { pte = "shipped-pte" }

[targets.app-with-record]
step = "package"
inputs = { pte = "validated-pte" }
etrecord = true
"""


def _graph(project, text=RECIPE):
    project.recipe(text)
    return BuildGraph.build(load_recipes(project.root / "recipes", root=project.root), Registry.discover())


def test_the_graph_turns_the_etrecord_on_for_profile_and_validate_consumers_only(project):
    g = _graph(project)
    etrecord = {name: g.nodes[name].params.etrecord for name in
                ("profiled-pte", "validated-pte", "shipped-pte", "opted-out-pte")}
    assert etrecord == {"profiled-pte": True, "validated-pte": True, "shipped-pte": None, "opted-out-pte": False}
    # The decided value is a parameter like any other: it is in the action key's params.
    assert g.nodes["profiled-pte"].params.model_dump(mode="json")["etrecord"] is True
    assert g.nodes["validated-pte"].params.model_dump(mode="json") == {"backend": "portable", "etrecord": True}


def test_package_bundle_io_needs_the_reference(project):
    with pytest.raises(RecipeError) as err:
        _graph(project, RECIPE + '\n[targets.bad]\nstep = "package"\ninputs = { pte = "shipped-pte" }\nbundle_io = true\n')
    assert err.value.key == "targets.bad.bundle_io" and "reference" in err.value.message
    with pytest.raises(RecipeError) as err:
        _graph(project, RECIPE + '\n[targets.bad]\nstep = "package"\n'
                                 'inputs = { pte = "shipped-pte", reference = "net-ref" }\n')
    assert err.value.key == "targets.bad.inputs"


def test_a_core_ml_pte_needs_macos_to_be_profiled(tmp_path, monkeypatch):
    import modelbuild.steps.profile as profile

    pte = tmp_path / "pte"
    pte.mkdir()
    (pte / "model.pte").write_bytes(b"not run")
    (pte / "program.json").write_text(json.dumps({"backend": "coreml", "kind": "module"}))
    (pte / "partition.json").write_text(json.dumps({"delegates": {"CoreMLBackend": 1}}))
    ref = tmp_path / "ref"
    ref.mkdir()
    monkeypatch.setattr(profile, "host_platform", lambda: "linux")
    with pytest.raises(PlatformUnavailable) as err:
        run_step(ProfileStep, {}, {"pte": as_artifact(pte, "pte", "coreml-pte"), "reference": ref}, tmp_path / "out")
    assert err.value.needs == "macOS" and "modelbuild build" in err.value.command


def test_profile_and_package_params_are_checked():
    with pytest.raises(Exception):
        ProfileStep.Params(runs=0)
    assert PackageStep.Params().bundle_io is False and PackageStep.Params().etrecord is False
