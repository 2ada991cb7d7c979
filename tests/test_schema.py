"""`modelbuild schema`: the JSON Schema accepts every shipped recipe and still catches mistakes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest

from modelbuild.api import schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(scope="module")
def validator():
    doc = schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def _errors(validator, recipe: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(recipe)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_validates(validator, path):
    assert _errors(validator, tomllib.loads(path.read_text())) == []


def test_shipped_recipes_use_extends_and_variables():
    """The two features the schema used to reject are really exercised above."""
    text = "".join(p.read_text() for p in SHIPPED)
    assert "extends = " in text and '= "${' in text


def test_extends_without_step_and_variables_in_typed_fields(validator):
    recipe = tomllib.loads(
        """
        [vars]
        gs = 64
        [targets.q]
        step = "quantize"
        inputs = { program = "e" }
        linear = "8da4w"
        group_size = "${gs}"
        [targets.q2]
        extends = "q"
        group_size = 128
        [targets.c]
        step = "command"
        command = "true"
        timeout_s = "${t}"
        outs = ["${name}.bin"]
        """
    )
    assert _errors(validator, recipe) == []


@pytest.mark.parametrize(
    "recipe",
    [
        {"targets": {"q": {"step": "quantize", "grup_size": 32}}},  # unknown parameter
        {"targets": {"q": {"step": "quantize", "group_size": "many"}}},  # not an integer nor a ${var}
        {"targets": {"q": {"step": "quantize", "group_size": "${gs"}}},  # not a whole reference
        {"targets": {"q": {"step": "no-such-step"}}},
        {"targets": {"q": {"extends": "p", "grup_size": 32}}},  # a variant: still no unknown keys
        {"targets": {"q": {"extends": 3}}},
        {"target": {}},
    ],
)
def test_mistakes_are_still_rejected(validator, recipe):
    assert _errors(validator, recipe) != []
