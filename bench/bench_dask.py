"""What the Dask executor adds to a build: a cold build of a tiny command graph, locally and on Dask.

The graph is the tests' chain (a -> b -> c, three command steps, no ML) plus
``--width`` independent copies of it. Each run starts from an empty cache
(a fresh project directory); local and Dask runs are interleaved, so a change
of load hits both alike. The cluster is a real scheduler and ``--workers``
single-threaded worker processes on 127.0.0.1, started once (its start-up is
printed, not counted). Prints a table of medians and the difference per build
and per step. Run:

    .venv/bin/python bench/bench_dask.py [--runs 5] [--workers 1] [--width 1]
    .venv/bin/python bench/bench_dask.py --matrix [--step-s 2] [--burn]
    .venv/bin/python bench/bench_dask.py --matrix --model tiny [--runs 3]

``--matrix`` times instead the shape of issue 14's four-variant matrix (one
fetch, two exports, four lowerings: llm_inputs.MATRIX) on Dask with two
single-threaded workers against one, each step a command that sleeps
``--step-s`` seconds (the scheduling alone), or with ``--burn`` spends them
on the CPU (then the ratio needs two free cores). ``--matrix --model SIZE``
builds the real matrix instead (llm_inputs.RECIPE's four variants of the
synthetic SmolLM2 checkpoint of that size: XNNPACK fp32 and 8da4w, Core ML
fp32 and b4w), each worker advertising ``cpu=1`` so that every step runs
single-threaded; the two runs' ``.pte`` files are compared byte for byte.
Every run prints the load
average and a ``python -c pass`` baseline: figures under load are inflated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "dask"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))  # llm_inputs, bench_pairs (with --model)

CHAIN = """
[targets.a{i}]
step = "command"
command = "cat {{project}}/data.txt > $MODELBUILD_OUT/a.txt"
deps = ["data.txt"]
outs = ["a.txt"]

[targets.b{i}]
step = "command"
inputs = {{ src = "a{i}" }}
command = "tr a-z A-Z < $MODELBUILD_INPUT_SRC/a.txt > $MODELBUILD_OUT/b.txt"
outs = ["b.txt"]

