"""The engine: hits, misses with typed reasons, early cutoff, failures, platforms, judging."""

from __future__ import annotations

import os
import stat
import time

import pytest

from modelbuild.plugins import Registry, StepInfo


@pytest.mark.slow
def test_first_build_then_noop(chain):
    first = chain.build()
    assert chain.statuses(first) == {"a": "built", "b": "built", "c": "built"}
    assert all(r.reason == "new target" for r in first.targets.values())
    assert (chain.out / "c" / "c.txt").read_text() == "ATAD\nOLLEH\n"
    second = chain.build()
    assert chain.statuses(second) == {"a": "cached", "b": "cached", "c": "cached"}
    assert second.targets["c"].digest == first.targets["c"].digest


@pytest.mark.slow
def test_param_change_reruns_downstream_with_reason(chain):
    chain.build()
    result = chain.build(overrides=["vars.greeting=bye"])
    assert chain.statuses(result) == {"a": "built", "b": "built", "c": "built"}
    assert "params changed: command" in result.targets["a"].reason
    assert result.targets["b"].reason.startswith("input changed: src (digest ")


@pytest.mark.slow
def test_early_cutoff(chain):
    """A rebuilt step with byte-identical output leaves its dependents as hits."""
    chain.build()
    (chain.root / "data.txt").write_text("DATA\n")  # b upper-cases: same b.txt
    result = chain.build()
    assert chain.statuses(result) == {"a": "built", "b": "built", "c": "cached"}
    assert result.targets["a"].reason.startswith("source changed: data.txt")


@pytest.mark.slow
def test_revert_hits_earlier_result(chain):
    chain.build()
    chain.build(overrides=["vars.greeting=bye"])
    result = chain.build()
    assert chain.statuses(result) == {"a": "cached", "b": "cached", "c": "cached"}
    assert result.targets["a"].reason == "cached: built before with the same inputs"


@pytest.mark.slow
def test_missing_output_is_restored_from_cache(chain):
    chain.build()
    from modelbuild.api import clean

    assert clean(["c"], project=chain.root) == ["c"]
    assert not (chain.out / "c").exists()
    result = chain.build()
    assert result.targets["c"].status == "cached"
    assert (chain.out / "c" / "c.txt").exists()


