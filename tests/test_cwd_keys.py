"""Action keys depend on the project, never on the directory the command was started from."""

from __future__ import annotations

import pytest
import json

from tests.conftest import run_cli

RECIPE = """
[targets.pkg]
step = "export"
module = "mymodels:make"
example_inputs = [{ shape = [2, 4] }]

[targets.mod]
step = "export"
module = "mymodels.mlp:make"
example_inputs = [{ shape = [2, 4] }]

[targets.cmd]
step = "command"
command = "cat {project}/data.txt > $MODELBUILD_OUT/x"
deps = ["data.txt"]
"""


def _keys(project, cwd) -> dict[str, tuple[str, str | None]]:
    p = run_cli("plan", "pkg", "mod", "cmd", "--project", str(project.root), "--json", cwd=cwd)
    assert p.returncode == 0, p.stderr
    return {r["target"]: (r["decision"], r["key"]) for r in json.loads(p.stdout)["rows"]}


@pytest.mark.slow
def test_same_keys_from_the_project_and_from_elsewhere(project, tmp_path):
    project.recipe(RECIPE)
    project.file("data.txt", "data\n")
    project.file("mymodels/__init__.py", "def make():\n    raise NotImplementedError\n")
    project.file("mymodels/mlp.py", "def make():\n    raise NotImplementedError\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = _keys(project, project.root)
    there = _keys(project, elsewhere)
    assert here == there
    assert all(decision == "miss" and key for decision, key in here.values()), here
    # The module's own project file is in the key (it is what runs): editing it changes the key,
    # seen from anywhere.
    project.file("mymodels/__init__.py", "def make():\n    raise RuntimeError('edited')\n")
    edited = _keys(project, elsewhere)
    assert edited["pkg"][1] != here["pkg"][1]
    assert edited["mod"] == here["mod"] and edited["cmd"] == here["cmd"]
    assert _keys(project, project.root) == edited
