"""Project configuration: ``modelbuild.toml``, or ``[tool.modelbuild]`` in pyproject.toml.

Settings that a team shares between CI and laptops (where the remote cache
is, whether this machine uploads to it, which executor runs the misses) live
in one file at the project root, so nobody has to repeat them on every command
line. Command-line flags override the file (:meth:`ProjectConfig.override`).

Which file: ``modelbuild.toml`` if it exists (its top level holds the keys),
else the ``[tool.modelbuild]`` table of ``pyproject.toml``; the two are never
merged (as with ruff: the dedicated file wins), so what applies is always in
one place. Neither file: the defaults.

Keys carry the names of the CLI flags::

    # modelbuild.toml
    remote-cache = "s3://team-bucket/modelbuild"   # --remote-cache
    remote-upload = false                          # --remote-upload / --no-remote-upload
    remote-required = false                        # --remote-required: an unreachable remote is an error
    remote-options = { endpoint_url = "http://127.0.0.1:9000" }   # fsspec storage options
    executor = "local"                             # --executor local|dask
    scheduler = "tcp://sched:8786"                 # --scheduler

A bad key or value is a one-line :class:`ConfigError` naming the file and the
key (``pyproject.toml: tool.modelbuild.remote-upload: expected true or false,
got 'yes'``). Credentials do not belong in a project file (it is committed);
a storage option named like one (``secret``, ``token``, ``password``, ...) is
refused: give them to fsspec through the environment (``AWS_ACCESS_KEY_ID``,
``~/.aws/credentials``, ...).

Example::

    cfg = load_config(project_root).override(remote_cache="file:///mnt/shared/cache")
    cfg.remote_cache, cfg.remote_upload, cfg.source
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .errors import RecipeError, closest

__all__ = ["ProjectConfig", "ConfigError", "load_config", "CONFIG_FILE"]

CONFIG_FILE = "modelbuild.toml"

#: Storage-option names that hold secrets (matched case-insensitively, anywhere in the name).
_SECRET = re.compile(r"secret|token|password|passwd|credential|access_key|private_key|^key$|sas|signature", re.I)


class ConfigError(RecipeError):
    """A bad project configuration: carries the file and the TOML key path."""


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _executor(value: Any) -> str:
    if value not in ("local", "dask"):
        raise ValueError(f"expected 'local' or 'dask', got {value!r}")
    return value


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of fsspec storage options, got {value!r}")
    for name in _flat_names(value):
        if _SECRET.search(name.rsplit(".", 1)[-1]):
            raise ValueError(f"'{name}' looks like a credential; a project file is committed, so pass credentials "
                             "through the environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...)")
    return dict(value)


def _flat_names(table: dict[str, Any], prefix: str = "") -> list[str]:
    names = []
    for k, v in table.items():
        name = f"{prefix}{k}"
        names.append(name)
        if isinstance(v, dict):
            names.extend(_flat_names(v, name + "."))
    return names


#: TOML key -> (field name, validator).
_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "remote-cache": ("remote_cache", _str),
    "remote-upload": ("remote_upload", _bool),
    "remote-required": ("remote_required", _bool),
    "remote-options": ("remote_options", _options),
    "executor": ("executor", _executor),
    "scheduler": ("scheduler", _str),
}


@dataclass(frozen=True)
class ProjectConfig:
    """The project's settings (defaults where the file says nothing); a frozen value."""

    #: URL of the shared remote cache (``s3://...``, ``file:///...``, a local path, any fsspec URL).
    remote_cache: str | None = None
    #: Write results to the remote cache too (CI); reading is the default.
    remote_upload: bool = False
    #: An unreachable remote cache is an error instead of a warning.
    remote_required: bool = False
    #: fsspec storage options for the remote (an endpoint, a region; never credentials).
    remote_options: dict[str, Any] = field(default_factory=dict)
    #: What runs the misses: "local" (child processes) or "dask".
    executor: str = "local"
    #: The Dask scheduler's address, for ``executor = "dask"``.
    scheduler: str | None = None
    #: The file these settings came from (None: defaults only), for messages.
    source: str | None = None

    def override(self, **flags: Any) -> "ProjectConfig":
        """A copy with every flag that is not None taking the file's place.

        >>> ProjectConfig(remote_cache="s3://a/b").override(remote_cache=None, remote_upload=True).remote_upload
        True
        """
        given = {k: v for k, v in flags.items() if v is not None}
        unknown = set(given) - {f for f, _ in _KEYS.values()}
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **given)


def load_config(root: Path | str) -> ProjectConfig:
    """The settings of the project at ``root`` (see the module docstring for which file)."""
    root = Path(root)
    dedicated, pyproject = root / CONFIG_FILE, root / "pyproject.toml"
    if dedicated.is_file():
        path, prefix = dedicated, ""
    elif pyproject.is_file():
        path, prefix = pyproject, "tool.modelbuild."
    else:
        return ProjectConfig()
    import tomllib  # here: a project without a config file (most) parses no TOML

    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read: {err}", file=shown) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", file=shown) from err
    if prefix:
        table = data.get("tool", {}).get("modelbuild")
        if table is None:
            return ProjectConfig()
        if not isinstance(table, dict):
            raise ConfigError("expected a table", file=shown, key="tool.modelbuild")
    else:
        table = data
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _KEYS:
            raise ConfigError("unknown key", file=shown, key=prefix + key, suggestion=closest(key, _KEYS))
        name, check = _KEYS[key]
        try:
            values[name] = check(value)
        except ValueError as err:
            raise ConfigError(str(err), file=shown, key=prefix + key) from err
    return ProjectConfig(**values, source=shown)
