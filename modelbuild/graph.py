"""The build graph: resolved targets and their edges, checked before anything runs.

Building the graph validates everything a recipe can get wrong without running
a step: unknown steps, unknown inputs and input slots, parameters (against
each step's ``Params`` model), artifact kinds along every edge, and cycles
(every target in the cycle is named).

The edges are kept as plain adjacency lists: every build pays for building
the graph before it can say "nothing to do", and importing networkx was the
largest single cost of a full-check no-op (docs/benchmarks.md).
``BuildGraph.dag`` still hands out a ``networkx.DiGraph`` for callers that
want its algorithms.

Example::

    graph = BuildGraph.build(load_recipes(Path("recipes")), Registry.discover())
    graph.closure(["tiny-llama"])      # the target and its ancestors, in build order
"""

from __future__ import annotations

import heapq
import threading
from typing import TYPE_CHECKING, Any

from .artifacts import ANY
from .devtools import apply_asks
from .errors import RecipeError, closest
from .graph_facts import NodeFacts, StepFacts
from .plugins import Registry, StepInfo
from .recipe import Recipes, Target
from .step_types import Requirements, installed_versions

if TYPE_CHECKING:
    import networkx as nx
    from pydantic import ValidationError

    from .resolve import Resolver
    from .step import Params, Step

__all__ = ["Node", "BuildGraph"]

#: Loading a node's step and params is rare (a step to run) and may happen in several engine threads.
_LOADING = threading.RLock()


class Node:
    """A target bound to its step plugin, with validated params and resolved input slots.

    ``step`` and ``params`` are the real step instance and pydantic params; on
    a graph loaded from the bound-graph cache they are loaded on first use.
    The engine decides targets from ``facts`` and ``step_facts`` (graph_facts.py)
    without loading them.
    """

    def __init__(self, target: Target, info: StepInfo, inputs: dict[str, str | list[str]], *,
                 step: "Step | None" = None, params: "Params | None" = None,
                 step_facts: StepFacts | None = None, facts: NodeFacts | None = None) -> None:
        self.target = target
        self.info = info
        self.inputs = inputs  # slot -> producer target name(s)
        self._step = step
        self._params = params
        self.step_facts = step_facts if step_facts is not None else StepFacts.of(step)
        self.facts = facts

    def __repr__(self) -> str:
        return f"Node({self.name!r}, step={self.step_name!r}, inputs={self.inputs!r})"

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def step_name(self) -> str:
        return self.step_facts.name

    @property
    def kind(self) -> str:
        return self.step_facts.output

    @property
    def loaded(self) -> bool:
        """The real step and params are in memory (always, on a freshly bound graph)."""
        return self._step is not None and self._params is not None

    @property
    def step(self) -> "Step":
        if self._step is None:
            self._load()
        assert self._step is not None
        return self._step

    @property
    def params(self) -> "Params":
        if self._params is None:
            self._load()
        assert self._params is not None
        return self._params

    @params.setter
    def params(self, value: "Params") -> None:
        if self.facts is not None and value is not self._params:
            self.facts = None  # taken from the old params: ask the step from now on
        self._params = value

    def _load(self) -> None:
        """Import the step and validate the params as binding did (what the cache proved unchanged)."""
        with _LOADING:
            if self._step is not None and self._params is not None:
                return
            step = self.info.instance()
            params = _validate(step, self.target)
            if self.facts is not None and self.facts.asked:
                params = params.model_copy(update=self.facts.asked)
            self._step, self._params = step, params

    # -- what the engine asks, answered from the facts where they hold ----------

    def key_params(self, resolver: "Resolver") -> dict[str, Any]:
        """The (resolved) params as the action key holds them: JSON, judge params left out."""
        judged = self.step_facts.judge_params
        if self.facts is not None and not self.step_facts.resolves:
            return {k: v for k, v in self.facts.params.items() if k not in judged}
        return resolver.params(self).model_dump(mode="json", exclude=set(judged))

    def sources(self, resolver: "Resolver", *, known: bool = False) -> list[str]:
        """The declared sources for the resolved params (``known``: as far as this build resolved them)."""
        if self.facts is not None and self.facts.sources is not None:
            return list(self.facts.sources)
        return self.step.sources(resolver.known(self) if known else resolver.params(self))

    def requirements(self, nodes: dict[str, "Node"]) -> Requirements:
        if self.facts is not None and self.facts.requirements is not None:
            return self.facts.requirements
        return self.step.requirements(self.params, input_kinds(self, nodes))

    def elsewhere(self) -> str:
        if self.facts is not None and self.facts.elsewhere is not None:
            return self.facts.elsewhere
        return self.step.elsewhere(self.name, self.params)

    def toolchain_versions(self) -> dict[str, str]:
        if self.step_facts.own_toolchain:
            return self.step.toolchain_versions()
        return installed_versions(self.step_facts.toolchain)

    @property
    def judges(self) -> bool:
        """The step judges its results (``Step.judge`` overridden)."""
        return self.step_facts.judges

    def takes_in_memory(self, slot: str) -> bool:
        return slot in self.step_facts.in_memory

    @property
    def keeps_value(self) -> bool:
        return self.step_facts.keeps_value


