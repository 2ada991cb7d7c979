"""Statuses are typed values: a ``Status`` enum and a ``blocked_by`` field, never read back from text."""

from __future__ import annotations

import json

import pytest

from tests.plugin_steps import install_test_steps


@pytest.fixture
def steps(tmp_path, monkeypatch):
    install_test_steps(tmp_path, monkeypatch)


def test_an_upstream_named_failed_does_not_make_a_failure(project, steps):
    """Skipped because an input is unavailable here is not a failure, whatever the input is called."""
    project.recipe("""
        [targets.x-failed]
        step = "maconly"
        [targets.after]
        step = "command"
        inputs = { x = "x-failed" }
        command = "true"
        [targets.later]
        step = "command"
        inputs = { x = "after" }
        command = "true"
    """)
    result = project.build("later")
    from modelbuild.outcome import Blocker, Status

    assert result.targets["x-failed"].status is Status.UNAVAILABLE
    after = result.targets["after"]
    assert after.status is Status.SKIPPED
    assert after.blocked_by == Blocker(target="x-failed", failed=False, origin="x-failed")
    assert result.targets["later"].blocked_by == Blocker(target="after", failed=False, origin="x-failed")
    assert result.ok


def test_failure_propagates_through_typed_fields(project):
    project.recipe("""
        [targets.bad]
        step = "command"
        command = "exit 4"
        [targets.mid]
        step = "command"
        inputs = { x = "bad" }
        command = "true"
        [targets.end]
        step = "command"
        inputs = { x = "mid" }
        command = "true"
    """)
    result = project.build("end", keep_going=True)
    from modelbuild.outcome import Blocker, Status

    assert result.targets["bad"].status is Status.FAILED
    assert result.targets["mid"].blocked_by == Blocker("bad", failed=True, origin="bad")
    assert result.targets["end"].blocked_by == Blocker("mid", failed=True, origin="bad")
    assert "bad failed" in result.targets["end"].reason  # the text is still there for people
    assert not result.ok


def test_ok_never_reads_reason_text(project):
    """A reason that happens to say "failed" changes nothing: only the typed fields count."""
    project.recipe("[targets.a]\nstep = 'command'\ncommand = 'echo a > $MODELBUILD_OUT/a'\n")
    result = project.build("a")
    from modelbuild.outcome import Status

    result.targets["a"].reason = "failed failed failed"
    assert result.ok
    result.targets["a"].status = Status.SKIPPED
    assert result.ok  # skipped for no failure
    result.targets["a"].status = Status.FAILED
    assert not result.ok


def test_status_is_a_str_enum_in_every_output(project):
    project.recipe("[targets.a]\nstep = 'command'\ncommand = 'echo a > $MODELBUILD_OUT/a'\n")
    result = project.build("a")
    from modelbuild.outcome import Status

    status = result.targets["a"].status
    assert isinstance(status, Status) and status == "built" and f"{status}" == "built" and f"{status:<7}|" == "built  |"
    data = json.loads(json.dumps(result.to_json()))
    assert data["targets"]["a"]["status"] == "built"
    assert data["targets"]["a"]["blocked_by"] is None
    assert data["counts"] == {"built": 1, "cached": 0, "failed": 0, "skipped": 0, "unavailable": 0}
    again = project.build("a")
    assert again.targets["a"].status is Status.CACHED
