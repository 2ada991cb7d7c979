"""Helpers for testing step plugins in-process, without the engine.

Example::

    from modelbuild.testing import run_step
    art = run_step(MyStep, {"suffix": "!"}, {"text": some_dir}, tmp_path / "out")
    assert (art.path / "text.txt").read_text().endswith("!")

The engine runs steps in a child process with caching; this helper runs
``Step.run`` directly so a plugin's own tests stay small and fast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from .artifacts import Artifact
from .step import ResolveContext, Step, StepContext

__all__ = ["run_step", "as_artifact"]


def as_artifact(path: Path | Artifact, kind: str = "files", target: str = "input") -> Artifact:
    """Wrap a directory as an :class:`Artifact` (digest left as a placeholder)."""
    if isinstance(path, Artifact):
        return path
    return Artifact(kind=kind, path=Path(path), digest=f"test:{Path(path).name}", target=target)


def run_step(
    step: type[Step] | Step,
    params: Mapping[str, Any],
    inputs: Mapping[str, Path | Artifact | list[Path | Artifact]],
    out: Path,
    *,
    project: Path | None = None,
    target: str = "test",
    jobs: int = 2,
) -> Artifact:
    """Validate ``params``, run the step into ``out`` and return the output artifact."""
    instance = step() if isinstance(step, type) else step
    parsed = instance.Params.model_validate(dict(params))
    kinds = {name: spec.kinds[0] for name, spec in instance.inputs.items()}
    arts: dict[str, Any] = {}
    for name, value in inputs.items():
        kind = kinds.get(name, "files")
        if isinstance(value, list):
            arts[name] = [as_artifact(v, kind) for v in value]
        else:
            arts[name] = as_artifact(value, kind)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = project or Path.cwd()
    with tempfile.TemporaryDirectory(prefix="modelbuild-test-") as work:
        # As the engine does: pin moving references (Step.resolve) before running.
        parsed = instance.resolve(parsed, ResolveContext(project=root, cache=Path(work) / "resolved"))
        ctx = StepContext(
            target=target,
            params=parsed,
            inputs=arts,
            sources={s: (root / s).resolve() for s in instance.sources(parsed)},
            out=out,
            work=Path(work),
            jobs=jobs,
            project=root,
        )
        instance.run(ctx)
    return Artifact(kind=instance.output, path=out, digest="test:out", target=target)
