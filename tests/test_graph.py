"""Graph building: every recipe mistake is caught before anything runs."""

from __future__ import annotations

import pytest

from modelbuild.errors import RecipeError
from modelbuild.graph import BuildGraph
from modelbuild.plugins import Registry
from modelbuild.recipe import load_recipes


def graph(project, text):
    project.recipe(text)
    return BuildGraph.build(load_recipes(project.root / "recipes", root=project.root), Registry.discover())


def error(project, text) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        graph(project, text)
    assert info.value.file == "recipes/main.toml"
    assert "\n" not in str(info.value)
    return info.value


def test_closure_is_ancestors_in_order(chain):
    g = BuildGraph.build(load_recipes(chain.root / "recipes", root=chain.root), Registry.discover())
    assert g.closure(["b"]) == ["a", "b"]
    assert g.closure(["c"]) == ["a", "b", "c"]
    assert g.resolve_names([]) == ["c"]


def test_unknown_step_suggests(project):
    err = error(project, "[targets.x]\nstep = 'comand'\n")
    assert err.key == "targets.x.step" and err.suggestion == "command"


def test_unknown_param_suggests(project):
    err = error(project, "[targets.x]\nstep = 'command'\ncommand = 'x'\nout = ['a']\n")
    assert err.key == "targets.x.out" and err.suggestion == "outs"


def test_param_type_error_names_key(project):
    err = error(project, "[targets.x]\nstep = 'command'\ncommand = 'x'\ntimeout_s = 'soon'\n")
    assert err.key == "targets.x.timeout_s"


def test_unknown_input_target_suggests(project):
    err = error(project, "[targets.alpha]\nstep = 'command'\ncommand = 'x'\n[targets.b]\nstep = 'command'\ncommand = 'x'\ninputs = { s = 'alpah' }\n")
    assert err.key == "targets.b.inputs.s" and err.suggestion == "alpha"


def test_cycle_names_every_target(project):
    err = error(project, """
        [targets.a]
        step = "command"
        command = "x"
        inputs = { s = "c" }
        [targets.b]
        step = "command"
        command = "x"
        inputs = { s = "a" }
        [targets.c]
        step = "command"
        command = "x"
        inputs = { s = "b" }
    """)
    assert "cycle" in str(err)
    for name in "abc":
        assert name in str(err).split("cycle:")[1]


def test_step_check_errors_get_full_key(project):
    err = error(project, "[targets.x]\nstep = 'command'\ncommand = 'x'\nouts = ['../escape']\n")
    assert err.key == "targets.x.outs[0]"
    assert "inside the step's output directory" in str(err)


def test_kind_mismatch_is_a_recipe_error(project):
    """A step whose slot needs one kind, fed another, fails at graph time."""
    err = error(project, """
        [targets.files]
        step = "command"
        command = "x"
        [targets.pte]
        step = "lower"
        inputs = { program = "files" }
    """)
    assert "needs exported-program" in str(err) and "produces files" in str(err)
    assert err.key == "targets.pte.inputs.program"


def test_single_slot_shorthand_and_wrong_slot(project):
    err = error(project, """
        [targets.files]
        step = "command"
        command = "x"
        [targets.pte]
        step = "lower"
        inputs = { progam = "files" }
    """)
    assert "no input slot 'progam'" in str(err) and err.suggestion == "program"
