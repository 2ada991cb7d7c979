"""Parameters that once did nothing: each now works as written or is a recipe error naming its key."""

from __future__ import annotations

import pytest

from modelbuild.errors import RecipeError
from modelbuild.steps.export import ExportStep


# -- command: the one-slot shorthand `inputs = "a"` ------------------------------------


def test_command_shorthand_input_is_exposed_as_MODELBUILD_INPUT(project):
    """`inputs = "a"` used to become the slot `*` and the variable MODELBUILD_INPUT_*, which no shell can read."""
    project.recipe("""
        [targets.a]
        step = "command"
        command = "echo hello > $MODELBUILD_OUT/x"
        [targets.b]
        step = "command"
        inputs = "a"
        command = "cat $MODELBUILD_INPUT/x > $MODELBUILD_OUT/y; cat {input}/x >> $MODELBUILD_OUT/y"
        outs = ["y"]
    """)
    result = project.build("b")
    assert result.ok, {n: r.reason for n, r in result.targets.items()}
    assert (project.out / "b" / "y").read_text() == "hello\nhello\n"


def test_command_named_slots_keep_their_variables(project):
    project.recipe("""
        [targets.a]
        step = "command"
        command = "echo hi > $MODELBUILD_OUT/x"
        [targets.b]
        step = "command"
        inputs = { my-src = "a" }
        command = "cat $MODELBUILD_INPUT_MY_SRC/x {inputs[my-src]}/x > $MODELBUILD_OUT/y"
    """)
    result = project.build("b")
    assert result.ok, {n: r.reason for n, r in result.targets.items()}
    assert (project.out / "b" / "y").read_text() == "hi\nhi\n"


@pytest.mark.parametrize("slot", ["my.src", "1st", "a b"])
def test_command_slot_that_cannot_be_an_environment_variable_is_a_recipe_error(project, slot):
    project.recipe(f"""
        [targets.a]
        step = "command"
        command = "true"
        [targets.b]
        step = "command"
        inputs = {{ "{slot}" = "a" }}
        command = "true"
    """)
    with pytest.raises(RecipeError) as info:
        project.build("b")
    err = info.value
    assert err.file == "recipes/main.toml" and err.key == f"targets.b.inputs.{slot}"
    assert "MODELBUILD_INPUT_" in err.message


# -- export: max_seq_len on a module export --------------------------------------------


def test_max_seq_len_on_a_module_export_is_a_recipe_error_naming_the_key(project):
    """It was accepted, entered the key, and changed nothing in the program."""
    project.recipe("""
        [targets.m]
        step = "export"
        module = "mymodels.mlp:make"
        max_seq_len = 64
    """)
    with pytest.raises(RecipeError) as info:
        project.build("m")
    err = info.value
    assert err.file == "recipes/main.toml" and err.key == "targets.m.max_seq_len"
    assert "applies only to LLM" in err.message


def test_max_seq_len_still_applies_to_an_llm_export():
    step = ExportStep()
    step.check(ExportStep.Params(max_seq_len=64), {"checkpoint": "checkpoint"})
    # The default (not set) is fine on a module export.
    step.check(ExportStep.Params(module="a.b:f"), {})
