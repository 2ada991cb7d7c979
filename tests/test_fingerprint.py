"""Step code fingerprints: the automatic first-party import closure (issue 11, hole 2).

The closure is checked against an independent method (the standard library's
``modulefinder``, which scans compiled bytecode, not the AST) for every
built-in step, and a synthetic plugin package on disk shows that editing any
module a step can import, even one imported inside ``run``, changes the
step's fingerprint, while editing a module it cannot import does not.
"""

from __future__ import annotations

import importlib
import modulefinder
import sys
import textwrap
from pathlib import Path

import pytest

from modelbuild import fingerprint
from modelbuild.fingerprint import imports_of, step_code
from modelbuild.plugins import Registry, StepInfo, source_files

REPO = Path(__file__).resolve().parents[1]


class _FirstParty(modulefinder.ModuleFinder):
    """modulefinder that follows only ``modelbuild`` (torch & co. are not scanned)."""

    def import_module(self, partname, fqname, parent):
        if fqname.partition(".")[0] != "modelbuild":
            return None
        return super().import_module(partname, fqname, parent)


def _modulefinder_closure(module: str) -> set[str]:
    finder = _FirstParty(path=[str(REPO)])
    finder.import_hook(module)
    return {name for name in finder.modules if name.partition(".")[0] == "modelbuild"}


BUILTIN = sorted(info.name for info in Registry.discover() if info.entry.startswith("modelbuild."))


def test_every_builtin_step_is_checked():
    assert {"command", "fetch", "export", "quantize", "lower", "coreml", "compress", "validate"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_fingerprint_covers_every_first_party_module_the_step_can_import(name):
    """Any modelbuild module reachable by import from the step is in its fingerprint."""
    info = Registry.discover().get(name)
    closure = set(info.code().modules)
    reachable = _modulefinder_closure(info.module)
    assert info.module in reachable  # the independent method did run
    assert reachable - closure == set()


def test_the_drifted_hand_lists_are_covered():
    """The helpers the issue found missing from the hand-written lists."""
    reg = Registry.discover()
    quantize = {p.relative_to(REPO).as_posix() for p in reg.get("quantize").code().paths}
    lower = {p.relative_to(REPO).as_posix() for p in reg.get("lower").code().paths}
    assert "modelbuild/ml/hqq.py" in quantize
    assert {"modelbuild/ml/coreml/delegate.py", "modelbuild/ml/coreml/save.py"} <= lower
    # Package data the code names is part of the code (fetch trains its tokenizer on it).
    assert "modelbuild:data/tokenizer_corpus.txt" in reg.get("fetch").code().modules


def test_no_step_lists_its_imports_by_hand():
    from modelbuild.backends import registry

    for info in Registry.discover():
        if info.entry.startswith("modelbuild."):
            # lower imports its backends by entry point name: their modules, as registered.
            computed = registry().modules() if info.name == "lower" else ()
            assert info.cls.code_modules == computed, f"{info.name}: code_modules is computed now"


def test_imports_of_reads_every_form():
    src = textwrap.dedent("""
        import a.b.c
        from . import sibling
        from .. import up
        from .sub.mod import name as alias
        from x.y import *
        try:
            import t1
        except ImportError:
            pass
        if True:
            from t2 import z
        def f():
            import inner
            class K:
                def g(self):
                    from late import thing
        with open("f") as fh:
            import w
        match 1:
            case 1:
                import m
        importlib.import_module("dyn.amic")
        __import__("dunder")
        importlib.import_module(computed)  # cannot be seen
    """).encode()
    got = imports_of(src, "pkg.sub2.mod")
    for name in ["a.b.c", "pkg.sub2", "pkg.sub2.sibling", "pkg", "pkg.up", "pkg.sub2.sub.mod",
                 "pkg.sub2.sub.mod.name", "x.y", "t1", "t2", "t2.z", "inner", "late", "late.thing",
                 "w", "m", "dyn.amic", "dunder"]:
        assert name in got, name
    # In a package's __init__, "." is the package itself.
    assert imports_of(b"from . import a", "pkg.sub", is_package=True) == ["pkg.sub", "pkg.sub.a"]
    assert imports_of(b"def broken(:", "pkg.m") == []


PLUGIN = {
    "fpplug/__init__.py": '"""A plugin package."""\n',
    "fpplug/steps.py": '''
        from modelbuild.step import Step

        class Upper(Step):
            name = "fp-upper"
            output = "files"

            def run(self, ctx):
                from .helpers import deep          # imported only when the step runs
                (ctx.out / "o").write_text(deep.shout("x"))
    ''',
    "fpplug/helpers/__init__.py": "",
    "fpplug/helpers/deep.py": '''
        from .. import util
        from fpplug import styles

        def shout(s):
            import importlib
            importlib.import_module("fpplug.lazy")
            return util.upper(s) + open(__file__.replace("helpers/deep.py", "data/vocab.txt")).read()
    ''',
    "fpplug/util.py": "def upper(s):\n    return s.upper()\n",
    "fpplug/styles.py": "BANG = '!'\n",
    "fpplug/lazy.py": "X = 1\n",
    "fpplug/unused.py": "Y = 1\n",
    "fpplug/data/vocab.txt": "abc\n",
    "fpplug/data/other.txt": "never named\n",
}


@pytest.fixture
def plugin_pkg(tmp_path, monkeypatch):
    for rel, text in PLUGIN.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m == "fpplug" or m.startswith("fpplug.")]:
        del sys.modules[name]


