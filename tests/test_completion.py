"""Shell completion: the scripts for bash, zsh and fish, and what only the recipes know
(target names, ``--set`` keys), answered without pydantic, networkx or the plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner

from modelbuild.commands import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _modelbuild_completion modelbuild"),
    ("zsh", "#compdef modelbuild"),
    ("fish", "complete --no-files --command modelbuild"),
])
def test_completion_scripts(shell, marker):
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.stdout
    assert f"_MODELBUILD_COMPLETE={shell}_complete" in result.stdout


def test_completion_of_an_unknown_shell_is_a_usage_error():
    result = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert result.exit_code == 2 and "tcsh" in result.stderr


def _complete(args: list[str], incomplete: str) -> list[str]:
    return [c.value for c in BashComplete(cli, {}, "modelbuild", "_MODELBUILD_COMPLETE").get_completions(args, incomplete)]


def test_target_names_verbs_and_options(chain):
    root = ["--project", str(chain.root)]
    assert _complete(["build", *root], "") == ["a", "b", "c"]
    assert _complete(["plan", *root, "a"], "b") == ["b"]  # a second target
    assert _complete(["release", *root], "c") == ["c"]
    assert _complete(["lock", *root, "--update"], "") == ["a", "b", "c"]
    assert "build" in _complete([], "b") and "--keep-going" in _complete(["build"], "--k")
    assert _complete(["graph", *root, "--format"], "m") == ["mermaid"]


def test_set_keys(chain):
    root = ["--project", str(chain.root)]
    assert _complete(["build", *root, "--set"], "") == ["targets.", "vars."]
    assert _complete(["build", *root, "--set"], "targets.") == ["targets.a.", "targets.b.", "targets.c."]
    assert _complete(["build", *root, "--set"], "targets.c.") == ["targets.c.command=", "targets.c.outs="]
    assert _complete(["build", *root, "--set"], "targets.c.o") == ["targets.c.outs="]
    assert _complete(["build", *root, "--set"], "vars.") == ["vars.greeting="]
    assert _complete(["build", *root, "--set"], "vars.greeting=x") == []


def test_broken_recipes_complete_nothing(project):
    project.recipe("[targets.x\nstep = ")
    assert _complete(["build", "--project", str(project.root)], "") == []


def test_target_names_from_the_shipped_recipes_through_the_shell_protocol():
    """What bash does: run the program with _MODELBUILD_COMPLETE set; nothing heavy is imported."""
    probe = (
        "import sys\nfrom modelbuild.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('HEAVY=' + ','.join(m for m in ('pydantic', 'networkx', 'rich', 'torch', 'modelbuild.plugins',"
        " 'modelbuild.recipe') if m in sys.modules))\n"
    )
    env = {**os.environ, "_MODELBUILD_COMPLETE": "bash_complete", "COMP_WORDS": "modelbuild build tiny-llama-8da4w-",
           "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[-1] == "HEAVY=", out.stdout + out.stderr
    names = [line.split(",", 1)[1] for line in lines[:-1]]
    assert "tiny-llama-8da4w-pte" in names and all(n.startswith("tiny-llama-8da4w-") for n in names), names
    assert out.stderr == ""


def test_the_bash_script_completes_in_bash(tmp_path):
    """The script itself, sourced by a real bash, fills COMPREPLY from the recipes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "modelbuild").write_text(f"#!/bin/sh\nexec {sys.executable} -m modelbuild.cli \"$@\"\n")
    (bindir / "modelbuild").chmod(0o755)
    script = ('eval "$(modelbuild completion bash)"\n'
              'COMP_WORDS=(modelbuild build tinyconv-mlpackage-i); COMP_CWORD=2\n'
              '_modelbuild_completion modelbuild\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["tinyconv-mlpackage-int8", "tinyconv-mlpackage-ios18"], out.stdout + out.stderr


def test_path_options_complete_paths():
    """File and directory options hand completion to the shell's own path completion."""
    def types(args, incomplete=""):
        return {c.type for c in BashComplete(cli, {}, "modelbuild", "_MODELBUILD_COMPLETE").get_completions(args, incomplete)}

    assert types(["build", "--report"]) == {"file"}
    assert types(["build", "--out-dir"]) == {"dir"}
    assert types(["report", "x", "--html"]) == {"file"}
    assert types(["whence"]) == {"file"}
