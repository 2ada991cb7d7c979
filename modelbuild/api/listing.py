"""``list_targets``, ``list_steps`` and ``schema``: what a project and its plugins offer.

Example::

    for t in list_targets():
        print(t["name"], t["step"], t["description"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .workspace import Workspace

__all__ = ["list_targets", "list_steps", "schema"]


def list_targets(*, project: Path | str | None = None, recipes: Path | str | None = None, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    ws = Workspace.locate(project, recipes=recipes)
    g = ws.graph(overrides)
    return [
        {
            "name": name,
            "step": node.step.name,
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
    """JSON Schema of a recipe file, with one target variant per installed step."""
    from pydantic import ConfigDict, Field, create_model

    from ..plugins import Registry

    variants = []
    for info in Registry.discover():
        cls = info.cls
        fields: dict[str, Any] = {
            "step": (str, Field(json_schema_extra={"const": info.name})),
            "description": (str | None, None),
            "extends": (str | None, None),
            "inputs": (dict[str, str | list[str]] | str | None, None),
        }
        for name, f in cls.Params.model_fields.items():
            fields[name] = (f.annotation, f)
        model = create_model(f"Target_{info.name}", __config__=ConfigDict(extra="forbid"), **fields)
        variants.append(model.model_json_schema())
    defs: dict[str, Any] = {}
    refs = []
    for v in variants:
        defs.update(v.pop("$defs", {}))
        defs[v["title"]] = v
        refs.append({"$ref": f"#/$defs/{v['title']}"})
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
