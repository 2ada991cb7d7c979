"""``plan`` is the build's dry run: one decision function (``Engine.decide``) serves both.

Each test plans, then builds, and checks that the plan predicted what the build did.
"""

from __future__ import annotations

import pytest

from tests.plugin_steps import install_test_steps

#: What a plan row's decision means for the build's status ("pending" may end either way).
EXPECTED = {"hit": {"cached"}, "miss": {"built"}, "pending": {"built", "cached"}, "unavailable": {"unavailable"},
            "skipped": {"skipped"}, "error": {"failed"}}


def plan_then_build(project, *targets, **kwargs):
    from modelbuild.api import plan

    predicted = plan(list(targets), project=project.root, overrides=kwargs.get("overrides"))
    result = project.build(*targets, keep_going=True, **kwargs)
    rows = {r.target: r for r in predicted.rows}
    assert list(rows) == list(result.targets)
    for name, row in rows.items():
        got = result.targets[name]
        assert got.status in EXPECTED[row.decision], (name, row, got)
        if row.decision in ("hit", "miss", "skipped", "unavailable", "error"):
            assert list(row.reasons) == ([got.reason] if row.decision in ("skipped", "unavailable", "error") else got.reasons), (name, row, got)
        if row.decision in ("skipped",):
            assert row.blocked_by == got.blocked_by
    return rows, result


@pytest.fixture
def steps(tmp_path, monkeypatch):
    install_test_steps(tmp_path, monkeypatch)


def test_unavailable_input_is_skipped_in_plan_as_in_build(project, steps):
    project.recipe("""
        [targets.mac]
        step = "maconly"
        [targets.after]
        step = "command"
        inputs = { x = "mac" }
        command = "true"
        [targets.last]
        step = "command"
        inputs = { x = "after" }
        command = "true"
    """)
    rows, result = plan_then_build(project, "last")
    assert [rows[n].decision for n in ("mac", "after", "last")] == ["unavailable", "skipped", "skipped"]
    assert rows["mac"].reasons == ("needs macOS",) and rows["mac"].command == "xcrun do-it mac"
    assert result.targets["after"].status == "skipped"


def test_unavailable_target_downstream_of_a_miss_is_unavailable(project, steps):
    """A requirement the host lacks is known before any input digest is."""
    project.recipe("""
        [targets.src]
        step = "command"
        command = "echo x > $MODELBUILD_OUT/x"
        [targets.mac]
        step = "maconly"
        inputs = { src = "src" }
        [targets.after]
        step = "command"
        inputs = { m = "mac" }
        command = "true"
    """)
    rows, _ = plan_then_build(project, "after")
    assert [rows[n].decision for n in ("src", "mac", "after")] == ["miss", "unavailable", "skipped"]


@pytest.mark.slow
def test_downstream_of_a_miss_is_pending(project):
    project.recipe("""
        [targets.src]
        step = "command"
        command = "echo x > $MODELBUILD_OUT/x"
        [targets.mid]
        step = "command"
        inputs = { s = "src" }
        command = "cat $MODELBUILD_INPUT_S/x > $MODELBUILD_OUT/x"
        [targets.user]
        step = "command"
        inputs = { m = "mid" }
        command = "cat $MODELBUILD_INPUT_M/x > $MODELBUILD_OUT/x"
    """)
    rows, _ = plan_then_build(project, "user")
    assert [rows[n].decision for n in ("src", "mid", "user")] == ["miss", "pending", "pending"]
    assert rows["mid"].reasons == ("input src will be rebuilt (an identical rebuild keeps this a hit)",)
    assert rows["user"].reasons == ("input mid will be rebuilt (an identical rebuild keeps this a hit)",)
    rows, _ = plan_then_build(project, "user")
    assert [rows[n].decision for n in ("src", "mid", "user")] == ["hit", "hit", "hit"]


def test_an_error_is_a_failure_in_plan_and_in_build(project):
    project.recipe("""
        [targets.nosrc]
        step = "command"
        command = "true"
        deps = ["missing.txt"]
        [targets.after]
        step = "command"
        inputs = { x = "nosrc" }
        command = "true"
    """)
    rows, result = plan_then_build(project, "after")
    assert rows["nosrc"].decision == "error" and rows["nosrc"].reasons[0].startswith("missing input file: missing.txt")
    assert rows["after"].decision == "skipped" and rows["after"].blocked_by.failed
    assert not result.ok


@pytest.mark.slow
def test_hit_reasons_are_the_builds(chain):
    """Restoring an earlier configuration: plan and build both say it was built before."""
    plan_then_build(chain, "c")
    plan_then_build(chain, "c", overrides=["vars.greeting=bye"])
    rows, result = plan_then_build(chain, "c")
    assert rows["a"].decision == "hit"
    assert rows["a"].reasons == ("cached: built before with the same inputs",)
    rows, _ = plan_then_build(chain, "c")
    assert rows["a"].reasons == ("up to date",)


@pytest.mark.slow
def test_plan_and_build_call_the_same_decision(chain, monkeypatch):
    from modelbuild.api import plan
    from modelbuild.engine import Engine

    calls = []
    real = Engine.decide

    def spy(self, node, upstream, **kwargs):
        calls.append(node.name)
        return real(self, node, upstream, **kwargs)

    monkeypatch.setattr(Engine, "decide", spy)
    plan(["c"], project=chain.root)
    assert calls == ["a", "b", "c"]  # pending rows are decisions too
    calls.clear()
    chain.build("c")
    assert sorted(calls) == ["a", "b", "c"]
