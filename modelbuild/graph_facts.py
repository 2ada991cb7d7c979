"""What a build needs to know of a bound target without importing its step.

Binding a target (graph.py) imports its step plugin and validates its params
through the step's pydantic ``Params`` model: about a quarter of a second of
imports before the first target is decided. Most of what the engine then asks
of the step is plain data that binding fixes once: the step's name, version,
output kind and declared toolchain; the params as the action key holds them;
the declared sources, the host requirements, the command to run it elsewhere.
Binding records these *facts*; the engine decides every target from them, on a
freshly bound graph and on one loaded from the cache (graph_cache.py) alike, so
both paths run the same code. The real step and params are loaded only when a
step must run, resolve, or judge.

The facts rely on the step API's contract (docs/plugins.md): ``sources``,
``requirements`` and ``elsewhere`` depend only on their arguments (params,
input kinds, target name). A step that overrides ``resolve``,
``toolchain_versions`` or ``judge`` is asked each time instead (its facts say
so), since those may look at the world.

Example::

    facts = StepFacts.of(CommandStep())
    facts.output, facts.resolves          # ('files', False)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .step_types import Requirements

if TYPE_CHECKING:
    from .step import Params, Step

__all__ = ["StepFacts", "NodeFacts", "same_json"]


def same_json(a: Any, b: Any) -> bool:
    """``a == b`` with the same types throughout (``1`` is not ``1.0``, NaN is
    never equal): what a JSON round trip must give back for a fact to be kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def round_trips(value: Any) -> bool:
    """``value`` comes back from JSON text exactly as it is."""
    try:
        return same_json(json.loads(json.dumps(value)), value)
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class StepFacts:
    """A step class as the engine sees it when nothing runs."""

    name: str
    version: int
    output: str
    toolchain: tuple[str, ...]
    judge_params: tuple[str, ...]
    code_modules: tuple[str, ...]
    code_files: tuple[str, ...]
    #: Input slots that take a value in memory, and whether run() offers its output so (fused.py).
    in_memory: tuple[str, ...]
    keeps_value: bool
    #: The step overrides Step.resolve / .toolchain_versions / .judge: ask it, never the facts.
    resolves: bool
    own_toolchain: bool
    judges: bool

    @classmethod
    def of(cls, step: "Step") -> "StepFacts":
        """The facts of a step instance (attributes as the instance sees them, overrides as its class has them)."""
        from .step import Step

        kind, own = type(step), getattr(step, "__dict__", {})
        return cls(
            name=step.name,
            version=step.version,
            output=step.output,
            toolchain=tuple(step.toolchain),
            judge_params=tuple(sorted(step.judge_params)),
            code_modules=tuple(step.code_modules),
            code_files=tuple(step.code_files),
            in_memory=tuple(sorted(slot for slot, spec in step.inputs.items() if spec.in_memory)),
            keeps_value=bool(step.keeps_value),
            resolves=kind.resolve is not Step.resolve or "resolve" in own,
            own_toolchain=kind.toolchain_versions is not Step.toolchain_versions or "toolchain_versions" in own,
            judges=kind.judge is not Step.judge or "judge" in own,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepFacts":
        tuples = ("toolchain", "judge_params", "code_modules", "code_files", "in_memory")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


@dataclass(frozen=True)
class NodeFacts:
    """One bound target: its params (JSON, as the action key holds them, judge
    params included), what the consumers' asks added to them (devtools.py), and
    the step's answers for them; None where the step must be asked."""

    params: dict[str, Any]
    asked: dict[str, Any]
    sources: tuple[str, ...] | None
    requirements: Requirements | None
    elsewhere: str | None

    @classmethod
    def of(cls, step: "Step", params: "Params", asked: dict[str, Any], kinds: dict[str, Any], target: str,
           facts: StepFacts) -> "NodeFacts":
        sources: tuple[str, ...] | None = None
        requirements: Requirements | None = None
        elsewhere: str | None = None
        try:  # any surprise here: the engine asks the step itself, as before
            if not facts.resolves:  # else the sources depend on the resolved params
                found = step.sources(params)
                if isinstance(found, (list, tuple)) and all(isinstance(s, str) for s in found):
                    sources = tuple(found)
            req = step.requirements(params, kinds)
            if type(req) is Requirements:
                requirements = req
            text = step.elsewhere(target, params)
            if isinstance(text, str):
                elsewhere = text
        except Exception:  # noqa: BLE001 - a fact not taken is asked for later, when needed
            pass
        return cls(params.model_dump(mode="json"), dict(asked), sources, requirements, elsewhere)

    def to_json(self) -> dict[str, Any]:
        req = self.requirements
        return {
            "params": self.params,
            "asked": self.asked,
            "sources": list(self.sources) if self.sources is not None else None,
            "requirements": None if req is None else [list(req.platforms), list(req.tools), req.memory_gb],
            "elsewhere": self.elsewhere,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NodeFacts":
        req = data["requirements"]
        sources = data["sources"]
        return cls(
            params=data["params"],
            asked=data["asked"],
            sources=tuple(sources) if sources is not None else None,
            requirements=None if req is None else Requirements(tuple(req[0]), tuple(req[1]), req[2]),
            elsewhere=data["elsewhere"],
        )
