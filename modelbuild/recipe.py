"""Loading recipes: TOML files -> validated, resolved :class:`Target` values.

A recipe file holds an optional ``default`` target name, optional ``[vars]``
and ``[targets.NAME]`` tables. In a target, ``step``, ``inputs``,
``extends`` and ``description`` are reserved; every other key is a parameter
of the step (checked later against the step's ``Params`` model, see graph.py).

Resolution order: parse every file, apply ``--set`` overrides, substitute
``${var}`` references, then resolve ``extends`` chains.

Example::

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.toml").write_text('[targets.hello]\\nstep = "command"\\ncommand = "true"\\n')
    >>> recipes = load_recipes(d)
    >>> recipes.targets["hello"].params
    {'command': 'true'}
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError, closest

__all__ = ["Target", "Recipes", "load_recipes", "recipe_files", "parse_override", "RESERVED_KEYS"]

RESERVED_KEYS = ("step", "inputs", "extends", "description")
#: A ``${name}`` reference (the JSON Schema of ``modelbuild schema`` uses it too).
VAR_REFERENCE = r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}"
_VAR = re.compile(VAR_REFERENCE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class _TargetTable:
    """The reserved keys of a target table; everything else (``extra``) passes as params."""

    step: str | None
    inputs: dict[str, str | list[str]] | str | None
    extends: str | None
    description: str | None
    extra: dict[str, Any]


@dataclass(frozen=True)
class _RecipeFile:
    default: str | None
    vars: dict[str, Any]
    targets: dict[str, dict[str, Any]]


# The two shapes above are checked by hand rather than by pydantic models:
# building a model class costs more than the rest of recipe loading, and every
# build, a no-op included, loads the recipes.


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _optional_str(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise _ShapeError(f"{where}{key}", f"must be a string (got {_type_name(value)} {value!r})")
    return value


class _ShapeError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def _recipe_file(data: dict[str, Any]) -> _RecipeFile:
    for key in data:
        if key not in ("default", "vars", "targets"):
            raise _ShapeError(key, "unknown key")
    default = _optional_str(data, "default", "")
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise _ShapeError("vars", f"must be a table (got {_type_name(variables)})")
    targets = data.get("targets", {})
    if not isinstance(targets, dict):
        raise _ShapeError("targets", f"must be a table of target tables (got {_type_name(targets)})")
    for name, table in targets.items():
        if not isinstance(table, dict):
            raise _ShapeError(f"targets.{name}", f"must be a table (got {_type_name(table)})")
    return _RecipeFile(default=default, vars=variables, targets=targets)


def _target_table(table: dict[str, Any]) -> _TargetTable:
    inputs = table.get("inputs")
    if inputs is not None and not isinstance(inputs, str):
        if not isinstance(inputs, dict):
            raise _ShapeError("inputs", "must be a target name or a table of slot = target name(s) "
                              f"(got {_type_name(inputs)} {inputs!r})")
        for slot, names in inputs.items():
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                continue
            if not isinstance(names, str):
                raise _ShapeError(f"inputs.{slot}", f"must be a target name or a list of them (got {names!r})")
    return _TargetTable(
        step=_optional_str(table, "step", ""),
        inputs=inputs,
        extends=_optional_str(table, "extends", ""),
        description=_optional_str(table, "description", ""),
        extra={k: v for k, v in table.items() if k not in RESERVED_KEYS},
    )


@dataclass(frozen=True)
class Target:
    """A resolved target: which step, fed by which targets, with which params."""

    name: str
    step: str
    inputs: dict[str, str | list[str]]
    params: dict[str, Any]
    description: str
    file: str  # the recipe file, relative to the project root when possible

    @property
    def key_path(self) -> str:
        return f"targets.{self.name}"

    def input_names(self) -> list[str]:
        names: list[str] = []
        for value in self.inputs.values():
            names.extend(value if isinstance(value, list) else [value])
        return names


@dataclass
class Recipes:
    """Every target of a project, plus where each came from."""

    root: Path
    targets: dict[str, Target] = field(default_factory=dict)
    default: str | None = None
    files: list[Path] = field(default_factory=list)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"targets.x.group_size=64"`` -> (["targets", "x", "group_size"], 64).

    The value is read as a TOML value when it parses as one, else as a string.

    >>> parse_override("vars.name=tiny")
    (['vars', 'name'], 'tiny')
    >>> parse_override("targets.q.group_size=64")
    (['targets', 'q', 'group_size'], 64)
    """
    import tomllib  # here, not at module level: a graph from the bound-graph cache parses no TOML

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. targets.NAME.param=VALUE")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.strip().split(".")
    if parts[0] not in ("vars", "targets") or (parts[0] == "targets" and len(parts) < 3) or len(parts) < 2:
        raise RecipeError(f"--set {text!r}: the key must be vars.NAME or targets.NAME.KEY")
    return parts, value


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read_file(path: Path, root: Path, raw: bytes | None = None) -> _RecipeFile:
    import tomllib

    shown = _relative(path, root)
    try:
        text = (path.read_bytes() if raw is None else raw).decode("utf-8")
        data = tomllib.loads(text.replace("\r\n", "\n").replace("\r", "\n"))  # as read_text() reads it
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror or exc}", file=shown) from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe is not UTF-8 text ({exc.reason})", file=shown) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"invalid TOML: {exc}", file=shown) from exc
    try:
        return _recipe_file(data)
    except _ShapeError as exc:
        suggestion = closest(exc.key, ["default", "vars", "targets"]) if exc.message == "unknown key" else None
        raise RecipeError(exc.message, file=shown, key=exc.key, suggestion=suggestion) from None


