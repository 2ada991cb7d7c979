"""Install a test step plugin the way pip would: a module and its dist-info on a path directory.

The engine discovers steps through the ``modelbuild.steps`` entry point group,
and step processes are other interpreters, so the directory goes both on this
process's ``sys.path`` and on ``PYTHONPATH`` (through ``monkeypatch``, undone
after the test).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path


def install_plugin(tmp_path: Path, monkeypatch, *, module: str, source: str, steps: dict[str, str]) -> Path:
    """Write ``module`` (its ``source``) with a dist-info whose entry points are ``steps``
    (step name -> class name) under ``tmp_path``; returns the directory put on the path."""
    folder = tmp_path / f"{module}-site"
    dist_name = module.replace("_", "-")
    dist = folder / f"{module}-0.1.dist-info"
    dist.mkdir(parents=True)
    (folder / f"{module}.py").write_text(source)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[modelbuild.steps]\n" + "".join(f"{step} = {module}:{cls}\n" for step, cls in steps.items()))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    importlib.invalidate_caches()
    return folder
