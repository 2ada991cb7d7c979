"""``list_targets``, ``list_steps`` and ``schema``: what a project and its plugins offer.

Example::

    for t in list_targets():
        print(t["name"], t["step"], t["description"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipe import VAR_REFERENCE
from .workspace import Workspace

__all__ = ["list_targets", "list_steps", "schema"]


def list_targets(*, project: Path | str | None = None, recipes: Path | str | None = None, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    ws = Workspace.locate(project, recipes=recipes)
    g = ws.graph(overrides)
    return [
        {
            "name": name,
            "step": node.step_name,
            "kind": node.kind,
            "description": node.target.description,
            "file": node.target.file,
            "default": name == g.recipes.default,
        }
        for name, node in sorted(g.nodes.items())
    ]


def list_steps() -> list[dict[str, Any]]:
    """Every installed step plugin with its inputs, output, requirements and parameters."""
    from ..plugins import Registry

    steps = []
    for info in Registry.discover():
        cls = info.cls
        params = []
        for name, f in cls.Params.model_fields.items():
            default = None if f.is_required() else f.get_default(call_default_factory=True)
            params.append(
                {
                    "name": name,
                    "type": _type_name(f.annotation),
                    "required": f.is_required(),
                    "default": default,
                    "description": f.description or "",
                    "judge": name in cls.judge_params,
                }
            )
        steps.append(
            {
                "name": info.name,
                "entry": info.entry,
                "dist": info.dist,
                "version": cls.version,
                "description": cls.description,
                "inputs": {s: {"kinds": list(i.kinds), "optional": i.optional, "many": i.many} for s, i in cls.inputs.items()},
                "output": cls.output,
                "requires": {"platforms": list(cls.requires.platforms), "tools": list(cls.requires.tools)},
                "toolchain": list(cls.toolchain),
                "params": params,
            }
        )
    return steps


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def schema() -> dict[str, Any]:
    """JSON Schema of a recipe file, with one target variant per installed step.

    It accepts what :func:`modelbuild.recipe.load_recipes` accepts: a target
    with ``extends`` may leave out ``step`` and the required parameters (its
    base has them), and any value may be a whole-string ``"${name}"``
    reference, which takes the variable's type. Unknown keys and mistyped
    values are still rejected. A test validates every shipped recipe with it.
    """
    from pydantic import ConfigDict, Field, create_model

    from ..plugins import Registry

    variants = []
    for info in Registry.discover():
        cls = info.cls
        fields: dict[str, Any] = {
            "step": (str | None, Field(None, json_schema_extra={"const": info.name})),
            "description": (str | None, None),
            "extends": (str | None, None),
            "inputs": (dict[str, str | list[str]] | str | None, None),
        }
        required = []
        for name, f in cls.Params.model_fields.items():
            fields[name] = (f.annotation, f)
            if f.is_required():
                required.append(name)
        model = create_model(f"Target_{info.name}", __config__=ConfigDict(extra="forbid"), **fields)
        variant = model.model_json_schema()
        variant["properties"]["step"] = {"const": info.name, "description": "the step plugin"}
        # Either a complete target, or a variant whose base supplies the step
        # and the required parameters.
        variant.pop("required", None)
        variant["anyOf"] = [{"required": ["step", *required]}, {"required": ["extends"]}]
        variants.append(variant)
    defs: dict[str, Any] = {}
    refs = []
    for v in variants:
        defs.update(v.pop("$defs", {}))
        defs[v["title"]] = v
        refs.append({"$ref": f"#/$defs/{v['title']}"})
    for name, definition in defs.items():
        _allow_variables(definition)
    defs[_VARIABLE] = {
        "type": "string",
        "pattern": f"^{VAR_REFERENCE}$",
        "description": 'a whole-string "${name}" reference: takes the type of the variable',
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "modelbuild recipe",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "default": {"type": "string", "description": "the default target"},
            "vars": {"type": "object", "description": "variables for ${name} substitution"},
            "targets": {"type": "object", "additionalProperties": {"anyOf": refs}},
        },
        "$defs": defs,
    }


_VARIABLE = "VariableReference"
_META = ("title", "description", "default", "examples")


def _allow_variables(node: dict[str, Any]) -> None:
    """Let every value position under ``node`` also hold a ``"${name}"`` reference (in place).

    Variables are substituted before parameters are checked, so a reference
    stands for a value of any type; plain strings accept one already.
    """
    for key in ("properties", "patternProperties", "$defs"):
        for name, child in list(node.get(key, {}).items()):
            node[key][name] = _with_variable(child)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _with_variable(node[key])
    if isinstance(node.get("prefixItems"), list):
        node["prefixItems"] = [_with_variable(c) for c in node["prefixItems"]]
    for key in ("anyOf", "oneOf", "allOf"):
        for child in node.get(key, []):
            if isinstance(child, dict):
                _allow_variables(child)


def _with_variable(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    _allow_variables(node)
    ref = {"$ref": f"#/$defs/{_VARIABLE}"}
    if node.get("type") == "string" and not any(k in node for k in ("enum", "const", "pattern", "format")):
        return node  # any string, so a reference already
    if "anyOf" in node:
        if ref not in node["anyOf"]:
            node["anyOf"].append(ref)
        return node
    meta = {k: node.pop(k) for k in _META if k in node}
    return {**meta, "anyOf": [node, ref]}