def _substitute(value: Any, variables: dict[str, Any], file: str, key: str) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), variables, file, key)
        return _VAR.sub(lambda m: str(_lookup(m.group(1), variables, file, key)), value)
    if isinstance(value, list):
        return [_substitute(v, variables, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, file, f"{key}.{k}") for k, v in value.items()}
    return value


def _lookup(name: str, variables: dict[str, Any], file: str, key: str) -> Any:
    if name not in variables:
        raise RecipeError(f"unknown variable '${{{name}}}'", file=file, key=key, suggestion=closest(name, variables))
    return variables[name]


def recipe_files(recipes_dir: Path) -> list[Path]:
    """The recipe files of a project: every ``*.toml`` under ``recipes_dir``, sorted, recursive."""
    return sorted(Path(recipes_dir).rglob("*.toml"))


def load_recipes(
    recipes_dir: Path,
    overrides: list[str] | None = None,
    root: Path | None = None,
    *,
    texts: dict[Path, bytes] | None = None,
) -> Recipes:
    """Load and resolve every ``*.toml`` under ``recipes_dir`` (sorted, recursive).

    ``texts`` (file -> bytes) gives the files and their content as the caller
    read them, so that what is parsed is exactly what the caller hashed (the
    bound-graph cache keys the graph by them: graph_cache.py).
    """
    recipes_dir = Path(recipes_dir)
    root = Path(root) if root is not None else recipes_dir.parent
    if not recipes_dir.is_dir():
        raise RecipeError(f"no recipes directory at {recipes_dir} (use --project or --recipes)")
    files = recipe_files(recipes_dir) if texts is None else sorted(texts)
    parsed: list[tuple[str, _RecipeFile]] = [
        (_relative(p, root), _read_file(p, root, None if texts is None else texts[p])) for p in files
    ]

    variables: dict[str, Any] = {}
    var_origin: dict[str, str] = {}
    raw: dict[str, tuple[str, dict[str, Any]]] = {}
    default: tuple[str, str] | None = None
    for shown, rf in parsed:
        for name, value in rf.vars.items():
            if name in variables and variables[name] != value:
                raise RecipeError(
                    f"variable '{name}' is also defined differently in {var_origin[name]}", file=shown, key=f"vars.{name}"
                )
            variables[name] = value
            var_origin[name] = shown
        for name, table in rf.targets.items():
            if not _NAME.match(name):
                raise RecipeError(
                    "target names use letters, digits, '-', '_' and '.'", file=shown, key=f"targets.{name}"
                )
            if name in raw:
                raise RecipeError(
                    f"duplicate target '{name}' (first defined in {raw[name][0]})", file=shown, key=f"targets.{name}"
                )
            raw[name] = (shown, copy.deepcopy(table))
        if rf.default is not None:
            if default is not None:
                raise RecipeError(f"a default target is already set in {default[0]}", file=shown, key="default")
            default = (shown, rf.default)

    for text in overrides or []:
        parts, value = parse_override(text)
        if parts[0] == "vars":
            var = ".".join(parts[1:])
            if var not in variables:
                # A misspelt name would otherwise change nothing, silently.
                known = f"known: {', '.join(sorted(variables))}" if variables else "no recipe defines any variables"
                raise RecipeError(
                    f"--set {text!r}: no recipe defines variable '{var}' ({known})",
                    suggestion=closest(var, variables),
                )
            variables[var] = value
            continue
        name = parts[1]
        if name not in raw:
            raise RecipeError(f"--set {text!r}: unknown target '{name}'", suggestion=closest(name, raw))
        node = raw[name][1]
        for part in parts[2:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {text!r}: '{part}' is not a table")
        node[parts[-1]] = value

    tables: dict[str, tuple[str, _TargetTable]] = {}
    for name, (shown, table) in raw.items():
        table = _substitute(table, variables, shown, f"targets.{name}")
        try:
            tables[name] = (shown, _target_table(table))
        except _ShapeError as exc:
            raise RecipeError(exc.message, file=shown, key=f"targets.{name}.{exc.key}") from None

    result = Recipes(root=root, files=files)
    for name in tables:
        result.targets[name] = _resolve(name, tables, [])
    if default is not None:
        if default[1] not in result.targets:
            raise RecipeError(
                f"default target '{default[1]}' is not defined",
                file=default[0],
                key="default",
                suggestion=closest(default[1], result.targets),
            )
        result.default = default[1]
    return result


def _resolve(name: str, tables: dict[str, tuple[str, _TargetTable]], chain: list[str]) -> Target:
    shown, table = tables[name]
    key = f"targets.{name}"
    params = dict(table.extra)
    inputs: dict[str, str | list[str]] = {}
    step = table.step
    description = table.description
    if table.extends is not None:
        if table.extends in chain or table.extends == name:
            cycle = " -> ".join([*chain, name, table.extends])
            raise RecipeError(f"'extends' forms a cycle: {cycle}", file=shown, key=f"{key}.extends")
        if table.extends not in tables:
            raise RecipeError(
                f"extends unknown target '{table.extends}'",
                file=shown,
                key=f"{key}.extends",
                suggestion=closest(table.extends, tables),
            )
        base = _resolve(table.extends, tables, [*chain, name])
        step = step or base.step
        inputs = dict(base.inputs)
        params = {**base.params, **params}
        description = description if description is not None else base.description
    if isinstance(table.inputs, str):
        inputs["*"] = table.inputs  # shorthand for a step's only input slot; graph.py resolves it
    elif table.inputs:
        inputs.update(table.inputs)
    if not step:
        raise RecipeError("missing 'step' (the step plugin that builds this target)", file=shown, key=f"{key}.step")
    return Target(name=name, step=step, inputs=inputs, params=params, description=description or "", file=shown)
