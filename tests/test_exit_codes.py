"""Exit codes of ``modelbuild build``: 0 built, 1 a failure, 2 usage, 3 a target named
on the command line cannot be built on this host (Bazel's rule for incompatible
targets); ``--skip-unavailable`` turns 3 back into 0."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.plugin_steps import install_test_steps

RECIPE = """
    default = "after"
    [targets.mac]
    step = "maconly"
    [targets.after]
    step = "command"
    inputs = { x = "mac" }
    command = "true"
    [targets.fine]
    step = "command"
    command = "echo fine > $MODELBUILD_OUT/f"
    [targets.bad]
    step = "command"
    command = "exit 5"
"""


@pytest.fixture
def mac_project(project, tmp_path, monkeypatch):
    install_test_steps(tmp_path, monkeypatch)
    project.recipe(RECIPE)
    return project


@pytest.mark.slow
def test_named_unavailable_target_exits_3(mac_project):
    out = run_cli("build", "mac", cwd=mac_project.root)
    assert out.returncode == 3, out.stderr
    assert "needs macOS" in out.stderr and "mac" in out.stderr.splitlines()[-1]
    again = run_cli("build", "mac", cwd=mac_project.root)  # no no-op shortcut to exit 0
    assert again.returncode == 3, again.stderr


@pytest.mark.slow
def test_named_target_skipped_for_an_unavailable_input_exits_3(mac_project):
    out = run_cli("build", "after", "fine", cwd=mac_project.root)
    assert out.returncode == 3, out.stderr
    assert (mac_project.out / "fine" / "f").read_text() == "fine\n"  # the rest still builds
    report = json.loads(run_cli("build", "--json", "after", cwd=mac_project.root).stdout)
    assert report["ok"] and report["unavailable_requested"] == ["after"]


@pytest.mark.slow
def test_default_target_and_dependencies_are_only_reported(mac_project):
    out = run_cli("build", cwd=mac_project.root)  # the default target, not named
    assert out.returncode == 0, out.stderr
    assert "needs macOS" in out.stderr


@pytest.mark.slow
def test_skip_unavailable_keeps_exit_0(mac_project):
    out = run_cli("build", "--skip-unavailable", "mac", "after", cwd=mac_project.root)
    assert out.returncode == 0, out.stderr
    assert "needs macOS" in out.stderr


@pytest.mark.slow
def test_failure_wins_over_unavailable(mac_project):
    out = run_cli("build", "-k", "mac", "bad", cwd=mac_project.root)
    assert out.returncode == 1, out.stderr


@pytest.mark.slow
def test_where_the_host_can_it_builds(mac_project):
    out = run_cli("build", "mac", "after", cwd=mac_project.root, env={"MODELBUILD_HOST_PLATFORM": "macos"})
    assert out.returncode == 0, out.stderr


def test_usage_error_exits_2(mac_project):
    out = run_cli("build", "--no-such-option", cwd=mac_project.root)
    assert out.returncode == 2


@pytest.mark.slow
def test_interrupt_exits_130(project):
    """Ctrl-C during a build: one line, exit 130 (click's Abort is mapped back)."""
    import signal
    import subprocess
    import sys
    import time

    project.recipe('[targets.slow]\nstep = "command"\ncommand = "sleep 30"\n')
    proc = subprocess.Popen([sys.executable, "-m", "modelbuild.cli", "build", "slow"], cwd=project.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
