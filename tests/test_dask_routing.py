"""Requirements -> Dask worker resources, and the check against what workers advertise (no cluster needed)."""

from __future__ import annotations

from modelbuild.routing import demand, describe_workers, lacking
from modelbuild.step import Requirements

LINUX = {"cpu": 8, "linux": 1}
MAC = {"macos": 1, "xcode": 1}


def test_platforms_and_tools_become_resources():
    assert demand(Requirements(), [LINUX, MAC]) == {}
    assert demand(Requirements(platforms=("macos",), tools=("xcrun",)), [LINUX, MAC]) == {"macos": 1.0, "xcode": 1.0}
    assert demand(Requirements(tools=("xcodebuild", "ffmpeg")), [LINUX]) == {"xcode": 1.0, "ffmpeg": 1.0}


def test_a_step_accepting_several_platforms_takes_one_the_cluster_has():
    either = Requirements(platforms=("linux", "macos"))
    assert demand(either, [MAC]) == {"macos": 1.0}
    assert demand(either, [LINUX, MAC]) == {"linux": 1.0}
    assert demand(either, [{"cpu": 4}]) == {"linux": 1.0}  # none: the first, which the check then refuses


def test_memory_is_a_demand_only_where_workers_count_it():
    big = Requirements(memory_gb=40)
    assert demand(big, [LINUX, MAC]) == {}
    assert demand(big, [{"memory_gb": 64}, LINUX]) == {"memory_gb": 40.0}
    assert lacking({"memory_gb": 40.0}, [{"memory_gb": 32}]) == "no worker with memory_gb>=40"
    assert lacking({"memory_gb": 40.0}, [{"memory_gb": 32}, {"memory_gb": 64}]) is None


def test_lacking_names_what_no_single_worker_has():
    assert lacking({}, [LINUX]) is None
    assert lacking({}, []) == "no worker in the cluster"
    assert lacking({"macos": 1.0}, [LINUX]) == "no worker with macos"
    assert lacking({"macos": 1.0, "xcode": 1.0}, [LINUX, {"macos": 1}]) == "no worker with xcode"
    # Each exists, but never on one worker.
    assert lacking({"macos": 1.0, "xcode": 1.0}, [{"macos": 1}, {"xcode": 1}]) == "no worker with all of macos, xcode"
    assert lacking({"macos": 1.0, "xcode": 1.0}, [LINUX, MAC]) is None


def test_the_cluster_is_described_for_people():
    assert describe_workers({}) == "no workers"
    assert describe_workers({"mac": MAC, "ci-1": LINUX, "bare": {}}) == \
        "bare (no resources); ci-1 (cpu=8, linux=1); mac (macos=1, xcode=1)"
    assert describe_workers({"w": {"memory_gb": 0.5}}) == "w (memory_gb=0.5)"


def test_a_worker_refuses_a_key_that_does_not_describe_its_toolchain(tmp_path):
    """Compared both ways: an entry of the key that the worker's toolchain lacks (or the reverse:
    a Linux client keys mlmodelc with "xcode: not available", a Mac worker with only the command
    line tools has coremlcompiler but no xcode entry) fails the step instead of caching its
    output under a key that does not describe it. No cluster: the task function itself."""
    from modelbuild.dask_task import _info, _run
    from modelbuild.plugins import Registry
    from modelbuild.store import Store

    entry = Registry.discover().get("command").entry
    with Store(tmp_path / "cache") as store:
        code = _info("command", entry).code(store.cache).fingerprint
    spec = {"job": {"step": "command", "entry": entry, "target": "t", "inputs": {}}, "store": str(tmp_path / "cache"),
            "key": "0" * 64, "record": {"step_code": code, "toolchain": {"xcode": "not available"}},
            "inputs": {}, "requirements": {}, "remote": None}
    done = _run(spec, "mac-mini")
    assert done["status"] == "failed"
    assert done["reason"] == "worker mac-mini has no xcode, the key was computed with not available"


def test_workers_that_disagree_on_a_toolchain_key_the_step_with_the_larger_group_and_pin_it():
    from modelbuild.routing import pick_toolchain

    new, old = {"coremlcompiler": "3500.14.1", "macos_sdk": "15.0"}, {"coremlcompiler": "3404.4.1", "macos_sdk": "15.0"}
    one = pick_toolchain({"mac-mini": old})
    assert (one.versions, one.workers, one.note) == (old, ("mac-mini",), "keyed with the toolchain of worker mac-mini")
    two = pick_toolchain({"mac-3": new, "mac-1": old, "mac-2": new})
    assert (two.versions, two.workers) == (new, ("mac-2", "mac-3"))
    assert two.note == "keyed with the toolchain of workers mac-2, mac-3 (runs only there; mac-1 has coremlcompiler 3404.4.1)"
    # A tie: the group with the first name, whatever order the cluster answered in.
    assert pick_toolchain({"mac-b": new, "mac-a": old}).workers == ("mac-a",)
    # A worker that could not say (its step plugin is missing, ...) is left out, and named.
    some = pick_toolchain({"mac-1": old, "mac-2": ImportError("No module named 'mb_steps'"), "mac-3": None})
    assert some.workers == ("mac-1",)
    assert some.note.endswith("(runs only there; mac-2 did not say (ImportError: No module named 'mb_steps'); "
                              "mac-3 did not say (no answer))")
    assert pick_toolchain({"mac-1": RuntimeError("boom")}) is None
