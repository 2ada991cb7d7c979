"""The library API closes the store it opens: no file descriptors, scratch
sessions or session locks are left behind, however many calls a process makes."""

from __future__ import annotations

import gc
import os

import pytest


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # the listing's own descriptor, already closed
    return fds


def _ours(project) -> set[str]:
    """Open descriptors pointing into the project (its cache, out/, recipes)."""
    return {fd for fd in _open_fds() if str(project.root) in fd}


def _leftovers(project) -> tuple[list[str], list[str]]:
    sessions = sorted(os.listdir(project.cache / "tmp"))
    locks = sorted(p for p in os.listdir(project.cache / "locks") if p.startswith("s-"))
    return sessions, locks


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_repeated_api_calls_leak_nothing(chain):
    from modelbuild import api

    chain.build(jobs=2)  # warm up: imports, the cache's first creation
    gc.collect()
    before = _open_fds()
    for i in range(6):
        result = chain.build(jobs=2, overrides=[f"vars.greeting=hi{i % 2}"])
        assert result.ok
        api.plan(["c"], project=chain.root)
        api.explain("c", project=chain.root)
        api.cache_stats(project=chain.root)
        api.cache_verify(project=chain.root)
        api.clean(["c"], project=chain.root)
    api.cache_gc(project=chain.root)
    gc.collect()
    leaked = _open_fds() - before
    assert not {fd for fd in leaked if str(chain.root) in fd}, leaked
    assert len(_open_fds()) <= len(before), leaked
    assert _leftovers(chain) == ([], [])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_store_close_releases_everything(tmp_path):
    from modelbuild.store import Store

    before = _open_fds()
    with Store(tmp_path / "cache") as store:
        store.scratch_dir("x")
        store.stats()  # touches the database from this thread
        import threading

        t = threading.Thread(target=lambda: store.get_action("nope"))  # and from another one
        t.start()
        t.join()
    gc.collect()
    assert not [fd for fd in _open_fds() - before if str(tmp_path) in fd]
    assert os.listdir(tmp_path / "cache" / "tmp") == []
    assert [p for p in os.listdir(tmp_path / "cache" / "locks") if p.startswith("s-")] == []
