"""Scheduling policies: longest chain first, cores shared between running steps."""

from __future__ import annotations

import threading

from modelbuild.schedule import CoreShare, ReadyOrder, critical_path


def test_critical_path_ranks_by_the_costliest_chain_after_a_target():
    # fetch -> export -> {lower-fp32 -> pkg-fp32, quantize -> lower-4bit -> pkg-4bit}
    edges = {
        "fetch": ["export"],
        "export": ["lower-fp32", "quantize"],
        "lower-fp32": ["pkg-fp32"],
        "quantize": ["lower-4bit"],
        "lower-4bit": ["pkg-4bit"],
    }
    order = ["fetch", "export", "lower-fp32", "quantize", "lower-4bit", "pkg-fp32", "pkg-4bit"]
    depth = critical_path(order, lambda n: edges.get(n, []), lambda n: 1.0)
    assert depth["quantize"] == 3 and depth["lower-fp32"] == 2 and depth["fetch"] == 5
    # Measured costs override depth: a slow fp32 lowering outranks a quick quantize chain.
    seconds = {"lower-fp32": 300.0, "quantize": 10.0, "lower-4bit": 20.0}
    timed = critical_path(order, lambda n: edges.get(n, []), lambda n: seconds.get(n, 1.0))
    assert timed["lower-fp32"] == 301 and timed["quantize"] == 31
    assert timed["export"] == 302
    # Consumers outside the build are ignored.
    assert critical_path(["pkg-4bit"], lambda n: ["elsewhere"], lambda n: 2.0) == {"pkg-4bit": 2.0}


def _start_order(serial: bool) -> list[str]:
    """The order one-at-a-time starts take in the 135M matrix's graph (as Engine._schedule picks)."""
    edges = {
        "ckpt": ["export", "export-static"],
        "export": ["q8da4w", "xnnpack-fp32"],
        "q8da4w": ["xnnpack-8da4w"],
        "export-static": ["coreml-fp32", "coreml-b4w"],
    }
    producers = {c: [p for p, cs in edges.items() if c in cs] for c in sum(edges.values(), [])}
    order = ["ckpt", "export", "export-static", "q8da4w", "xnnpack-fp32", "xnnpack-8da4w", "coreml-fp32", "coreml-b4w"]
    rank = critical_path(order, lambda n: edges.get(n, []), lambda n: 1.0)
    keys = ReadyOrder(order, rank, lambda n: producers.get(n, []), serial=serial)
    ready, started = ["ckpt"], []
    while ready:
        name = min(ready, key=keys.key)
        ready.remove(name)
        started.append(name)
        keys.finished(name)
        ready += [c for c in edges.get(name, []) if all(p in started for p in producers[c])]
    return started


def test_one_job_at_a_time_finishes_a_chain_before_starting_another():
    # In parallel: the longest chain first, so export-static (rank 2) starts
    # while export's program is still held for xnnpack-fp32 and q8da4w.
    assert _start_order(serial=False) == [
        "ckpt", "export", "export-static", "q8da4w", "xnnpack-fp32", "xnnpack-8da4w", "coreml-fp32", "coreml-b4w"]
    # One at a time: the consumers of what finished last go first (depth first).
    assert _start_order(serial=True) == [
        "ckpt", "export", "q8da4w", "xnnpack-8da4w", "xnnpack-fp32", "export-static", "coreml-fp32", "coreml-b4w"]


def _run_together(share: CoreShare, decisions: list[bool]) -> tuple[list[int | None], list]:
    """Claim one target per decision, then decide them all from separate threads."""
    got: list[int | None] = [None] * len(decisions)
    claims = [share.claim() for _ in decisions]

    def decide(i: int, runs: bool) -> None:
        if runs:
            got[i] = claims[i].run()
        else:
            claims[i].skip()

    threads = [threading.Thread(target=decide, args=(i, runs)) for i, runs in enumerate(decisions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return got, claims


def test_steps_that_run_together_split_the_cores():
    assert _run_together(CoreShare(cores=8), [True, True])[0] == [4, 4]
    assert _run_together(CoreShare(cores=2), [True, True, True])[0] == [1, 1, 1]  # never below one


def test_cache_hits_do_not_take_a_share():
    got, _ = _run_together(CoreShare(cores=4), [True, False, False])
    assert got[0] == 4


def test_finished_steps_give_their_cores_back():
    share = CoreShare(cores=4)
    got, claims = _run_together(share, [True, True])
    assert got == [2, 2]
    for claim in claims:
        claim.release()
        claim.release()  # releasing twice gives nothing back twice
    assert _run_together(share, [True])[0] == [4]


def test_an_undecided_sibling_delays_a_step_only_briefly():
    share = CoreShare(cores=4, decide_wait_s=0.2)
    share.claim()  # a sibling that never decides (say, waiting on another build's lock)
    assert share.claim().run() == 4
