"""An error of one target (a source that cannot be hashed, a store error) fails that
target with a one-line reason naming the path; the build goes on with -k, its
history is written, and ``plan`` keeps working."""

from __future__ import annotations

import pytest
import os

from tests.conftest import run_cli

RECIPE = """
    [targets.bad]
    step = "command"
    command = "echo bad > $MODELBUILD_OUT/x"
    deps = ["deps"]
    [targets.after]
    step = "command"
    inputs = { x = "bad" }
    command = "true"
    [targets.good]
    step = "command"
    command = "echo good > $MODELBUILD_OUT/y"
"""


def _project_with_outside_link(project, tmp_path):
    project.recipe(RECIPE)
    project.file("deps/a.txt", "a\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    os.symlink(outside, project.root / "deps" / "link")
    return project.root / "deps" / "link"


def test_symlink_in_deps_fails_only_that_target(project, tmp_path):
    link = _project_with_outside_link(project, tmp_path)
    result = project.build("after", "good", keep_going=True)
    bad = result.targets["bad"]
    assert bad.status == "failed"
    assert str(link) in bad.reason and "\n" not in bad.reason
    assert "internal error" not in bad.reason and "StoreError" not in bad.reason
    assert result.targets["after"].status == "skipped" and result.targets["after"].blocked_by.failed
    assert result.targets["good"].status == "built"
    assert not result.ok

    from modelbuild.api import explain, plan

    entries = {e["target"]: e for e in explain("bad", project=project.root).entries}
    assert entries["bad"]["status"] == "failed" and str(link) in entries["bad"]["reason"]

    rows = {r.target: r for r in plan(["after", "good"], project=project.root).rows}
    assert rows["bad"].decision == "error" and str(link) in rows["bad"].reasons[0]
    assert rows["after"].decision == "skipped"
    assert rows["good"].decision == "hit"


@pytest.mark.slow
def test_symlink_in_deps_through_the_cli(project, tmp_path):
    link = _project_with_outside_link(project, tmp_path)
    b = run_cli("build", "-k", "after", "good", cwd=project.root)
    assert b.returncode == 1, b.stderr
    assert "internal error" not in b.stderr
    failed = [line for line in b.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "bad" in failed[0] and str(link) in failed[0]
    assert (project.out / "good" / "y").read_text() == "good\n"
    p = run_cli("plan", "after", "good", cwd=project.root)
    assert p.returncode == 0, p.stderr
    lines = {line.split()[1]: line.split()[0] for line in p.stdout.splitlines()}
    assert lines == {"bad": "error", "after": "skipped", "good": "hit"}
