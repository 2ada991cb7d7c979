"""Fused execution (fused.py) with test plugins that hand values over in memory: no ML.

The chain is a (command) -> b -> c -> d (fz-append, each taking the one
before in memory) -> e (command). Fused and unfused builds must store the
same bytes under the same keys; a failure or a kill in the middle must leave
the finished steps recorded and nothing else, as without fusion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fused_steps import CHAIN, install_fused_steps, log_of

STEPS = ("a", "b", "c", "d", "e")


@pytest.fixture
def fz(project, tmp_path, monkeypatch):
    install_fused_steps(tmp_path, monkeypatch)
    project.recipe(CHAIN)
    project.file("data.txt", "x")
    return project


def _pid(log: str) -> str:
    return log.split("running in pid ")[1].split()[0]


def _stored(result) -> dict[str, tuple[str, str]]:
    return {n: (r.key, r.digest) for n, r in result.targets.items()}


@pytest.mark.slow
def test_fused_chain_runs_in_one_process_and_stores_what_unfused_stores(fz, tmp_path, monkeypatch):
    fused = fz.build("e")
    assert fz.statuses(fused) == dict.fromkeys(STEPS, "built")
    b, c, d = (log_of(fused, n) for n in "bcd")
    assert "got files" in b  # a is a command step: it keeps no value
    assert "got memory" in c and "got memory" in d and "handed over in memory by c" in d
    assert _pid(b) == _pid(c) == _pid(d)
    assert (fz.out / "e" / "e.txt").read_text() == "dcbx"
    # Each step keeps its own duration and peak memory.
    assert all(fused.targets[n].peak_rss_bytes for n in STEPS)

    monkeypatch.setenv("MODELBUILD_FUSE", "0")  # the switch for comparisons (--no-fuse, fuse=False)
    unfused = fz.build("e", cache_dir=tmp_path / "other-cache", out_dir=tmp_path / "other-out")
    assert fz.statuses(unfused) == dict.fromkeys(STEPS, "built")
    assert all("got files" in log_of(unfused, n) for n in "bcd")
    assert len({_pid(log_of(unfused, n)) for n in "bcd"}) == 3
    assert _stored(unfused) == _stored(fused)  # same keys, same bytes


@pytest.mark.slow
def test_a_tweak_reruns_only_what_it_touches(fz):
    fz.build("e")
    tweaked = fz.build("e", overrides=["targets.c.suffix=C"])
    assert fz.statuses(tweaked) == {"a": "cached", "b": "cached", "c": "built", "d": "built", "e": "built"}
    assert "got files" in log_of(tweaked, "c")  # b was a hit: nothing held, c reads b's files
    assert "got memory" in log_of(tweaked, "d")
    assert (fz.out / "e" / "e.txt").read_text() == "dCbx"


@pytest.mark.slow
def test_failure_mid_chain_records_the_finished_steps(fz, tmp_path):
    from modelbuild.api import plan

    failing = ["targets.d.fail=true"]
    runs = {}
    for fuse, cache in ((True, fz.cache), (False, tmp_path / "unfused-cache")):
        result = fz.build("e", overrides=failing, fuse=fuse, cache_dir=cache, out_dir=tmp_path / f"out-{fuse}")
        assert fz.statuses(result) == {"a": "built", "b": "built", "c": "built", "d": "failed", "e": "skipped"}
        assert result.targets["d"].reason == "asked to fail"
        rows = {r.target: r.decision for r in plan(["e"], project=fz.root, cache_dir=cache, overrides=failing).rows}
        assert rows == {"a": "hit", "b": "hit", "c": "hit", "d": "miss", "e": "pending"}
        runs[fuse] = _stored(result)
    assert runs[True] == runs[False]
    again = fz.build("e")  # d no longer fails: the finished steps are hits, the rest runs
    assert fz.statuses(again) == {"a": "cached", "b": "cached", "c": "cached", "d": "built", "e": "built"}


@pytest.mark.slow
def test_one_producer_two_consumers_one_takes_the_value(fz, tmp_path):
    fz.recipe(CHAIN + """
[targets.d2]
step = "fz-append"
inputs = { src = "c" }
suffix = "2"
""")
    fused = fz.build("d", "d2", jobs=1)
    logs = [log_of(fused, n) for n in ("d", "d2")]
    assert sorted("got memory" in log for log in logs) == [False, True]
    unfused = fz.build("d", "d2", jobs=1, cache_dir=tmp_path / "c2", out_dir=tmp_path / "o2", fuse=False)
    assert _stored(unfused) == _stored(fused)


@pytest.mark.slow
def test_one_job_at_a_time_holds_one_chain_in_memory(fz):
    # Two chains from a: b -> c and b2 -> c2. At -j 1 a chain is finished
    # before the next starts, so one session runs all four steps and never
    # holds b's value while b2 starts a second session with a second value.
    fz.recipe(CHAIN + """
[targets.b2]
step = "fz-append"
inputs = { src = "a" }
suffix = "B"

[targets.c2]
step = "fz-append"
inputs = { src = "b2" }
suffix = "C"
""")
    result = fz.build("c", "c2", jobs=1)
    logs = {n: log_of(result, n) for n in ("b", "c", "b2", "c2")}
    assert "got memory" in logs["c"] and "got memory" in logs["c2"]
    assert len({_pid(log) for log in logs.values()}) == 1


@pytest.mark.slow
def test_kill_minus_9_during_a_fused_chain_leaves_the_cache_consistent(fz):
    from modelbuild.api import plan
    from modelbuild.store import Store

    fz.recipe(CHAIN.replace('suffix = "d"', 'suffix = "d"\nhold = "hold/file"'))
    (fz.root / "hold").mkdir()
    (fz.root / "hold" / "file").touch()
    env = {k: v for k, v in os.environ.items() if k != "MODELBUILD_CACHE_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "modelbuild.cli", "build", "-q", "e"], cwd=fz.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = fz.root / "hold" / "started"
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "d never started"
    session = int(started.read_text())  # the fused session running b, c and now d
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(session), "the fused session outlived the killed build"

    rows = {r.target: r for r in plan(["e"], project=fz.root).rows}
    assert {n: r.decision for n, r in rows.items()} == {"a": "hit", "b": "hit", "c": "hit", "d": "miss", "e": "pending"}
    with Store(fz.cache) as store:
        assert store.get_action(rows["d"].key) is None
    (fz.root / "hold" / "file").unlink()
    again = fz.build("e")
    assert fz.statuses(again) == {"a": "cached", "b": "cached", "c": "cached", "d": "built", "e": "built"}
    assert again.targets["d"].key == rows["d"].key
    assert (fz.out / "e" / "e.txt").read_text() == "dcbx"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
