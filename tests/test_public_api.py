"""The public API is what __all__ says, and every name in it resolves."""

import modelbuild
import modelbuild.api
import modelbuild.step

EXPECTED_API = {
    "build", "plan", "explain", "graph", "list_targets", "list_steps", "schema",
    "cache_stats", "cache_verify", "cache_gc", "cache_clear", "clean", "report",
}


def test_package_all_resolves():
    for name in modelbuild.__all__:
        assert getattr(modelbuild, name) is not None


def test_api_all_is_stable():
    assert set(modelbuild.api.__all__) == EXPECTED_API


def test_step_api_names():
    assert {"Step", "Params", "Input", "Requirements", "Verdict", "StepContext", "StepError",
            "PlatformUnavailable", "RecipeError"} <= set(modelbuild.step.__all__)