class BuildGraph:
    """Targets and the edges between them (producer -> consumer)."""

    def __init__(self, recipes: Recipes, nodes: dict[str, Node], edges: dict[str, set[str]]):
        """``edges``: producer -> its consumers (every node is a key)."""
        self.recipes = recipes
        self.nodes = nodes
        self._succ = {name: sorted(edges.get(name, ())) for name in nodes}
        pred: dict[str, list[str]] = {name: [] for name in nodes}
        for producer, consumers in self._succ.items():
            for consumer in consumers:
                pred[consumer].append(producer)
        self._pred = {name: sorted(p) for name, p in pred.items()}

    @classmethod
    def build(cls, recipes: Recipes, registry: Registry) -> "BuildGraph":
        nodes: dict[str, Node] = {}
        edges: dict[str, set[str]] = {}
        for target in recipes.targets.values():
            nodes[target.name] = _bind(target, registry)
            edges[target.name] = set()
        for node in nodes.values():
            _check_inputs(node, nodes, recipes)
            for producers in node.inputs.values():
                for producer in producers if isinstance(producers, list) else [producers]:
                    edges[producer].add(node.name)
        names = _find_cycle(edges)
        if names:
            first = nodes[names[0]].target
            raise RecipeError(
                "dependency cycle: " + " -> ".join([*names, names[0]]),
                file=first.file,
                key=f"{first.key_path}.inputs",
            )
        for node in nodes.values():
            _check_step(node, nodes)
        # What consumers ask of their producers (e.g. an ETRecord for profile/validate): decided here, once.
        validated = {name: node.params for name, node in nodes.items()}
        apply_asks(nodes)
        for name, node in nodes.items():
            fields = type(node.params).model_fields
            asked = {k: getattr(node.params, k) for k in fields
                     if getattr(node.params, k) is not getattr(validated[name], k)}
            node.facts = NodeFacts.of(node.step, node.params, asked, input_kinds(node, nodes), name, node.step_facts)
        return cls(recipes, nodes, edges)

    @property
    def dag(self) -> "nx.DiGraph":
        """The graph as a ``networkx.DiGraph`` (producer -> consumer), built on request."""
        import networkx as nx

        dag = nx.DiGraph()
        dag.add_nodes_from(self.nodes)
        dag.add_edges_from((p, c) for p, consumers in self._succ.items() for c in consumers)
        return dag

    def resolve_names(self, names: list[str]) -> list[str]:
        """Check requested target names; an empty list means the default target."""
        if not names:
            if self.recipes.default is None:
                raise RecipeError("no target given and no recipe sets 'default'")
            return [self.recipes.default]
        for name in names:
            if name not in self.nodes:
                raise RecipeError(f"unknown target '{name}'", suggestion=closest(name, self.nodes))
        return list(names)

    def closure(self, names: list[str]) -> list[str]:
        """The requested targets and all their ancestors, in a stable topological
        order (of the targets ready at each point, the first by name)."""
        wanted = set(names)
        for name in names:
            wanted |= self._reach(name, self._pred)
        pending = {n: sum(1 for p in self._pred[n] if p in wanted) for n in wanted}
        ready = [n for n, count in pending.items() if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            name = heapq.heappop(ready)
            order.append(name)
            for consumer in self._succ[name]:
                if consumer in pending:
                    pending[consumer] -= 1
                    if pending[consumer] == 0:
                        heapq.heappush(ready, consumer)
        return order

    def producers(self, name: str) -> list[str]:
        return list(self._pred[name])

    def consumers(self, name: str) -> list[str]:
        return list(self._succ[name])

    def descendants(self, name: str) -> set[str]:
        return self._reach(name, self._succ)

    @staticmethod
    def _reach(start: str, adjacency: dict[str, list[str]]) -> set[str]:
        found: set[str] = set()
        todo = list(adjacency[start])
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo.extend(adjacency[name])
        return found


def _find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """The targets of one dependency cycle, in edge order, or [] (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in edges:
        if root in state:
            continue
        path = [root]
        state[root] = 1
        stack = [iter(sorted(edges[root]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges[nxt])))
    return []


def _bind(target: Target, registry: Registry) -> Node:
    if target.step not in registry:
        raise RecipeError(
            f"unknown step '{target.step}'",
            file=target.file,
            key=f"{target.key_path}.step",
            suggestion=closest(target.step, registry.names()),
        )
    info = registry.get(target.step)
    step = info.instance()
    params = _validate(step, target)
    inputs = dict(target.inputs)
    if "*" in inputs:
        slots = list(step.inputs)
        if len(slots) != 1:
            raise RecipeError(
                f"step '{step.name}' has input slots {slots}: name them, e.g. inputs = {{ {slots[0] if slots else 'slot'} = \"...\" }}",
                file=target.file,
                key=f"{target.key_path}.inputs",
            )
        inputs[slots[0]] = inputs.pop("*")
    return Node(target, info, inputs, step=step, params=params)


def _validate(step: "Step", target: Target) -> "Params":
    from pydantic import ValidationError

    try:
        return step.Params.model_validate(target.params)
    except ValidationError as exc:
        raise _param_error(exc, target, step) from exc


def _param_error(exc: "ValidationError", target: Target, step: "Step") -> RecipeError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{target.key_path}.{loc}" if loc else target.key_path
    if err["type"] == "extra_forbidden":
        known = [*step.Params.model_fields, "step", "inputs", "extends", "description"]
        return RecipeError(
            f"unknown parameter '{err['loc'][0]}' for step '{step.name}'",
            file=target.file,
            key=key,
            suggestion=closest(str(err["loc"][0]), known),
        )
    got = err.get("input")
    detail = err["msg"]
    if got is not None and err["type"] != "missing":
        detail += f" (got {got!r})"
    return RecipeError(detail, file=target.file, key=key)


def _check_inputs(node: Node, nodes: dict[str, Node], recipes: Recipes) -> None:
    target, step = node.target, node.step
    wildcard = step.inputs.get("*")
    for slot, producers in node.inputs.items():
        key = f"{target.key_path}.inputs.{slot}"
        spec = step.inputs.get(slot, wildcard)
        if spec is None:
            raise RecipeError(
                f"step '{step.name}' has no input slot '{slot}' (its slots: {', '.join(step.inputs) or 'none'})",
                file=target.file,
                key=key,
                suggestion=closest(slot, step.inputs),
            )
        names = producers if isinstance(producers, list) else [producers]
        if isinstance(producers, list) and not spec.many:
            raise RecipeError(f"slot '{slot}' takes one target, got a list", file=target.file, key=key)
        for producer in names:
            if producer not in nodes:
                raise RecipeError(
                    f"unknown input target '{producer}'",
                    file=target.file,
                    key=key,
                    suggestion=closest(producer, nodes),
                )
            kind = nodes[producer].kind
            if ANY not in spec.kinds and kind not in spec.kinds:
                raise RecipeError(
                    f"{step.name} needs {' or '.join(spec.kinds)} for '{slot}' but '{producer}' "
                    f"({nodes[producer].step.name}) produces {kind}",
                    file=target.file,
                    key=key,
                )
    for slot, spec in step.inputs.items():
        if slot != "*" and not spec.optional and slot not in node.inputs:
            raise RecipeError(
                f"step '{step.name}' needs input '{slot}' ({' or '.join(spec.kinds)})",
                file=target.file,
                key=f"{target.key_path}.inputs",
            )


def input_kinds(node: Node, nodes: dict[str, Node]) -> dict[str, Any]:
    """Slot -> producer kind (a list for many-slots), as Step.check and requirements see it."""
    kinds: dict[str, Any] = {}
    for slot, producers in node.inputs.items():
        if isinstance(producers, list):
            kinds[slot] = [nodes[p].kind for p in producers]
        else:
            kinds[slot] = nodes[producers].kind
    return kinds


def _check_step(node: Node, nodes: dict[str, Node]) -> None:
    try:
        node.step.check(node.params, input_kinds(node, nodes))
    except RecipeError as exc:
        key = node.target.key_path + (f".{exc.key}" if exc.key else "")
        raise RecipeError(exc.message, file=node.target.file, key=key, suggestion=exc.suggestion) from exc
