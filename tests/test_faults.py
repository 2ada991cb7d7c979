"""Faults: kill -9 of the tool mid-step, two builders on one cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli


def _spawn(project, *args):
    env = {**os.environ}
    env.pop("MODELBUILD_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "modelbuild.cli", "build", "-q", *args], cwd=project.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill_minus_9_mid_step_leaves_cache_consistent(project):
    """A step killed with the tool leaves no record: the same command, rebuilt, runs again.

    The command is identical in both builds (the pause depends on a file that is
    not an input), so the second build has the very key the killed one had; a
    record written for the half-done output would turn it into a wrong hit.
    """
    from modelbuild.api import plan
    from modelbuild.store import Store

    project.recipe("""
        [targets.slow]
        step = "command"
        command = "echo run >> {project}/runs.log; echo half > $MODELBUILD_OUT/out.txt; if [ -e {project}/hold ]; then touch {project}/started; sleep 30; fi; echo done >> $MODELBUILD_OUT/out.txt"
        outs = ["out.txt"]
    """)
    (project.root / "hold").touch()
    proc = _spawn(project, "slow")
    assert _wait_for(project.root / "started")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.5)
    # The step died with the tool: nothing is still running the command.
    ps = subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True, text=True)
    assert ps.stdout.strip() == "" or all(not _is_ours(pid, project) for pid in ps.stdout.split())
    assert not (project.out / "slow").exists()
    (project.root / "hold").unlink()

    [row] = plan(["slow"], project=project.root).rows
    assert row.decision == "miss" and row.key
    with Store(project.cache) as store:
        assert store.get_action(row.key) is None  # nothing recorded for the killed run's key
    result = project.build("slow")
    assert result.targets["slow"].status == "built" and result.targets["slow"].key == row.key
    assert (project.root / "runs.log").read_text() == "run\nrun\n"  # it really ran again
    assert (project.out / "slow" / "out.txt").read_text() == "half\ndone\n"
    with Store(project.cache) as store:
        assert store.get_action(row.key) is not None
    again = project.build("slow")
    assert again.targets["slow"].status == "cached" and (project.root / "runs.log").read_text() == "run\nrun\n"


def _is_ours(pid: str, project) -> bool:
    try:
        return str(project.root) in open(f"/proc/{pid}/environ").read() or str(project.root) in os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False


@pytest.mark.slow
def test_two_builders_run_a_step_once(project):
    project.recipe("""
        [targets.once]
        step = "command"
        command = "echo run >> {project}/runs.log; sleep 2; echo x > $MODELBUILD_OUT/x"
    """)
    first, second = _spawn(project, "once"), _spawn(project, "once")
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert (project.root / "runs.log").read_text() == "run\n"
    assert (project.out / "once" / "x").read_text() == "x\n"


def test_a_half_written_tree_beside_a_skipped_target_is_removed(project):
    """A build killed while it restored ``b`` leaves ``out/.b.mb-<pid>-<hex>``. The next build
    that writes ``b`` removes it; one in which ``b`` is skipped (its input failed) must too,
    or out/ keeps the half-written tree (found by the equivalence profile)."""
    recipe = """
        [targets.a]
        step = "command"
        command = "{command}"
        outs = ["a.txt"]

        [targets.b]
        step = "command"
        inputs = {{ a = "a" }}
        command = "cat $MODELBUILD_INPUT_A/a.txt > $MODELBUILD_OUT/b.txt"
        outs = ["b.txt"]
    """
    project.recipe(recipe.format(command="echo a > $MODELBUILD_OUT/a.txt"))
    assert run_cli("build", "b", cwd=project.root).returncode == 0
    stale = project.out / ".b.mb-99999-0badf00d"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "b.txt").write_text("half")
    project.recipe(recipe.format(command="exit 3"))
    done = run_cli("build", "b", "-k", "--json", cwd=project.root)
    assert done.returncode == 1, done.stderr
    statuses = {name: t["status"] for name, t in json.loads(done.stdout)["targets"].items()}
    assert statuses == {"a": "failed", "b": "skipped"}
    assert sorted(p.name for p in project.out.iterdir()) == ["a", "b"]
    assert (project.out / "b" / "b.txt").read_text() == "a\n"  # the old output stays, alone


def test_recipe_error_is_one_line_and_exit_1(project):
    project.recipe("[targets.x]\nstep = 'exprot'\n")
    proc = run_cli("build", "x", cwd=project.root)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: recipes/main.toml: targets.x.step: unknown step 'exprot' (did you mean 'export'?)"]
    assert not (project.out).exists()