def _fp() -> str:
    return StepInfo("fp-upper", "fpplug.steps:Upper").fingerprint


@pytest.mark.parametrize("rel", ["fpplug/helpers/deep.py", "fpplug/util.py", "fpplug/styles.py", "fpplug/lazy.py",
                                 "fpplug/helpers/__init__.py", "fpplug/__init__.py", "fpplug/steps.py",
                                 "fpplug/data/vocab.txt"])
def test_editing_any_module_the_plugin_can_import_changes_its_fingerprint(plugin_pkg, rel):
    before = _fp()
    path = plugin_pkg / rel
    path.write_text(path.read_text() + "# edited\n")
    assert _fp() != before


@pytest.mark.parametrize("rel", ["fpplug/unused.py", "fpplug/data/other.txt"])
def test_editing_what_the_plugin_cannot_reach_keeps_its_fingerprint(plugin_pkg, rel):
    before = _fp()
    path = plugin_pkg / rel
    path.write_text(path.read_text() + "# edited\n")
    assert _fp() == before


def test_a_same_size_edit_within_one_timestamp_tick_is_seen(plugin_pkg):
    """Content is read each time: no stat-only shortcut can hide a quick edit."""
    path = plugin_pkg / "fpplug" / "util.py"
    before, st = _fp(), path.stat()
    path.write_text(path.read_text().replace("upper()", "lower()"))
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _fp() != before


def test_a_new_module_file_joins_the_closure(plugin_pkg):
    deep = plugin_pkg / "fpplug" / "helpers" / "deep.py"
    before = step_code("fpplug.steps")
    assert "fpplug.extra" not in before.modules
    deep.write_text(deep.read_text() + "from fpplug import extra\n")
    (plugin_pkg / "fpplug" / "extra.py").write_text("Z = 1\n")
    assert "fpplug.extra" in step_code("fpplug.steps").modules


def test_the_fingerprint_does_not_depend_on_where_the_package_lives(tmp_path, monkeypatch):
    prints = []
    for where in ("one", "two"):
        for rel, text in PLUGIN.items():
            path = tmp_path / where / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(tmp_path / where))
        importlib.invalidate_caches()
        prints.append(step_code("fpplug.steps").fingerprint)
    assert prints[0] == prints[1]


def test_code_modules_still_adds_roots_for_imports_by_computed_name(plugin_pkg):
    steps = plugin_pkg / "fpplug" / "steps.py"
    steps.write_text(steps.read_text() + "\n\nclass Listed(Upper):\n    name = 'fp-listed'\n    code_modules = ('fpplug.unused',)\n")
    info = StepInfo("fp-listed", "fpplug.steps:Listed")
    assert "fpplug.unused" in info.code().modules
    assert "unused.py" in {p.name for p in source_files(info.cls)}


def test_parse_results_are_kept_in_the_index_and_not_redone(plugin_pkg, monkeypatch):
    index: dict[str, str] = {}

    class Index:
        get = index.get

        def set(self, key, value):
            index[key] = value

    monkeypatch.setattr(fingerprint, "_PARSED", {})  # as in a fresh process
    first = step_code("fpplug.steps", index=Index())
    assert len(index) == 7  # one record per parsed module of the closure
    fingerprint._PARSED.clear()  # another fresh process
    parses = []
    real = fingerprint.imports_of
    monkeypatch.setattr(fingerprint, "imports_of", lambda *a, **k: parses.append(a[1]) or real(*a, **k))
    again = step_code("fpplug.steps", index=Index())
    assert again.fingerprint == first.fingerprint and parses == []
    util = plugin_pkg / "fpplug" / "util.py"
    util.write_text(util.read_text() + "import fpplug.unused\n")
    edited = step_code("fpplug.steps", index=Index())
    assert parses == ["fpplug.util", "fpplug.unused"]  # the edited module, and the one it now imports
    assert "fpplug.unused" in edited.modules


def test_engine_keys_and_fast_path_use_the_closure(project, plugin_pkg, monkeypatch):
    """An edit of a helper imported inside run() reruns the step, and the fast
    path's watch list holds that helper."""
    real = Registry.discover.__func__

    def discover(cls):
        reg = real(cls)
        return cls({**{i.name: i for i in reg}, "fp-upper": StepInfo("fp-upper", "fpplug.steps:Upper")})

    monkeypatch.setattr(Registry, "discover", classmethod(discover))
    monkeypatch.setenv("PYTHONPATH", str(plugin_pkg))
    project.recipe('[targets.u]\nstep = "fp-upper"\n')
    first = project.build("u")
    assert first.targets["u"].status == "built", first.targets["u"].reason
    deep = str(plugin_pkg / "fpplug" / "helpers" / "deep.py")
    assert deep in first.watched and first.watched[deep] is not None
    assert project.build("u").targets["u"].status == "cached"
    (plugin_pkg / "fpplug" / "util.py").write_text("def upper(s):\n    return s.upper() + '?'\n")
    again = project.build("u")
    assert again.targets["u"].status == "built"
    assert "step code changed" in again.targets["u"].reason
    assert (project.out / "u" / "o").read_text() == "X?abc\n"
