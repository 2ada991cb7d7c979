"""The bound-graph cache (modelbuild/graph_cache.py): a hit is the graph a fresh binding would give.

Each test changes one thing the binding depends on and checks that the next
load binds afresh and sees it; each fails if that thing is left out of the
cache's key (or of the checks made when an entry is read or written).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelbuild import graph_cache
from modelbuild.engine import Engine
from modelbuild.fingerprint import step_code
from modelbuild.graph import BuildGraph
from modelbuild.graph_cache import load_graph
from modelbuild.plugins import Registry
from modelbuild.recipe import load_recipes
from modelbuild.store import Store

STEPS = '''
from modelbuild.step import Input, Params, Step
from mb_bg_base import DEFAULT


class BgParams(Params):
    n: int = 1
    m: int = DEFAULT
    flag: bool | None = None


class Bg(Step):
    name = "bg"
    toolchain = ("mb_bg_tool",)
    inputs = {"src": Input(kinds=("any",), optional=True)}
    Params = BgParams

    def sources(self, params):
        return [f"in{params.n}.txt"]

    def run(self, ctx):
        (ctx.out / "x").write_text(str(ctx.params.n))


class Asker(Step):
    name = "bgask"
    inputs = {"src": Input(kinds=("any",))}
    asks = {"src": {"flag": True}}

    def run(self, ctx):
        (ctx.out / "y").write_text("y")
'''

RECIPE = """
default = "all"
[targets.a]
step = "command"
command = "cat {project}/in1.txt > $MODELBUILD_OUT/o"
deps = ["in1.txt"]
env = { X = "1" }
[targets.b]
step = "bg"
inputs = { src = "a" }
[targets.c]
step = "bgask"
inputs = { src = "b" }
[targets.ckpt]
step = "fetch"
source = "ckpt"
[targets.all]
step = "command"
inputs = { parts = ["a", "b", "c", "ckpt"] }
command = "true"
timeout_s = 30
"""

PURGE = ("mb_bg_steps", "mb_bg_base")
TRUSTED_BEFORE_NS = graph_cache._trusted_before_ns  # the real rule


class Site:
    """A plugin distribution (``mb_bg_steps``), a library it imports from
    another distribution (``mb_bg_base``) and a toolchain distribution, on sys.path."""

    def __init__(self, folder: Path):
        self.folder = folder

    def dist(self, name: str, version: str, entry_points: str = "") -> None:
        for old in self.folder.glob(f"{name}-*.dist-info"):  # as pip upgrades: the old one goes
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        d = self.folder / f"{name}-{version}.dist-info"
        d.mkdir()
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if entry_points:
            (d / "entry_points.txt").write_text(entry_points)

    def module(self, name: str, source: str) -> None:
        (self.folder / f"{name}.py").write_text(source)
        for m in PURGE:  # the next binding imports what is on disk now
            sys.modules.pop(m, None)
        importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch, project):
    folder = tmp_path / "site"
    folder.mkdir()
    s = Site(folder)
    s.dist("mb_bg_steps", "1.0", "[modelbuild.steps]\nbg = mb_bg_steps:Bg\nbgask = mb_bg_steps:Asker\n")
    s.dist("mb_bg_base", "1.0")
    s.dist("mb_bg_tool", "1.0")
    s.module("mb_bg_base", "DEFAULT = 1\n")
    s.module("mb_bg_steps", STEPS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # edits within one second must be seen
    # Code written by the test itself is trusted once its modules were purged (see Site.module);
    # test_code_edited_while_binding_is_not_kept checks the real rule.
    monkeypatch.setattr(graph_cache, "_trusted_before_ns", lambda: time.time_ns())
    project.recipe(RECIPE)
    project.file("in1.txt", "one\n")
    project.file("ckpt/w.bin", "w\n")
    project.cache.mkdir()
    yield s
    for m in PURGE:
        sys.modules.pop(m, None)


def load(project, overrides=None) -> BuildGraph:
    return load_graph(project.root, project.root / "recipes", project.cache, overrides)


def entries(project) -> list[Path]:
    return sorted(p for p in (project.cache / "bound").glob("*.json") if p.name != "imports.json")


def hit(graph: BuildGraph) -> bool:
    return not any(node.loaded for node in graph.nodes.values())


def keyed(graph: BuildGraph, project) -> dict[str, dict]:
    """The action-key record of every target (inputs given made-up digests)."""
    with Store(project.cache) as store:
        engine = Engine(graph, store, project=project.root, out_dir=project.out)
        records = {}
        for name in graph.closure(["all"]):
            node = graph.nodes[name]
            digests = {slot: [f"b3:{p}" for p in prods] if isinstance(prods, list) else f"b3:{prods}"
                       for slot, prods in node.inputs.items()}
            records[name] = engine.prepare(node, digests).record
        return records


def test_a_hit_loads_no_step_and_keys_every_target_as_a_fresh_binding(site, project):
    fresh = load(project)
    assert not hit(fresh) and len(entries(project)) == 1
    cached = load(project)
    assert hit(cached)
    assert cached.closure(["all"]) == fresh.closure(["all"]) and cached.resolve_names([]) == ["all"]
    assert keyed(cached, project) == keyed(fresh, project)
    # Keying loaded only the step that resolves its params (fetch); asks were applied as binding did.
    assert {n for n, node in cached.nodes.items() if node.loaded} == {"ckpt"}
    assert cached.nodes["b"].params.flag is True and cached.nodes["b"].params == fresh.nodes["b"].params
    assert cached.nodes["all"].requirements(cached.nodes) == fresh.nodes["all"].requirements(fresh.nodes)


def test_an_edited_recipe_is_bound_again(site, project):
    assert load(project).nodes["a"].facts.params["env"] == {"X": "1"}
    project.recipe(RECIPE.replace('X = "1"', 'X = "2"'))
    graph = load(project)
    assert not hit(graph) and graph.nodes["a"].facts.params["env"] == {"X": "2"}


def test_an_override_is_bound_again(site, project):
    assert load(project).nodes["b"].facts.params["n"] == 1
    graph = load(project, ["targets.b.n=7"])
    assert graph.nodes["b"].facts.params["n"] == 7 and graph.nodes["b"].facts.sources == ("in7.txt",)
    again = load(project)
    assert hit(again) and again.nodes["b"].facts.params["n"] == 1


def test_edited_plugin_code_is_bound_again(site, project):
    assert load(project).nodes["b"].facts.params["n"] == 1
    site.module("mb_bg_steps", STEPS.replace("n: int = 1", "n: int = 33  # a new default"))
    graph = load(project)
    assert not hit(graph) and graph.nodes["b"].facts.params["n"] == 33
    assert graph.nodes["b"].facts.sources == ("in33.txt",)


def test_an_upgraded_distribution_is_bound_again(site, project):
    """``mb_bg_base`` is not the plugin's own package, so no code fingerprint
    covers it: the installed versions in the key do."""
    assert load(project).nodes["b"].facts.params["m"] == 1
    site.module("mb_bg_base", "DEFAULT = 2\n")
    site.dist("mb_bg_base", "2.0")
    graph = load(project)
    assert not hit(graph) and graph.nodes["b"].facts.params["m"] == 2


def test_a_toolchain_version_is_read_at_every_build(site, project):
    load(project)
    meta = next(site.folder.glob("mb_bg_tool-*.dist-info")) / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 1.1"))  # in place: the listing is the same
    graph = load(project)
    assert hit(graph)
    assert graph.nodes["b"].toolchain_versions() == {"mb_bg_tool": "1.1"}


def test_another_python_is_bound_again(site, project, monkeypatch):
    load(project)
    monkeypatch.setattr(sys, "version", sys.version + " (another build)")
    assert not hit(load(project))


def test_how_python_was_started_does_not_bind_again(site, project, monkeypatch):
    """``modelbuild``, ``python -m modelbuild.cli`` and ``python -c`` differ only
    in ``sys.path[0]`` (bin/, the working directory, ""): one rule (fastpath.import_path) keys both caches, so
    switching between them reuses the entry (and the no-op state) of the other."""
    from modelbuild import fastpath

    rest = sys.path[1:]
    entry = sys.path[0]  # the plugin's site folder (the fixture prepends it): kept, as a second entry
    monkeypatch.setattr(sys, "path", [str(project.root), entry, *rest])  # python -m, started in the project
    identity = fastpath._identity(project.root, project.root / "recipes", project.cache, {})
    assert not hit(load(project))
    monkeypatch.setattr(sys, "path", [str(Path(sys.executable).parent), entry, *rest])  # the console script
    assert hit(load(project)), "bound again for another sys.path[0]"
    assert fastpath._identity(project.root, project.root / "recipes", project.cache, {}) == identity
    # (Any later entry still counts: test_every_input_of_the_binding_is_in_the_key.)


def test_code_edited_while_binding_is_not_kept(site, project, monkeypatch):
    """The real rule: plugin code written after this process started may not be
    what it imported, so no entry is written from that binding."""
    monkeypatch.setattr(graph_cache, "_trusted_before_ns", TRUSTED_BEFORE_NS)
    assert graph_cache._trusted_before_ns() < time.time_ns() - 10**9
    load(project)
    assert entries(project) == []


def test_values_json_would_not_give_back_are_not_kept(site, project):
    project.recipe(RECIPE.replace("timeout_s = 30", "timeout_s = nan"))
    load(project)
    assert entries(project) == []
    project.recipe(RECIPE.replace("timeout_s = 30", "timeout_s = 30.0"))  # a float stays a float
    load(project)
    assert load(project).nodes["all"].facts.params["timeout_s"] == 30.0 and len(entries(project)) == 1


def test_a_damaged_or_misplaced_entry_is_bound_afresh(site, project):
    load(project)
    (path,) = entries(project)
    entry = json.loads(path.read_text())
    entry["targets"][0]["facts"] = {"params": {}}
    path.write_text(json.dumps(entry))
    graph = load(project)
    assert not hit(graph) and graph.nodes["a"].facts.params["env"] == {"X": "1"}
    # Another key's entry under this key's name (a copied cache, a bug): not used.
    load(project, ['targets.a.env.X="3"'])
    (other,) = set(entries(project)) - {path}
    path.write_bytes(other.read_bytes())
    graph = load(project)
    assert not hit(graph) and graph.nodes["a"].facts.params["env"] == {"X": "1"}


def _key_inputs(project) -> dict:
    registry = Registry.discover()
    recipes = project.root / "recipes"
    return dict(root=project.root, recipes_dir=recipes, texts={p: p.read_bytes() for p in sorted(recipes.glob("*.toml"))},
                overrides=[], registry=registry, binder=step_code("modelbuild.graph_cache"))


def test_every_input_of_the_binding_is_in_the_key(site, project, monkeypatch):
    base = _key_inputs(project)
    key = graph_cache._key(**base)
    registry = base["registry"]
    (recipe, data), = base["texts"].items()
    changed = {
        "root": dict(root=project.root / "elsewhere"),
        "recipes_dir": dict(recipes_dir=project.root / "other"),
        "recipe bytes": dict(texts={recipe: data + b"\n"}),
        "recipe path": dict(texts={recipe.with_name("x.toml"): data}),
        "overrides": dict(overrides=["targets.b.n=2"]),
        "distributions": dict(registry=Registry(dict((i.name, i) for i in registry), registry.distributions[:-1])),
        "registry": dict(registry=Registry({**{i.name: i for i in registry}, "bg": replace(registry.get("bg"), entry="x:Y")},
                                           registry.distributions)),
        "binding code": dict(binder=replace(base["binder"], fingerprint="0" * 32)),
    }
    for what, change in changed.items():
        assert graph_cache._key(**{**base, **change}) != key, what
    flags = sys.flags
    monkeypatch.setattr(sys, "flags", SimpleNamespace(optimize=flags.optimize + 1))  # python -O: asserts gone
    assert graph_cache._key(**base) != key, "python -O"
    monkeypatch.setattr(sys, "flags", flags)
    monkeypatch.setattr(sys, "path", [*sys.path, "/nowhere"])
    assert graph_cache._key(**base) != key, "sys.path"
    # The binding code is the closure of graph_cache: binding, parsing, discovery, the step API.
    modules = set(base["binder"].modules)
    assert {"modelbuild.graph", "modelbuild.recipe", "modelbuild.plugins", "modelbuild.step",
            "modelbuild.graph_facts", "modelbuild.devtools"} <= modules


def test_a_binding_that_fails_is_not_kept(site, project):
    from modelbuild.errors import RecipeError

    project.recipe(RECIPE + '[targets.bad]\nstep = "bg"\nn = "many"\n')
    with pytest.raises(RecipeError) as info:
        load(project)
    assert info.value.key == "targets.bad.n" and entries(project) == []


def test_the_fresh_graph_matches_load_recipes(site, project):
    """What load_graph parses (the bytes it hashed) is what load_recipes reads."""
    graph = load(project)
    plain = BuildGraph.build(load_recipes(project.root / "recipes", root=project.root), Registry.discover())
    assert {n: node.facts for n, node in graph.nodes.items()} == {n: node.facts for n, node in plain.nodes.items()}
