"""The public API is what __all__ says, and every name in it resolves."""

import importlib
import importlib.metadata
import subprocess
import sys
import types

import pytest

import modelbuild
import modelbuild.api
import modelbuild.step

EXPECTED_API = {
    "build", "plan", "explain", "graph", "list_targets", "list_steps", "schema",
    "cache_stats", "cache_verify", "cache_gc", "cache_clear", "cache_push", "cache_pull", "clean", "report",
    "lock", "release", "release_verify", "verify", "whence",
}


def test_package_all_is_the_lazy_exports_and_each_is_the_real_object():
    from modelbuild import _EXPORTS

    assert modelbuild.__all__ == sorted(_EXPORTS) + ["__version__"]
    assert sorted(dir(modelbuild)) == sorted(modelbuild.__all__)
    importlib.import_module("modelbuild.graph")  # the BuildGraph module must not shadow the graph operation
    for name, home in _EXPORTS.items():
        obj = getattr(modelbuild, name)
        assert obj is getattr(importlib.import_module(home), name), name
        assert not isinstance(obj, types.ModuleType) and obj.__module__.startswith("modelbuild."), name
    assert modelbuild.__version__ == importlib.metadata.version("modelbuild")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        modelbuild.nope  # noqa: B018


def test_every_operation_is_exported_from_the_package():
    for name in modelbuild.api.__all__:
        op = getattr(modelbuild.api, name)
        assert callable(op) and op.__module__.startswith("modelbuild.api."), name
        assert getattr(modelbuild, name) is op, name


def test_errors_form_one_tree():
    for name in ("RecipeError", "StepError", "StepFailed", "PlatformUnavailable", "CacheCorrupt", "StoreError",
                 "InternalError"):
        assert issubclass(getattr(modelbuild, name), modelbuild.ModelbuildError), name
    assert modelbuild.step.StepError is modelbuild.StepError and modelbuild.step.Step is modelbuild.Step


def test_importing_the_package_loads_no_submodule():
    """The exports are lazy: `import modelbuild` costs one module, not pydantic and the engine."""
    code = "import sys, modelbuild; print(sorted(m for m in sys.modules if m.startswith(('modelbuild', 'pydantic'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['modelbuild']"


def test_api_all_is_stable():
    assert set(modelbuild.api.__all__) == EXPECTED_API


def test_step_api_names():
    assert {"Step", "Params", "Input", "Requirements", "Verdict", "StepContext", "StepError",
            "PlatformUnavailable", "RecipeError"} <= set(modelbuild.step.__all__)
