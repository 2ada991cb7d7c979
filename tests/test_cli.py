"""The CLI: each command end to end in a subprocess, and the no-op path stays light."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import run_cli


def test_list_build_plan_explain_graph(chain):
    out = run_cli("list", cwd=chain.root)
    assert out.returncode == 0
    assert out.stdout.splitlines()[2].startswith("* c ")
    b = run_cli("build", "--json", cwd=chain.root)
    assert b.returncode == 0, b.stderr
    report = json.loads(b.stdout)
    assert report["ok"] and report["counts"]["built"] == 3
    assert report["targets"]["c"]["digest"].startswith("b3:")
    p = run_cli("plan", "c", "--set", "vars.greeting=bye", cwd=chain.root)
    assert p.stdout.splitlines()[0].startswith("miss") and "params changed" in p.stdout
    assert "pending" in p.stdout
    e = run_cli("explain", "c", cwd=chain.root)
    assert "a (command): built" in e.stdout and "new target" in e.stdout
    g = run_cli("graph", "c", "--format", "mermaid", cwd=chain.root)
    assert g.stdout.startswith("graph LR") and "-->" in g.stdout
    t = run_cli("graph", cwd=chain.root)
    assert t.stdout.splitlines()[0] == "c (command -> files)"


def test_steps_schema_cache_clean(chain):
    s = run_cli("steps", "--json", cwd=chain.root)
    steps = {x["name"]: x for x in json.loads(s.stdout)}
    assert "command" in steps and steps["command"]["params"][0]["name"] == "command"
    sch = json.loads(run_cli("schema", cwd=chain.root).stdout)
    assert "targets" in sch["properties"] and "Target_command" in sch["$defs"]
    run_cli("build", cwd=chain.root)
    st = run_cli("cache", "stats", "--json", cwd=chain.root)
    assert json.loads(st.stdout)["cache_dir"].endswith("cache")
    v = run_cli("cache", "verify", cwd=chain.root)
    assert v.returncode == 0, v.stdout
    c = run_cli("clean", "c", cwd=chain.root)
    assert "removed 1 output(s): c" in c.stderr and not (chain.out / "c").exists()
    run_cli("cache", "clear", cwd=chain.root)
    again = run_cli("build", "--json", cwd=chain.root)
    assert json.loads(again.stdout)["counts"]["built"] == 3


def test_cache_dir_override(chain, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    b = run_cli("build", "--cache-dir", str(elsewhere), cwd=chain.root)
    assert b.returncode == 0
    assert (elsewhere / "blobs").is_dir() and not (chain.root / "cache" / "blobs").exists()
    env_b = run_cli("build", "--json", cwd=chain.root, env={"MODELBUILD_CACHE_DIR": str(elsewhere)})
    # run_cli drops the variable on purpose; pass it explicitly instead
    assert env_b.returncode == 0


def test_noop_build_never_imports_heavy_packages(chain):
    assert run_cli("build", cwd=chain.root).returncode == 0
    probe = (
        "import sys, runpy; sys.argv=['modelbuild','build']\n"
        "try:\n    runpy.run_module('modelbuild.cli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy=[m for m in ('torch','executorch','coremltools','transformers','torchao') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    for _ in range(2):  # the slow path, then (after the racy window) the fast path
        out = subprocess.run([sys.executable, "-c", probe], cwd=chain.root, capture_output=True, text=True)
        assert "HEAVY=\n" in out.stdout, out.stdout + out.stderr
        time.sleep(2.1)


def test_noop_fast_path_notices_changes(chain):
    assert run_cli("build", cwd=chain.root).returncode == 0
    time.sleep(2.1)
    assert run_cli("build", cwd=chain.root).returncode == 0
    quick = run_cli("build", cwd=chain.root)
    assert "up to date (nothing changed" in quick.stderr
    (chain.root / "data.txt").write_text("other\n")
    changed = run_cli("build", cwd=chain.root)
    assert "built" in changed.stderr and "source changed: data.txt" in changed.stderr


def test_help_is_light():
    probe = "import sys, modelbuild.cli; print(sorted(m for m in ('pydantic','networkx','torch','rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
