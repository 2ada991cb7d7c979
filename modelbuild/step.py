"""The step API: everything a step plugin needs, and nothing of the engine.

A step is a class with a ``Params`` model, typed inputs, one output kind and a
``run(ctx)`` method. It registers under the entry point group
``modelbuild.steps``; built-in steps register the same way. A step module
imports only light things at module level (pydantic, the standard library);
torch, executorch and coremltools are imported inside ``run`` so that the
core can load, validate and plan without them.

A complete example (a step that upper-cases a text file)::

    from pathlib import Path
    from modelbuild.step import Step, Params, Input, StepContext

    class Upper(Step):
        name = "upper"
        version = 1
        description = "Upper-case text.txt"
        inputs = {"text": Input(kinds=("files",))}
        output = "files"

        class Params(Params):
            suffix: str = ""

        def run(self, ctx: StepContext) -> None:
            src = ctx.inputs["text"].file("text.txt").read_text()
            (ctx.out / "text.txt").write_text(src.upper() + ctx.params.suffix)

    # pyproject.toml of the plugin's package:
    # [project.entry-points."modelbuild.steps"]
    # upper = "mypkg.steps:Upper"

The engine computes the action key from the step's name, version, source
fingerprint, parameters (defaults filled in), input digests, declared source
files and toolchain versions; it runs ``run`` in a child process with an empty
``ctx.out``, then stores whatever ``ctx.out`` holds as the artifact.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict

from .artifacts import Artifact
from .errors import PlatformUnavailable, RecipeError, StepError
# The light values (no pydantic), re-exported here: the engine imports them from step_types.
from .step_types import Requirements, ResolveContext, host_platform, installed_versions, unmet_requirement

__all__ = [
    "Step",
    "Params",
    "Input",
    "Requirements",
    "Verdict",
    "StepContext",
    "ResolveContext",
    "StepError",
    "PlatformUnavailable",
    "RecipeError",
    "host_platform",
    "unmet_requirement",
    "write_json",
]


class Params(BaseModel):
    """Base of every step's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Input:
    """An input slot of a step.

    ``kinds`` lists the artifact kinds accepted (``"any"`` accepts all);
    ``many`` makes the slot a list of artifacts; ``optional`` lets a recipe
    leave it out; ``in_memory`` says ``run`` reads it with
    :meth:`StepContext.input_value`, so a producer that keeps its value
    (``Step.keeps_value``) can hand it over in a fused session.
    """

    kinds: tuple[str, ...]
    optional: bool = False
    many: bool = False
    doc: str = ""
    in_memory: bool = False


