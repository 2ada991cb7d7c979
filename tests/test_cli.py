"""The CLI: each command end to end in a subprocess (exit codes, the no-op path), the rest through CliRunner."""

from __future__ import annotations

import pytest
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run_cli


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cache_dir_override(chain, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    b = run_cli("build", "--cache-dir", str(elsewhere), cwd=chain.root)
    assert b.returncode == 0
    assert (elsewhere / "blobs").is_dir() and not (chain.root / "cache" / "blobs").exists()
    # The variable alone selects that cache: every target is a hit, the default cache stays unused.
    env_b = run_cli("build", "--json", cwd=chain.root, env={"MODELBUILD_CACHE_DIR": str(elsewhere)})
    assert env_b.returncode == 0, env_b.stderr
    counts = json.loads(env_b.stdout)["counts"]
    assert counts["cached"] == 3 and counts.get("built", 0) == 0, counts
    assert not (chain.root / "cache" / "blobs").exists()
    stats = run_cli("cache", "stats", "--json", cwd=chain.root, env={"MODELBUILD_CACHE_DIR": str(elsewhere)})
    assert Path(json.loads(stats.stdout)["cache_dir"]) == elsewhere
    # --cache-dir wins over the variable.
    unused = tmp_path / "unused"
    flag = run_cli("build", "--json", "--cache-dir", str(elsewhere), cwd=chain.root, env={"MODELBUILD_CACHE_DIR": str(unused)})
    assert json.loads(flag.stdout)["counts"]["cached"] == 3 and not unused.exists()


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- in process, through click's CliRunner (real process behaviour stays in the subprocess tests above) ----------

VERBS = ["list", "build", "plan", "explain", "graph", "steps", "schema", "cache", "clean", "report", "lock", "verify",
         "release", "whence", "completion"]


def test_every_verb_has_help_with_an_example():
    from click.testing import CliRunner

    from modelbuild.commands import cli

    assert sorted(cli.commands) == sorted(VERBS)
    for verb in VERBS:
        result = CliRunner().invoke(cli, [verb, "--help"])
        assert result.exit_code == 0, (verb, result.output)
        assert "Example" in result.stdout and f"modelbuild {verb}" in result.stdout, verb


def test_usage_errors_exit_2_on_stderr(chain, monkeypatch):
    from modelbuild.cli import main

    monkeypatch.chdir(chain.root)
    for argv in (["build", "--no-such-option"], ["no-such-verb"], ["build", "-j", "many"], ["cache", "shrink"],
                 ["release", "verify"], ["clean", "--set", "vars.greeting=x"]):
        assert main(argv) == 2, argv
    assert main([]) == 2


def test_errors_go_to_stderr_with_exit_1(chain, capsys):
    from modelbuild.cli import main

    assert main(["plan", "nosuch", "--project", str(chain.root)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "nosuch" in err


@pytest.mark.slow
def test_clean_and_build_take_out_dir(chain, tmp_path, capsys):
    from modelbuild.cli import main

    elsewhere = tmp_path / "elsewhere"
    assert main(["build", "c", "--project", str(chain.root), "--out-dir", str(elsewhere), "-q"]) == 0
    assert (elsewhere / "c").is_dir() and not (chain.out / "c").exists()
    assert main(["clean", "c", "--project", str(chain.root), "--out-dir", str(elsewhere)]) == 0
    assert "removed 1 output(s): c" in capsys.readouterr().err and not (elsewhere / "c").exists()


def _report_project(tmp_path):
    from tests.test_report_html import SHIPPED, _shipped_project

    return _shipped_project(tmp_path), SHIPPED


@pytest.mark.slow
def test_report_off_a_terminal_prints_every_value(tmp_path):
    """Piped (CliRunner's stdout is not a terminal): a Markdown table, values in full, no ellipsis."""
    from click.testing import CliRunner

    from modelbuild.commands import cli

    root, shipped = _report_project(tmp_path)
    result = CliRunner().invoke(cli, ["report", *shipped, "--project", str(root)], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| target | artifact |") and "…" not in result.stdout
    assert all(any(f"| {name} |" in line for line in lines) for name in shipped)
    assert "needs macOS" in result.stdout
    wide = CliRunner().invoke(cli, ["report", *shipped, "--project", str(root), "--format", "table"])
    assert "…" not in wide.stdout and "tinyconv-mlpackage-validate" in wide.stdout and "\x1b[" not in wide.stdout
    rows = json.loads(CliRunner().invoke(cli, ["report", *shipped, "--project", str(root), "--format", "json"]).stdout)
    assert [r["target"] for r in rows] == shipped


@pytest.mark.slow
def test_report_takes_out_dir_and_honours_color_flags(tmp_path):
    import shutil

    from click.testing import CliRunner

    from modelbuild.commands import cli

    root, shipped = _report_project(tmp_path)
    moved = tmp_path / "moved-out"
    shutil.move(str(root / "out"), moved)
    args = ["report", shipped[0], "--project", str(root)]
    missing = CliRunner().invoke(cli, [*args, "--format", "md"]).stdout.splitlines()[2]
    found = CliRunner().invoke(cli, [*args, "--format", "md", "--out-dir", str(moved)]).stdout.splitlines()[2]
    assert missing.startswith(f"| {shipped[0]} | - |") and not found.startswith(f"| {shipped[0]} | - |")
    args += ["--format", "table"]
    colored = CliRunner().invoke(cli, [*args, "--out-dir", str(moved), "--color"], env={"NO_COLOR": "1"})
    assert colored.exit_code == 0 and "\x1b[" in colored.stdout
    assert "\x1b[" not in CliRunner().invoke(cli, args, env={"NO_COLOR": "1"}).stdout
    plain = CliRunner().invoke(cli, ["--color", *args, "--out-dir", str(moved), "--no-color"])
    assert "\x1b[" not in plain.stdout


def test_live_renderer_colour_follows_the_flag():
    import io

    from modelbuild.progress import LiveRenderer

    assert LiveRenderer(io.StringIO(), color=False).console.no_color is True
    assert LiveRenderer(io.StringIO(), color=True).console.no_color is False


@pytest.mark.slow
def test_plain_noop_is_answered_before_click_and_agrees_with_it(chain):
    """`build [TARGET...] [-q] [-j N] [-k]` skips click's import when the fast path proves a no-op; with
    any other option (or a bad -j value) click parses the line, and the same recorded no-op answers."""
    assert run_cli("build", "c", cwd=chain.root).returncode == 0
    time.sleep(2.1)
    assert run_cli("build", "c", cwd=chain.root).returncode == 0  # records the no-op outside the racy window
    probe = (
        "import sys\nfrom modelbuild.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('CODE=%d CLICK=%s' % (code, 'click' in sys.modules))\n"
    )
    for args, click_loaded, said in ((["build", "c"], False, True), (["build", "c", "-q"], False, False),
                                     (["build", "c", "-j", "2"], False, True), (["build", "-j2", "-k", "-q", "c"], False, False),
                                     (["build", "c", "--color"], True, True)):
        out = subprocess.run([sys.executable, "-c", probe, *args], cwd=chain.root, capture_output=True, text=True)
        assert f"CODE=0 CLICK={click_loaded}" in out.stdout, (args, out.stdout, out.stderr)
        assert ("up to date (nothing changed" in out.stderr) == said, (args, out.stderr)
    bad = subprocess.run([sys.executable, "-c", probe, "build", "c", "-j", "x"], cwd=chain.root, capture_output=True, text=True)
    assert "CODE=2 CLICK=True" in bad.stdout and "not a valid integer" in bad.stderr, bad.stdout + bad.stderr
    # Another target set is another no-op record: the shortcut falls through to a real (full) build,
    # which for this command line runs without click too (build_verb.py).
    other = subprocess.run([sys.executable, "-c", probe, "build", "b"], cwd=chain.root, capture_output=True, text=True)
    assert "CODE=0 CLICK=False" in other.stdout and "2 target(s): 2 cached" in other.stderr, other.stdout + other.stderr
