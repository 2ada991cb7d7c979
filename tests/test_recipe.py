"""Recipe loading: variables, extends, overrides, and one-line errors naming file and key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelbuild.errors import RecipeError
from modelbuild.recipe import load_recipes, parse_override


def load(project, text, overrides=None, name="main.toml"):
    project.recipe(text, name)
    return load_recipes(project.root / "recipes", overrides=overrides, root=project.root)


def test_params_vars_and_typed_substitution(project):
    r = load(project, """
        [vars]
        gs = 32
        name = "tiny"
        [targets.q]
        step = "command"
        command = "echo ${name}-${gs}"
        outs = ["x"]
        env = { GS = "${gs}" }
        [targets.q2]
        step = "command"
        command = "true"
        timeout_s = "${gs}"
    """)
    assert r.targets["q"].params["command"] == "echo tiny-32"
    assert r.targets["q2"].params["timeout_s"] == 32  # a whole-string reference keeps the type


def test_extends_overrides_params_and_inputs(project):
    r = load(project, """
        [targets.base]
        step = "command"
        command = "a"
        outs = ["x"]
        description = "base"
        [targets.other]
        step = "command"
        command = "b"
        [targets.variant]
        extends = "base"
        command = "c"
        inputs = { src = "other" }
    """)
    v = r.targets["variant"]
    assert v.step == "command"
    assert v.params == {"command": "c", "outs": ["x"]}
    assert v.inputs == {"src": "other"}
    assert v.description == "base"


def test_set_overrides_params_vars_and_inputs(project):
    r = load(project, """
        [vars]
        n = 1
        [targets.t]
        step = "command"
        command = "echo ${n}"
        outs = ["a"]
    """, overrides=["vars.n=7", "targets.t.outs=['b']", "targets.t.inputs.src=t"])
    assert r.targets["t"].params["command"] == "echo 7"
    assert r.targets["t"].params["outs"] == ["b"]
    assert r.targets["t"].inputs == {"src": "t"}


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("[targets.t]\ncommand = 'x'\n", "targets.t.step", "missing 'step'"),
        ("[targets.t]\nstep = 'command'\nextends = 'nope'\n", "targets.t.extends", "extends unknown target"),
        ("[targets.a]\nextends = 'b'\n[targets.b]\nextends = 'a'\n", "extends", "cycle"),
        ("[targets.t]\nstep = 'command'\ncommand = '${missing}'\n", "targets.t.command", "unknown variable"),
        ("[target.t]\nstep = 'command'\n", "target", "unknown key"),
        ("[targets.t]\nstep = 'command'\ninputs = 3\n", "targets.t.inputs", ""),
        ("default = 'nope'\n[targets.t]\nstep = 'command'\ncommand = 'x'\n", "default", "not defined"),
        ("[targets.'bad name']\nstep = 'command'\n", "targets.bad name", "target names"),
        ("vars = 3\n", "vars", "must be a table"),
        ("default = 1\n", "default", "must be a string"),
        ("targets = 'x'\n", "targets", "must be a table"),
        ("[targets]\nt = 1\n", "targets.t", "must be a table"),
        ("[targets.t]\nstep = 7\n", "targets.t.step", "must be a string (got an integer 7)"),
        ("[targets.t]\nstep = 'command'\ndescription = ['a']\n", "targets.t.description", "must be a string"),
        ("[targets.t]\nstep = 'command'\ninputs = { src = [1] }\n", "targets.t.inputs.src", "target name"),
    ],
)
def test_errors_name_file_and_key(project, text, key, fragment):
    with pytest.raises(RecipeError) as info:
        load(project, text)
    err = info.value
    assert err.file == "recipes/main.toml"
    assert key in (err.key or "")
    assert fragment in str(err)
    assert "\n" not in str(err)


def test_suggestions(project):
    with pytest.raises(RecipeError) as info:
        load(project, "[vars]\nseq = 1\n[targets.t]\nstep = 'command'\ncommand = '${sqe}'\n")
    assert info.value.suggestion == "seq"
    with pytest.raises(RecipeError) as info:
        load(project, "[target.t]\nstep = 'command'\n")
    assert info.value.suggestion == "targets"


def test_invalid_toml_and_unreadable(project):
    with pytest.raises(RecipeError, match=r"recipes/main.toml: invalid TOML"):
        load(project, "[targets.t\n")
    bad = project.root / "recipes" / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RecipeError, match="bin.toml"):
        load_recipes(project.root / "recipes", root=project.root)


def test_duplicate_targets_across_files(project):
    project.recipe("[targets.t]\nstep = 'command'\ncommand = 'x'\n", "a.toml")
    with pytest.raises(RecipeError) as info:
        load(project, "[targets.t]\nstep = 'command'\ncommand = 'y'\n", name="b.toml")
    assert "duplicate target 't'" in str(info.value)
    assert "recipes/a.toml" in str(info.value) and info.value.file == "recipes/b.toml"


def test_conflicting_default_and_vars(project):
    project.recipe("default = 't'\n[vars]\nx = 1\n[targets.t]\nstep = 'command'\ncommand = 'x'\n", "a.toml")
    with pytest.raises(RecipeError, match="variable 'x'"):
        load(project, "[vars]\nx = 2\n", name="b.toml")
    (project.root / "recipes" / "b.toml").write_text("default = 't'\n")
    with pytest.raises(RecipeError, match="default target is already set"):
        load_recipes(project.root / "recipes", root=project.root)


def test_bad_override(project):
    project.recipe("[targets.t]\nstep = 'command'\ncommand = 'x'\n")
    for text, fragment in [("nokey", "KEY=VALUE"), ("foo.t.x=1", "vars.NAME"), ("targets.tt.x=1", "unknown target 'tt'")]:
        with pytest.raises(RecipeError, match=fragment):
            load_recipes(project.root / "recipes", overrides=[text], root=project.root)


@given(st.one_of(st.integers(), st.booleans(), st.text(alphabet="abcxyz_-", min_size=1)))
def test_override_values_round_trip(value):
    import json

    raw = json.dumps(value) if not isinstance(value, str) else value
    if isinstance(value, bool):
        raw = "true" if value else "false"
    parts, parsed = parse_override(f"targets.t.p={raw}")
    assert parts == ["targets", "t", "p"]
    assert parsed == value


def test_set_of_an_undefined_variable_is_an_error_with_the_closest_name(project):
    """`--set vars.NAME=...` for a name no recipe defines did nothing, silently."""
    text = "[vars]\nseq_len = 1\n[targets.t]\nstep = 'command'\ncommand = 'echo ${seq_len}'\n"
    with pytest.raises(RecipeError) as info:
        load(project, text, overrides=["vars.seq=2"])
    err = info.value
    assert err.suggestion == "seq_len"
    assert "--set 'vars.seq=2'" in str(err) and "no recipe defines variable 'seq'" in str(err)
    # Without any [vars] at all: still an error, and it says so.
    with pytest.raises(RecipeError, match="no recipe defines any variables"):
        load(project, "[targets.t]\nstep = 'command'\ncommand = 'x'\n", overrides=["vars.x=1"])
    # A defined one is taken.
    assert load(project, text, overrides=["vars.seq_len=7"]).targets["t"].params["command"] == "echo 7"


def test_set_of_an_unknown_parameter_names_the_key_and_the_closest_parameter(project):
    from modelbuild.api import plan

    project.recipe("[targets.t]\nstep = 'command'\ncommand = 'true'\n")
    with pytest.raises(RecipeError) as info:
        plan(["t"], project=project.root, overrides=["targets.t.comand=x"])
    err = info.value
    assert err.key == "targets.t.comand" and err.suggestion == "command"
    assert "unknown parameter 'comand' for step 'command'" in str(err)


def test_reference_doc_sets_only_variables_a_shipped_recipe_defines():
    """docs/recipe-reference.md once showed `--set vars.seq`, which no shipped recipe has."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shipped = load_recipes(root / "recipes", root=root)
    doc = (root / "docs" / "recipe-reference.md").read_text()
    examples = [e for line in re.findall(r"^modelbuild .*$", doc, re.M) for e in re.findall(r"--set (\S+)", line)]
    assert any(e.startswith("vars.") for e in examples)
    for example in examples:
        load_recipes(root / "recipes", overrides=[example], root=root)  # raises on an unknown name
    assert shipped.targets