[targets.c{i}]
step = "command"
inputs = {{ src = "b{i}" }}
command = "rev < $MODELBUILD_INPUT_SRC/b.txt > $MODELBUILD_OUT/c.txt"
outs = ["c.txt"]
"""


def project(run: int, kind: str, width: int) -> Path:
    root = WORK / f"{kind}-{run}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "recipes").mkdir(parents=True)
    (root / "data.txt").write_text("data\n")
    (root / "recipes" / "main.toml").write_text("".join(CHAIN.format(i=i) for i in range(width)))
    return root


MATRIX = """
[targets.fetch]
step = "command"
command = "{work} > $MODELBUILD_OUT/ckpt.txt"
deps = ["data.txt"]
outs = ["ckpt.txt"]
""" + "".join(f"""
[targets.export-{b}]
step = "command"
inputs = {{{{ src = "fetch" }}}}
command = "{{work}} > $MODELBUILD_OUT/{b}.txt; echo {b} >> $MODELBUILD_OUT/{b}.txt"
outs = ["{b}.txt"]
""" for b in ("xnnpack", "coreml")) + "".join(f"""
[targets.{b}-{q}]
step = "command"
inputs = {{{{ src = "export-{b}" }}}}
command = "{{work}} > $MODELBUILD_OUT/model.txt; echo {b} {q} >> $MODELBUILD_OUT/model.txt"
outs = ["model.txt"]
""" for b in ("xnnpack", "coreml") for q in ("fp32", "4bit"))
VARIANTS = [f"{b}-{q}" for b in ("xnnpack", "coreml") for q in ("fp32", "4bit")]


def baseline() -> tuple[float, tuple[float, float, float]]:
    """Seconds of ``python -c pass`` now, and the load average."""
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t, os.getloadavg()


def matrix(args) -> None:
    """Two single-threaded workers against one on the matrix (see the module docstring)."""
    from distributed import LocalCluster

    from modelbuild.api import build

    if args.model:
        import llm_inputs
        from bench_pairs import prepare

        prepared = WORK.parent / f"dask-model-{args.model}"  # the weights, written once and kept
        prepared.mkdir(parents=True, exist_ok=True)
        source = Path(prepare("smollm2-fp32", args.model, prepared)["project"])
        recipe, variants = llm_inputs.RECIPE.format(seq=args.max_seq_len), list(llm_inputs.MATRIX)
        steps = "the real steps of " + ", ".join(variants) + f" ({args.model} SmolLM2 shape)"
        ideal = None
    else:
        source = None
        if args.burn:  # CPU work: a busy loop of step-s seconds of CPU time
            work = (f"{sys.executable} -c 'import time; t = time.process_time(); "
                    f"any(time.process_time() - t > {args.step_s} for _ in iter(int, 1)); print(1)'")
        else:
            work = f"sleep {args.step_s}; echo 1"
        recipe, variants = MATRIX.format(work=work), VARIANTS
        steps = f"7 {'CPU-bound' if args.burn else 'sleeping'} command steps of {args.step_s} s; critical path 3 steps"
        ideal = 4 / 7
    times: dict[int, list[float]] = {1: [], 2: []}
    outputs: dict[int, dict[str, bytes]] = {}
    clusters = {n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, resources={"cpu": 1}) for n in (1, 2)}
    before = baseline()
    try:
        # The first run is a warm-up (imports on the workers); with a model it is timed too: its
        # builds are as cold as the others (a fresh cache each), and a model run is long.
        warmups = 0 if args.model else 1
        for run in range(args.runs + warmups):
            for n in ((1, 2) if run % 2 else (2, 1)):
                root = WORK / f"matrix-{n}-{run}"
                shutil.rmtree(root, ignore_errors=True)
                if source:
                    shutil.copytree(source, root, ignore=shutil.ignore_patterns("recipes"))
                (root / "recipes").mkdir(parents=True)
                (root / "data.txt").write_text("data\n")
                (root / "recipes" / "main.toml").write_text(recipe)
                t = time.monotonic()
                result = build(variants, project=root, jobs=n, executor="dask",
                               scheduler=clusters[n].scheduler_address)
                seconds = time.monotonic() - t
                assert result.ok, {k: r.reason for k, r in result.targets.items()}
                print(f"  run {run}, {n} worker(s): {seconds:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
                if run >= warmups:
                    times[n].append(seconds)
                if source:
                    outputs[n] = {v: (root / "out" / v / "model.pte").read_bytes() for v in variants}
                    if len(outputs) == 2:
                        same = [v for v in variants if outputs[1][v] == outputs[2][v]]
                        print(f"  .pte byte-identical on 1 and 2 workers: {len(same)} of {len(variants)}"
                              + ("" if len(same) == len(variants) else f" (differ: {sorted(set(variants) - set(same))})"))
                shutil.rmtree(root, ignore_errors=True)
    finally:
        for c in clusters.values():
            c.close()
        shutil.rmtree(WORK, ignore_errors=True)
    after = baseline()
    print(f"\nfour-variant matrix ({steps}), cold builds on Dask, workers of cpu=1, "
          f"median of {args.runs} interleaved runs")
    print(f"load average {before[1][0]:.1f} before, {after[1][0]:.1f} after; "
          f"`python -c pass` {before[0]:.2f} s before, {after[0]:.2f} s after")
    print(f"{'workers':<10}{'median s':>10}{'min s':>8}{'max s':>8}")
    for n, values in times.items():
        print(f"{n:<10}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    ratios = [b / a for a, b in zip(times[1], times[2])]
    print(f"two workers / one: {statistics.median(times[2]) / statistics.median(times[1]):.2f} (ratio of medians); "
          f"per run pair {' '.join(f'{r:.2f}' for r in ratios)}"
          + (f" (ideal {ideal:.2f}: 7 steps on one worker, 4 step-times on two)" if ideal else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--matrix", action="store_true", help="two workers against one on the four-variant matrix shape")
    ap.add_argument("--step-s", type=float, default=2.0, help="seconds per step (with --matrix)")
    ap.add_argument("--burn", action="store_true", help="steps spend their seconds on the CPU (with --matrix)")
    ap.add_argument("--model", choices=("tiny", "135m"), help="the real matrix of this SmolLM2 size (with --matrix)")
    ap.add_argument("--max-seq-len", type=int, default=128, help="with --model")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` too closes the clusters and cleans up
    if args.matrix:
        return matrix(args)
    before = baseline()

    from distributed import LocalCluster

    from modelbuild.api import build

    started = time.monotonic()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    print(f"cluster start-up: {time.monotonic() - started:.2f} s ({args.workers} worker(s), not counted below)")
    targets = [f"c{i}" for i in range(args.width)]
    jobs = args.workers
    times: dict[str, list[float]] = {"local": [], "dask": []}
    try:
        # One warm-up of each (imports on the workers, the step code's parse cache), then the runs.
        for run in range(args.runs + 1):
            for kind in ("local", "dask"):
                root = project(run, kind, args.width)
                extra = {"executor": "dask", "scheduler": cluster.scheduler_address} if kind == "dask" else {}
                t = time.monotonic()
                result = build(targets, project=root, jobs=jobs, **extra)
                seconds = time.monotonic() - t
                assert result.ok, {n: r.reason for n, r in result.targets.items()}
                if run:
                    times[kind].append(seconds)
    finally:
        cluster.close()
        shutil.rmtree(WORK, ignore_errors=True)
    steps = 3 * args.width
    local, dask = statistics.median(times["local"]), statistics.median(times["dask"])
    after = baseline()
    print(f"\ncold build of {steps} command steps, -j {jobs}, median of {args.runs} runs")
    print(f"load average {before[1][0]:.1f} before, {after[1][0]:.1f} after; "
          f"`python -c pass` {before[0]:.2f} s before, {after[0]:.2f} s after")
    print(f"{'executor':<10}{'median s':>10}{'min s':>8}{'max s':>8}")
    for kind, values in times.items():
        print(f"{kind:<10}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    print(f"dask - local: {dask - local:+.2f} s per build, {(dask - local) / steps:+.3f} s per step")


if __name__ == "__main__":
    main()
