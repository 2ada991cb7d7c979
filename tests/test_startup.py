"""What a full-check build loads before its first target (issue 11, speed).

Every edit-and-rebuild pays this start-up, so a build imports only the step
plugins its graph uses, never networkx, and discovers plugins without
importlib.metadata's per-distribution objects, with the same answer; once its
bound graph is cached (graph_cache.py, tests/test_bound_graph.py), a full check
that changed nothing imports neither a step plugin nor pydantic.
"""

from __future__ import annotations

import pytest
import subprocess
import sys
from importlib import metadata

from modelbuild.plugins import GROUP, Registry, _scan_entry_points


def _dist(folder, name, version, entry_points: str):
    dist = folder / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(entry_points)


def test_discovery_agrees_with_importlib_metadata(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(first, "mb_a", "1.0", f"[console_scripts]\nx = y:z\n\n[{GROUP}]\nshout = mb_a.steps:Shout\n"
                                 "quiet=mb_a.steps:Quiet\n")
    # A second install of the same distribution later on sys.path: the first one wins.
    _dist(second, "mb_a", "0.9", f"[{GROUP}]\nshout = mb_a.old:Shout\n")
    _dist(second, "mb-b", "2.0", f"# comment\n[{GROUP}]\n  whisper = mb_b:Whisper  \n")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    ours = sorted((n, v, d.name) for n, v, d in _scan_entry_points())
    theirs = sorted((ep.name, ep.value, ep.dist.name) for ep in metadata.entry_points(group=GROUP))
    assert ours == theirs
    assert ("shout", "mb_a.steps:Shout", "mb_a") in ours and ("whisper", "mb_b:Whisper", "mb-b") in ours
    reg = Registry.discover()
    assert reg.get("shout").entry == "mb_a.steps:Shout" and reg.get("whisper").dist == "mb-b"
    assert reg.get("command").dist == "modelbuild"


def test_a_zip_on_sys_path_falls_back_to_importlib_metadata(tmp_path, monkeypatch):
    archive = tmp_path / "plugins.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    monkeypatch.syspath_prepend(str(archive))
    assert _scan_entry_points() is None
    assert "command" in Registry.discover()


def test_the_click_free_build_reads_its_command_lines_as_click_does():
    """cli.main reads the commonest build command lines without click (build_verb.py):
    the options must be exactly those click would give the verb, defaults included;
    any other command line is left to click."""
    from modelbuild.build_verb import simple_args
    from modelbuild.commands import _ns, build

    for argv in ([], ["-q", "--full-check"], ["a", "b", "-j", "2", "-k"], ["-j3", "x"],
                 ["--jobs=4", "--quiet", "--keep-going", "t"], ["--jobs", "0"]):
        ours = simple_args(["build", *argv])
        assert ours is not None, argv
        assert vars(ours) == vars(_ns(build.make_context("build", list(argv)).params)), argv
    for argv in (["build", "--json"], ["build", "-j", "x"], ["build", "-j=2"], ["build", "-qk"], ["build", "--", "a"],
                 ["build", "-j"], ["plan"], ["--verbose", "build"]):
        assert simple_args(argv) is None, argv


PROBE = """
import runpy, sys
sys.argv = ["modelbuild", "build", "--full-check", "-q"]
try:
    runpy.run_module("modelbuild.cli", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
steps = sorted(m for m in sys.modules if m.startswith("modelbuild.steps."))
print("STEPS=" + ",".join(steps))
print("HEAVY=" + ",".join(m for m in ("networkx", "torch", "filelock", "click") if m in sys.modules))
print("PYDANTIC=" + ",".join(m for m in ("pydantic", "pydantic_core") if m in sys.modules))
# Not needed by a no-op: the engine's threads are pool.py's (concurrent.futures imports logging);
# ctypes only when an out/ tree is swapped (materialize.py).
print("LIGHT=" + ",".join(m for m in ("concurrent.futures", "logging", "ctypes") if m in sys.modules))
"""


@pytest.mark.slow
def test_a_full_check_loads_only_the_plugins_its_graph_uses(chain):
    def probe() -> str:
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=chain.root, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = probe()  # binds the graph: imports the command step (and pydantic), nothing else
    assert "STEPS=modelbuild.steps.command\n" in first and "HEAVY=\n" in first, first
    probe()  # the cache directory exists now: this one keeps its bound graph (graph_cache.py)
    again = probe()  # nothing changed: the bound graph comes from the cache, no step or pydantic is imported
    assert "STEPS=\n" in again and "HEAVY=\n" in again and "PYDANTIC=\n" in again, again
    assert "LIGHT=\n" in again, again


def test_the_importlib_metadata_backport_keeps_the_fast_scan(tmp_path, monkeypatch):
    """Importing dask (or anything using the ``importlib_metadata`` backport)
    adds its MetadataPathFinder to sys.meta_path; discovery must still agree."""
    importlib_metadata = pytest.importorskip("importlib_metadata", reason="the backport is not installed here")
    finder = importlib_metadata.MetadataPathFinder()
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, finder])
    _dist(tmp_path, "mb_c", "1.0", f"[{GROUP}]\nloud = mb_c:Loud\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = _scan_entry_points()
    assert found is not None
    assert ("loud", "mb_c:Loud", "mb_c") in [(n, v, d.name) for n, v, d in found]


def test_a_registry_found_through_importlib_metadata_lists_no_distributions(tmp_path, monkeypatch):
    """Then the installed set is unknown, and the bound-graph cache must not be keyed by a partial list."""
    archive = tmp_path / "plugins.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.syspath_prepend(str(archive))
    assert Registry.discover().distributions is None
    monkeypatch.syspath_prepend(str(tmp_path))  # (a plain directory first: still the zip later on)
    assert Registry.discover().distributions is None
    monkeypatch.undo()
    assert Registry.discover().distributions
