"""Backends as plugins: what the ``lower`` step can lower an exported program to.

Each backend is a :class:`Backend` (its recipe keys, partitioners, passes,
export-time source transforms and what a host needs to run the result)
registered under the entry point group ``modelbuild.backends``. The built-in
ones (``xnnpack``, ``coreml``, ``mps``, ``portable``, ``vulkan``) register
through modelbuild's own ``pyproject.toml``, exactly as a third-party plugin
would. See :mod:`modelbuild.backends.base` for a complete example and
docs/plugins.md for the guide.

Importing this package is light (pydantic and the standard library); a
backend's module imports ExecuTorch only inside its methods.
"""

from __future__ import annotations

from .base import Backend, BackendParams, BackendUnavailable
from .registry import GROUP, BackendRegistry, get_backend, lower_params_model, registry

__all__ = [
    "Backend",
    "BackendParams",
    "BackendRegistry",
    "BackendUnavailable",
    "GROUP",
    "get_backend",
    "lower_params_model",
    "registry",
    "runtime_unmet",
]


def runtime_unmet(pte_dir) -> tuple[str, str] | None:
    """``(needs, detail)`` when this host cannot run the lowered program in ``pte_dir``, else None.

    The backend comes from the artifact's ``program.json`` (written by ``lower``).
    """
    import json
    from pathlib import Path

    try:
        summary = json.loads((Path(pte_dir) / "program.json").read_text())
    except (OSError, ValueError):
        return None
    name = summary.get("backend")
    reg = registry()
    if not isinstance(name, str) or name not in reg:
        return None
    backend = reg.get(name)
    needs = backend.runtime_unmet()
    return (needs, backend.runtime_detail()) if needs else None