@dataclass(frozen=True)
class Verdict:
    """The judgment of a cached measurement (see ``Step.judge``)."""

    ok: bool
    reason: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    #: "pass" / "fail", or e.g. "needs macOS" for a distinct not-run status.
    status: str | None = None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON deterministically (sorted keys, fixed separators, newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


class _Nothing:
    """No value kept (``None`` may be a value)."""

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()


class StepContext:
    """What ``Step.run`` gets.

    - ``target``: the target name being built
    - ``params``: the validated ``Params`` instance
    - ``inputs``: slot name -> :class:`Artifact` (a list for ``many`` slots)
    - ``sources``: declared source path (as written) -> absolute ``Path``
    - ``out``: an empty directory; everything left in it becomes the artifact
    - ``work``: scratch directory, deleted after the step
    - ``jobs``: how many threads the step may use (its share of the cores
      while other steps run beside it)
    - ``project``: the project root (the directory holding ``recipes/``)
    - ``downloads``: a directory that survives across runs, for partial
      downloads a step can resume (never part of the artifact)

    In-memory hand-over (fused execution, docs/plugins.md): ``input_value(slot,
    load)`` gives the value the producer kept, else ``load(path)`` of the
    input's files; ``keep_value(obj)`` offers this step's output to its
    consumer in the same process (a no-op when none will take it).
    """

    def __init__(
        self,
        *,
        target: str,
        params: Params,
        inputs: Mapping[str, Artifact | list[Artifact]],
        sources: Mapping[str, Path],
        out: Path,
        work: Path,
        jobs: int,
        project: Path,
        downloads: Path | None = None,
        progress_stream: IO[str] | None = None,
        values: Mapping[str, Any] | None = None,
        keep: bool = False,
    ) -> None:
        self.target = target
        self.params = params
        self.inputs = inputs
        self.sources = sources
        self.out = out
        self.work = work
        self.jobs = jobs
        self.project = project
        self.downloads = downloads if downloads is not None else work
        self.summary = ""
        self._progress = progress_stream
        self._last_progress = 0.0
        self._values = dict(values or {})
        self._keep = keep
        #: The value offered by :meth:`keep_value` (NOTHING: none, or nobody takes it).
        self.kept: Any = NOTHING

    def input_value(self, slot: str, load: Callable[[Path], Any]) -> Any:
        """The in-memory value of input ``slot`` if its producer handed one over, else ``load(path)``.

        The value is what ``load`` would return for the input's files (the
        producer promises it), and it is given once: the step may change it.
        Example: ``ep, info, example = ctx.input_value("program", load_program)``.
        """
        if slot in self._values:
            return self._values.pop(slot)
        artifact = self.inputs[slot]
        if isinstance(artifact, list):
            raise TypeError(f"input {slot!r} is a list of artifacts; input_value takes a single one")
        return load(artifact.path)

    def keep_value(self, value: Any) -> None:
        """Offer ``value`` (what loading the files now in ``out`` gives) to this step's consumer.

        Call it once the output files are complete. In a fused session whose
        next step takes this output in memory, the value is handed to it
        instead of being loaded again; otherwise it is not held at all.
        """
        if self._keep:
            self.kept = value

    def release_inputs(self) -> None:
        """Let go of values handed over but not taken (the step ended)."""
        self._values.clear()

    def log(self, message: str) -> None:
        """Write a line to the step's log (kept with the build's records)."""
        print(message, flush=True)

    def progress(self, done: float | None = None, total: float | None = None, message: str = "") -> None:
        """Report progress to the live display (rate-limited; cheap to call often)."""
        if self._progress is None:
            return
        now = time.monotonic()
        finished = done is not None and total is not None and done >= total
        if now - self._last_progress < 0.2 and not finished:
            return
        self._last_progress = now
        self._progress.write(json.dumps({"done": done, "total": total, "message": message}) + "\n")
        self._progress.flush()

    def write_json(self, relpath: str, obj: Any) -> Path:
        """Write ``obj`` as deterministic JSON at ``out/relpath``."""
        path = self.out / relpath
        write_json(path, obj)
        return path


class Step:
    """Base class of step plugins. See the module docstring for an example."""

    #: The name recipes use in ``step = "..."``.
    name: ClassVar[str] = ""
    #: Bump when the step's output format changes in a way source edits do not show.
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    inputs: ClassVar[dict[str, Input]] = {}
    output: ClassVar[str] = "files"
    requires: ClassVar[Requirements] = Requirements()
    #: Distributions whose installed versions go into the action key.
    toolchain: ClassVar[tuple[str, ...]] = ()
    #: The fingerprint in the action key covers the step module's first-party
    #: import closure, found from the code (modelbuild/fingerprint.py): helpers
    #: imported anywhere, even inside ``run``, need no listing. List here only
    #: modules imported by a computed name (``import_module(f"...{x}")``); each
    #: adds its own closure.
    code_modules: ClassVar[tuple[str, ...]] = ()
    #: Non-Python files the step's code reads from its package, as
    #: ``"package:relative/path"`` (e.g. ``"mypkg:data/vocab.txt"``); their
    #: bytes go into the fingerprint.
    code_files: ClassVar[tuple[str, ...]] = ()
    #: Parameters that only judge a cached result (thresholds): they stay out of
    #: the action key, so changing them re-judges without rerunning.
    judge_params: ClassVar[frozenset[str]] = frozenset()
    #: ``run`` offers its output in memory (``ctx.keep_value``) to a consumer whose
    #: input slot has ``in_memory=True``: a chain of misses then runs in one
    #: process (fused execution; the files are written as always).
    keeps_value: ClassVar[bool] = False

    Params: ClassVar[type[Params]] = Params

    def sources(self, params: Params) -> list[str]:
        """Project-relative files or directories whose *content* enters the key.

        A function of ``params`` only (the files' content is read by the
        engine): the bound graph keeps the answer (graph_facts.py), and a
        full-check build that changed nothing does not ask again.
        """
        return []

    def resolve(self, params: Params, ctx: ResolveContext) -> Params:
        """Pin what ``params`` name by a moving reference, before the key is computed.

        A parameter naming something that can change while the recipe does not
        (a branch of a Hub repo; a module file looked up in the project) is
        replaced by what it names now (``revision = "main@<commit>"``; the
        project file), so that the action key changes when the thing moves and
        never depends on where the command was started. The engine keys, runs
        and calls ``sources`` with the returned params. Must be idempotent and
        cheap on resolved params. Default: ``params`` unchanged.
        """
        return params

    def toolchain_versions(self) -> dict[str, str]:
        """Versions of the declared toolchain (missing ones as ``"not installed"``)."""
        return installed_versions(self.toolchain)

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        """Reject parameter/input combinations before anything runs.

        Raise :class:`RecipeError` with ``key`` set to the parameter name; the
        engine adds the file and the full key path.
        """

    def requirements(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> Requirements:
        """The host requirements for these params and inputs (default: ``requires``).

        A function of its arguments (whether this host meets them is decided
        at each build): the bound graph keeps the answer, as for ``sources``.

        A requirement that only shows once the step runs (e.g. a .pte whose
        delegate needs Core ML) is signalled by raising
        :class:`PlatformUnavailable` from ``run``; the target then gets the
        distinct "needs ..." status and nothing is cached.
        """
        return self.requires

    def elsewhere(self, target: str, params: Params) -> str:
        """The exact command that builds this target on a host that can (a function of its arguments)."""
        return f"modelbuild build {target}"

    def judge(self, params: Params, artifact: Artifact) -> Verdict | None:
        """Judge a (possibly cached) output against ``judge_params``; None = no gate.

        Runs in the build process, on hits as well as misses, so it must be cheap
        and must not import heavy packages.
        """
        return None

    def run(self, ctx: StepContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
