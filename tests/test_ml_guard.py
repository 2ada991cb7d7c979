"""tests/ml_guard.py: an unmarked test that imports the ML toolchain fails, however it gets there.

The plugin runs in a pytester session whose ``ml_modules`` names a fake
package, ``fakeheavy``, so no torch is needed. Each way of reaching it is one
inner test; without the plugin they would all pass, so this test fails if the
plugin stops flagging any of them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import ml_guard

pytest_plugins = ["pytester"]

HELPERS = {
    "fakeheavy": "VALUE = 42\n",
    # imports the heavy package only when called (as step plugins do)
    "lazyuser": "def use():\n    import fakeheavy\n    return fakeheavy.VALUE\n",
    # imports it at module level: once loaded, it holds fakeheavy without importing it again
    "eageruser": "import fakeheavy\n\ndef use():\n    return fakeheavy.VALUE\n",
}

TESTS = '''
import importlib
import os
import subprocess
import sys

import pytest

import lazyuser

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.ml
def test_marked_loads_everything_first():
    import eageruser
    import fakeheavy

    assert fakeheavy.VALUE == eageruser.use() == lazyuser.use() == 42


def test_unmarked_imports_in_its_body():
    import fakeheavy  # noqa: F401


def test_unmarked_calls_a_helper_that_imports_it():
    assert lazyuser.use() == 42


def test_unmarked_uses_a_loaded_module_that_holds_it():
    name = "eager" + "user"  # invisible to the static scan: only the run-time check sees it
    assert importlib.import_module(name).use() == 42


def test_unmarked_swallows_the_import_error():
    try:
        lazyuser.use()
    except ImportError:
        pytest.skip("fakeheavy is not installed")


def test_unmarked_importorskip():
    pytest.importorskip("fake" + "heavy")


def test_unmarked_child_process_imports_it():
    subprocess.run([sys.executable, "-c", "import fakeheavy"], cwd=HERE, check=True)


@pytest.fixture
def heavy_fixture():
    return lazyuser.use()


def test_unmarked_fixture_imports_it(heavy_fixture):
    pass


def test_unmarked_light():
    import json

    assert json.loads("[1]") == [1] and lazyuser.__name__ == "lazyuser"
    subprocess.run([sys.executable, "-c", "import json"], cwd=HERE, check=True)


@pytest.mark.ml
def test_marked_child_process():
    subprocess.run([sys.executable, "-c", "import fakeheavy"], cwd=HERE, check=True)


@pytest.mark.ml
def test_marked_after_the_unmarked_ones_still_sees_it():
    import eageruser

    assert lazyuser.use() == eageruser.use() == 42 and "fakeheavy" in sys.modules
'''

MODULE_LEVEL = '''
import pytest

import eageruser  # imports fakeheavy at module level


def test_unmarked_in_a_module_that_imports_it():
    pass


@pytest.mark.ml
def test_marked_in_that_module():
    assert eageruser.use() == 42
'''


def _outcomes(pytester, *args, **extra_files):
    """Run the inner session: ({test name: (outcome, message)} from its JUnit XML, its result)."""
    pytester.makeconftest(Path(ml_guard.__file__).read_text())
    pytester.makeini("[pytest]\nml_modules = fakeheavy\n")
    pytester.makepyfile(**HELPERS)
    pytester.makepyfile(test_a=TESTS, test_b=MODULE_LEVEL, **extra_files)
    xml = pytester.path / "report.xml"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--junitxml={xml}", *args, timeout=300)
    found = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, child.get("message", "")
                break
        found[case.get("name")] = (outcome, message)
    return found, result


@pytest.mark.slow
def test_the_guard_flags_every_unmarked_use_and_only_those(pytester):
    got, _ = _outcomes(pytester)
    bad = {
        "test_unmarked_imports_in_its_body": "imports fakeheavy (test_a.py line",
        "test_unmarked_calls_a_helper_that_imports_it": "its call imports the ML toolchain: fakeheavy (imported at",
        "test_unmarked_uses_a_loaded_module_that_holds_it": "its call imports the ML toolchain: eageruser",
        "test_unmarked_swallows_the_import_error": "its call imports the ML toolchain: fakeheavy",
        "test_unmarked_importorskip": "its call imports the ML toolchain: fakeheavy",
        "test_unmarked_child_process_imports_it": "fakeheavy (python -c) in a child process",
        "test_unmarked_in_a_module_that_imports_it": "imports fakeheavy when test_b.py is imported (eageruser -> fakeheavy)",
    }
    good = ["test_marked_loads_everything_first", "test_unmarked_light", "test_marked_child_process",
            "test_marked_after_the_unmarked_ones_still_sees_it", "test_marked_in_that_module"]
    for name, text in bad.items():
        outcome, message = got[name]
        assert outcome == "failure" and "is not marked ml" in message and text in message, (name, got[name])
    outcome, message = got["test_unmarked_fixture_imports_it"]
    assert outcome == "error" and "its setup imports the ML toolchain: fakeheavy" in message, message
    assert {name: got[name] for name in good} == {name: ("passed", "") for name in good}
    assert len(got) == len(bad) + 1 + len(good)


@pytest.mark.slow
def test_the_subset_without_ml_is_the_same_verdict_and_skips_ml_modules(pytester):
    """-m "not ml" deselects the marked tests; the unmarked offenders still fail; and a
    module marked ml as a whole is not even imported (its import would fail here)."""
    got, result = _outcomes(pytester, "-m", "not ml and not slow",
                    test_c="import pytest\nimport no_such_module_here\n\npytestmark = pytest.mark.ml\n\n"
                           "def test_never_collected():\n    pass\n")
    assert "test_marked_loads_everything_first" not in got and "test_never_collected" not in got
    assert got["test_unmarked_imports_in_its_body"][0] == "failure"
    assert got["test_unmarked_in_a_module_that_imports_it"][0] == "failure"
    assert got["test_unmarked_light"] == ("passed", "")
    assert all(outcome != "error" or name == "test_unmarked_fixture_imports_it" for name, (outcome, _) in got.items())
    result.stdout.fnmatch_lines(["ml_guard: 1 test modules marked ml were not imported *"])


def test_this_repository_guards_the_real_toolchain(pytestconfig):
    assert {"torch", "executorch", "coremltools", "torchao", "transformers"} <= set(pytestconfig.getini("ml_modules"))
    assert pytestconfig.stash[ml_guard._KEY].heavy == frozenset(pytestconfig.getini("ml_modules"))
