"""Generate docs/steps.md from the installed step plugins' ``Params`` models.

Run from the project root::

    .venv/bin/python docs/gen_steps.py          # rewrite docs/steps.md
    .venv/bin/python docs/gen_steps.py --check  # exit 1 if docs/steps.md is stale

Only step modules are imported (they are light by contract), never torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from modelbuild.plugins import Registry

OUT = Path(__file__).with_name("steps.md")

HEADER = """# Steps

Every step a recipe can name, with its inputs, its output kind and its
parameters. Generated from the plugins' `Params` models by `docs/gen_steps.py`
(do not edit by hand; rerun it after changing a step's parameters).
Unknown parameter keys are recipe errors.
"""


def _type_name(annotation: Any) -> str:
    """``Literal["a", "b"]`` -> ``"a" | "b"``; ``int | None`` -> ``int | None``; else the plain name."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else f"`{json.dumps(field.default_factory())}`"
    value = field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(registry: Registry) -> str:
    parts = [HEADER]
    for info in registry:
        cls = info.cls
        parts.append(f"\n## `{info.name}`\n\n{cls.description or cls.__doc__ or ''}\n")
        if cls.inputs:
            parts.append("Inputs:\n")
            for slot, spec in cls.inputs.items():
                flags = [f for f, on in (("optional", spec.optional), ("many", spec.many)) if on]
                extra = f" ({', '.join(flags)})" if flags else ""
                doc = f": {spec.doc}" if spec.doc else ""
                parts.append(f"- `{slot}`: {' | '.join(spec.kinds)}{extra}{doc}")
            parts.append("")
        parts.append(f"Output: `{cls.output}`\n")
        fields = cls.Params.model_fields
        if not fields:
            parts.append("No parameters.\n")
            continue
        parts.append("| parameter | type | default | description |")
        parts.append("|---|---|---|---|")
        for name, field in fields.items():
            parts.append(
                f"| `{name}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} "
                f"| {_cell(field.description or '')} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/steps.md is out of date")
    args = parser.parse_args(argv)
    text = render(Registry.discover())
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date; run: python docs/gen_steps.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