@pytest.mark.slow
def test_outputs_are_protected(chain):
    chain.build()
    path = chain.out / "c" / "c.txt"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    assert not (path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow
def test_corrupt_blob_is_detected_and_rebuilt(chain):
    first = chain.build()
    path = chain.out / "a" / "a.txt"  # a hard link to (or a reflink of) the blob
    os.chmod(path, 0o644)
    path.write_text("tampered\n")
    result = chain.build()
    a = result.targets["a"]
    assert a.status == "built" and a.reason.startswith("cache entry corrupt")
    assert (chain.out / "a" / "a.txt").read_text() == "data\nhello\n"
    assert result.targets["a"].digest == first.targets["a"].digest
    assert result.targets["c"].status == "cached"


@pytest.mark.slow
def test_failure_keeps_log_and_skips_downstream(project):
    project.recipe("""
        [targets.bad]
        step = "command"
        command = "echo about to fail; exit 3"
        [targets.after]
        step = "command"
        inputs = { x = "bad" }
        command = "true"
        [targets.other]
        step = "command"
        command = "echo ok > $MODELBUILD_OUT/ok"
    """)
    result = project.build("after", "other", keep_going=True, jobs=1)
    assert result.targets["bad"].status == "failed"
    assert "exited with code 3" in result.targets["bad"].reason
    assert "about to fail" in result.targets["bad"].log.read_text()
    assert result.targets["after"].status == "skipped" and "bad failed" in result.targets["after"].reason
    assert result.targets["other"].status == "built"
    assert not result.ok
    assert not (project.out / "bad").exists()


def test_stop_after_failure_without_keep_going(project):
    project.recipe("""
        [targets.bad]
        step = "command"
        command = "exit 1"
        [targets.z]
        step = "command"
        inputs = { x = "bad" }
        command = "true"
    """)
    result = project.build("z", jobs=1)
    assert result.targets["bad"].status == "failed"
    assert result.targets["z"].status == "skipped"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, fragment", [("SEGV", "SIGSEGV"), ("KILL", "SIGKILL (out of memory?)")])
def test_crash_of_step_process_fails_only_that_target(project, signal_name, fragment):
    # The shell's parent is the step's worker process: this is a crash in the step itself.
    project.recipe(f"""
        [targets.crash]
        step = "command"
        command = "echo partial > $MODELBUILD_OUT/x; kill -{signal_name} $PPID; sleep 5"
    """)
    result = project.build("crash")
    r = result.targets["crash"]
    assert r.status == "failed" and fragment in r.reason
    assert r.log.exists()
    again = project.build("crash")
    assert again.targets["crash"].status == "failed"  # nothing was cached


def test_missing_declared_output_and_source(project):
    project.recipe("""
        [targets.noout]
        step = "command"
        command = "echo x > stray.txt"
        outs = ["result.bin"]
        [targets.nosrc]
        step = "command"
        command = "true"
        deps = ["missing.txt"]
    """)
    result = project.build("noout", "nosrc", keep_going=True)
    assert "declared output missing: result.bin" in result.targets["noout"].reason
    assert "stray.txt" in result.targets["noout"].reason
    assert result.targets["nosrc"].reason.startswith("missing input file: missing.txt")


def test_symlink_output_is_refused(project):
    project.recipe("""
        [targets.link]
        step = "command"
        command = "ln -s /etc/passwd $MODELBUILD_OUT/passwd"
    """)
    result = project.build("link")
    assert result.targets["link"].status == "failed"
    assert "passwd" in result.targets["link"].reason


@pytest.mark.slow
def test_parallel_independent_steps(project):
    project.recipe("""
        [targets.x]
        step = "command"
        command = "sleep 1; echo x > $MODELBUILD_OUT/x"
        [targets.y]
        step = "command"
        command = "sleep 1; echo y > $MODELBUILD_OUT/y"
        [targets.both]
        step = "command"
        inputs = { x = "x", y = "y" }
        command = "cat $MODELBUILD_INPUT_X/x $MODELBUILD_INPUT_Y/y > $MODELBUILD_OUT/xy"
    """)
    events = []
    result = project.build("both", jobs=2, on_event=lambda e: events.append((e.kind, e.target)))
    assert result.ok
    # Both leaves started before either finished: they ran at the same time.
    kinds = [e for e in events if e[1] in ("x", "y")]
    assert [k for k, _ in kinds[:2]] == ["start", "start"]
    assert (project.out / "both" / "xy").read_text() == "x\ny\n"



@pytest.mark.slow
def test_parallel_steps_share_the_cores(project, monkeypatch):
    """Each step process gets cores // (steps running), so torch in each starts that many threads."""
    monkeypatch.setattr("modelbuild.engine.os.cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    project.recipe("""
        [vars]
        tag = "one"
        [targets.x]
        step = "command"
        command = "sleep 1; echo $OMP_NUM_THREADS > $MODELBUILD_OUT/threads"
        [targets.y]
        step = "command"
        command = "sleep 1; echo ${tag} $OMP_NUM_THREADS > $MODELBUILD_OUT/threads"
    """)
    together = project.build("x", "y", jobs=2)
    assert (project.out / "x" / "threads").read_text() == "2\n"
    assert (project.out / "y" / "threads").read_text() == "one 2\n"
    # x is a cache hit now: y runs alone and gets every core.
    alone = project.build("x", "y", jobs=2, overrides=["vars.tag=two"])
    assert project.statuses(alone) == {"x": "cached", "y": "built"}
    assert (project.out / "y" / "threads").read_text() == "two 4\n"
    assert together.ok and alone.ok


@pytest.mark.slow
def test_siblings_are_counted_before_any_of_them_decides(project, monkeypatch):
    """Ready targets are claimed as a batch before the first starts: when the
    scheduler thread is slow to reach the second one (a loaded machine; here a
    claim that sleeps), the first must not decide it runs alone."""
    from modelbuild import schedule

    monkeypatch.setattr("modelbuild.engine.os.cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    claims = []
    claim = schedule.CoreShare.claim

    def slow_second_claim(self):
        claims.append(1)
        if len(claims) == 2:
            time.sleep(1.5)
        return claim(self)

    monkeypatch.setattr(schedule.CoreShare, "claim", slow_second_claim)
    project.recipe("""
        [targets.x]
        step = "command"
        command = "sleep 1; echo $OMP_NUM_THREADS > $MODELBUILD_OUT/threads"
        [targets.y]
        step = "command"
        command = "sleep 1; echo y $OMP_NUM_THREADS > $MODELBUILD_OUT/threads"
    """)
    assert project.build("x", "y", jobs=2).ok
    assert [(project.out / t / "threads").read_text() for t in ("x", "y")] == ["2\n", "y 2\n"]


@pytest.mark.slow
def test_head_of_the_longest_chain_starts_first(project):
    project.recipe("""
        [targets.a-leaf]
        step = "command"
        command = "echo leaf > $MODELBUILD_OUT/t"
        [targets.z1]
        step = "command"
        command = "echo 1 > $MODELBUILD_OUT/t"
        [targets.z2]
        step = "command"
        inputs = { i = "z1" }
        command = "cat $MODELBUILD_INPUT_I/t > $MODELBUILD_OUT/t"
        [targets.z3]
        step = "command"
        inputs = { i = "z2" }
        command = "cat $MODELBUILD_INPUT_I/t > $MODELBUILD_OUT/t"
    """)
    starts = []
    result = project.build("a-leaf", "z3", jobs=1, on_event=lambda e: e.kind == "start" and starts.append(e.target))
    assert result.ok
    assert starts[0] == "z1"  # the stable topological order alone would start a-leaf


# -- test step plugins (platforms, judging) ------------------------------------------

PLUGIN = '''
from modelbuild.step import Step, Params, Input, Requirements, Verdict, PlatformUnavailable
import json

class MacOnly(Step):
    name = "maconly"
    output = "files"
    requires = Requirements(platforms=("macos",))
    def run(self, ctx):
        (ctx.out / "x").write_text("mac")
    def elsewhere(self, target, params):
        return f"xcrun do-it {target}"

class MacMeasure(Step):
    name = "macmeasure"
    output = "measurements"
    requires = Requirements(platforms=("macos",))
    def run(self, ctx):
        (ctx.out / "measurements.json").write_text("{}")

class Late(Step):
    name = "late"
    output = "files"
    def run(self, ctx):
        raise PlatformUnavailable("macOS", command="run it on a Mac")

class MeasureParams(Params):
    value: float = 0.5
    minimum: float = 0.0

class Measure(Step):
    name = "measure"
    output = "measurements"
    judge_params = frozenset({"minimum"})
    Params = MeasureParams
    def run(self, ctx):
        with open(ctx.project / "runs.log", "a") as fh:
            fh.write("run\\n")
        (ctx.out / "measurements.json").write_text(json.dumps({"value": ctx.params.value}))
    def judge(self, params, artifact):
        value = json.loads((artifact.path / "measurements.json").read_text())["value"]
        if value < params.minimum:
            return Verdict(False, f"value {value} < minimum {params.minimum}", {"value": value})
        return Verdict(True, "", {"value": value})
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "mb_test_plugins.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    real = Registry.discover.__func__

    def discover(cls):
        reg = real(cls)
        extra = {n: StepInfo(n, f"mb_test_plugins:{c}") for n, c in [("maconly", "MacOnly"), ("late", "Late"), ("measure", "Measure"), ("macmeasure", "MacMeasure")]}
        return cls({**{i.name: i for i in reg}, **extra})

    monkeypatch.setattr(Registry, "discover", classmethod(discover))


def test_platform_unavailable_is_distinct_and_does_not_fail(project, plugins):
    project.recipe("""
        [targets.mac]
        step = "maconly"
        [targets.after]
        step = "command"
        inputs = { x = "mac" }
        command = "true"
        [targets.late]
        step = "late"
        [targets.fine]
        step = "command"
        command = "true"
    """)
    result = project.build("after", "late", "fine")
    assert result.targets["mac"].status == "unavailable"
    assert result.targets["mac"].reason == "needs macOS"
    assert result.targets["mac"].command == "xcrun do-it mac"
    assert result.targets["late"].status == "unavailable" and result.targets["late"].command == "run it on a Mac"
    assert result.targets["after"].status == "skipped"
    assert result.targets["fine"].status == "built"
    assert result.ok


def test_platform_override_runs_it(project, plugins, monkeypatch):
    project.recipe("[targets.mac]\nstep = 'maconly'\n")
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    assert project.build("mac").targets["mac"].status == "built"


def test_threshold_change_rejudges_without_rerunning(project, plugins):
    project.recipe("""
        [targets.m]
        step = "measure"
        value = 0.7
        minimum = 0.5
    """)
    assert project.build("m").targets["m"].status == "built"
    failed = project.build("m", overrides=["targets.m.minimum=0.9"])
    assert failed.targets["m"].status == "failed"
    assert failed.targets["m"].reason == "value 0.7 < minimum 0.9"
    assert not failed.ok
    passed = project.build("m", overrides=["targets.m.minimum=0.6"])
    assert passed.targets["m"].status == "cached" and passed.targets["m"].verdict["ok"]
    assert (project.root / "runs.log").read_text() == "run\n"  # measured once


def test_require_validation_fails_unvalidated(project, plugins):
    project.recipe("[targets.v]\nstep = 'macmeasure'\n[targets.other]\nstep = 'maconly'\n")
    relaxed = project.build("v", "other")
    assert relaxed.targets["v"].status == "unavailable"
    assert relaxed.targets["v"].reason == "not validated here: needs macOS"
    assert relaxed.ok
    strict = project.build("v", "other", require_validation=True)
    assert strict.targets["v"].status == "failed" and "--require-validation" in strict.targets["v"].reason
    assert strict.targets["other"].status == "unavailable"  # not a validation: stays unavailable
    assert not strict.ok


@pytest.mark.slow
def test_report_gives_each_run_step_its_peak_rss(project):
    """The step's own peak RSS (including what it waited for) is in the report; cached steps have none.

    This process holds 600 MB while building: a worker forked from it must not
    report this process's peak as its own (ru_maxrss survives execve).
    """
    import sys

    ballast = bytearray(600 * 2**20)
    ballast[::4096] = bytes(len(ballast) // 4096)

    project.recipe(f"""
        [targets.small]
        step = "command"
        command = "echo small > $MODELBUILD_OUT/s.txt"

        [targets.big]
        step = "command"
        command = "{sys.executable} -c 'b = bytearray(400 * 2**20); b[::4096] = bytes(len(b) // 4096)' && echo big > $MODELBUILD_OUT/b.txt"
    """)
    first = project.build("small", "big")
    assert first.targets["big"].peak_rss_bytes > 400 * 2**20
    assert 0 < first.targets["small"].peak_rss_bytes < 400 * 2**20
    assert first.to_json()["targets"]["big"]["peak_rss_bytes"] == first.targets["big"].peak_rss_bytes
    again = project.build("small", "big")
    assert again.targets["big"].status == "cached" and again.targets["big"].peak_rss_bytes is None
    del ballast
