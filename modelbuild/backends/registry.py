"""Finding backend plugins (entry point group ``modelbuild.backends``) and composing the lower step's parameters.

The ``lower`` step's ``Params`` are composed from the registered backends:
``backend`` (one of their names) plus every backend's own keys, flat, as
recipes write them. What enters the action key is ``backend`` and the chosen
backend's keys with defaults filled in, so installing another backend plugin
does not change the keys of existing targets.

Example::

    >>> registry = BackendRegistry.discover()
    >>> registry.get("xnnpack").delegates
    ('XnnpackBackend',)
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar, Literal

from pydantic import Field, model_serializer

from modelbuild.errors import InternalError, RecipeError
from modelbuild.step import Params

from .base import Backend

__all__ = ["BackendRegistry", "GROUP", "LowerParamsBase", "lower_params_model", "registry", "get_backend"]

GROUP = "modelbuild.backends"
#: The default backend of a ``lower`` target.
DEFAULT = "xnnpack"


class BackendRegistry:
    """Name -> backend plugin ("module:Class"), imported on first use."""

    def __init__(self, entries: dict[str, str]):
        self._entries = dict(sorted(entries.items()))
        self._loaded: dict[str, Backend] = {}
        self._lock = threading.Lock()

    @classmethod
    def discover(cls) -> "BackendRegistry":
        from modelbuild.plugins import _scan_entry_points

        found = _scan_entry_points(GROUP)
        if found is None:
            from importlib import metadata

            found = [(ep.name, ep.value, None) for ep in metadata.entry_points(group=GROUP)]
        entries: dict[str, str] = {}
        for name, value, _ in found:
            if name in entries and entries[name] != value:
                raise InternalError(f"two plugins register backend '{name}': {entries[name]} and {value}")
            entries[name] = value
        return cls(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def modules(self) -> tuple[str, ...]:
        """The plugin modules (their code enters the lower step's fingerprint)."""
        return tuple(sorted({v.partition(":")[0] for v in self._entries.values()}))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Backend:
        with self._lock:
            if name not in self._loaded:
                if name not in self._entries:
                    raise KeyError(name)
                module_name, _, attr = self._entries[name].partition(":")
                cls = getattr(importlib.import_module(module_name), attr)
                if not (isinstance(cls, type) and issubclass(cls, Backend)):
                    raise InternalError(f"entry point {self._entries[name]} is not a Backend subclass")
                if cls.name != name:
                    raise InternalError(
                        f"backend plugin {self._entries[name]} calls itself '{cls.name}' but is registered as '{name}'"
                    )
                self._loaded[name] = cls()
            return self._loaded[name]

    def __iter__(self):
        return (self.get(n) for n in self._entries)


_registry: BackendRegistry | None = None


def registry() -> BackendRegistry:
    """The installed backends (discovered once per process)."""
    global _registry
    if _registry is None:
        _registry = BackendRegistry.discover()
    return _registry


def get_backend(name: str) -> Backend:
    return registry().get(name)


class LowerParamsBase(Params):
    """The lower step's parameters: ``backend`` plus every backend's keys (see :func:`lower_params_model`).

    Serialized (and so keyed) as ``backend`` and that backend's keys only.
    """

    #: key -> the backends that declare it
    owners: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_serializer(mode="wrap")
    def _only_the_chosen_backend(self, handler):
        data = handler(self)
        backend = getattr(self, "backend", None)
        return {k: v for k, v in data.items() if k == "backend" or backend in self.owners.get(k, (backend,))}

    def backend_params(self):
        """The chosen backend's own ``Params`` instance."""
        backend = get_backend(self.backend)
        return backend.Params.model_validate({k: getattr(self, k) for k in backend.Params.model_fields})

    def check_other_backends(self) -> None:
        """A key of another backend, set to anything but its default, is a recipe error."""
        fields = type(self).model_fields
        for key, owners in self.owners.items():
            if self.backend in owners:
                continue
            if getattr(self, key) != fields[key].default:
                which = " or ".join(f'"{o}"' for o in owners)
                raise RecipeError(f"{key} applies only to backend = {which} (backend is {self.backend!r})", key=key)


def lower_params_model(reg: BackendRegistry | None = None) -> type[LowerParamsBase]:
    """Compose the lower step's ``Params`` from the registered backends' ``Params``."""
    from pydantic import create_model

    reg = reg or registry()
    names = reg.names()
    if not names:
        raise InternalError(f"no backend is registered (entry point group {GROUP}); reinstall modelbuild")
    fields: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    seen: dict[str, Any] = {}
    for backend in reg:
        for key, info in backend.Params.model_fields.items():
            if key == "backend":
                raise InternalError(f"backend {backend.name!r} declares a parameter named 'backend'")
            if info.is_required():
                raise InternalError(f"backend {backend.name!r}: parameter {key!r} needs a default")
            if key in seen:
                first = seen[key]
                if (first.annotation, first.default) != (info.annotation, info.default):
                    raise InternalError(
                        f"backends {owners[key][0]!r} and {backend.name!r} both declare parameter {key!r}, differently"
                    )
            else:
                seen[key] = info
                fields[key] = (info.annotation, info)
            owners.setdefault(key, []).append(backend.name)
    described = ", ".join(f"``{n}``: {reg.get(n).description}" for n in names)
    default = DEFAULT if DEFAULT in names else names[0]
    choice = Literal[tuple(names)]  # type: ignore[valid-type]
    model = create_model(
        "LowerParams",
        __base__=LowerParamsBase,
        __doc__="Parameters of the lower step: the backend and its keys.",
        backend=(choice, Field(default, description=f"Target backend. {described}.")),
        **fields,
    )
    model.owners = {k: tuple(v) for k, v in owners.items()}
    return model
