"""What the Dask executor adds to a build: a cold build of a tiny command graph, locally and on Dask.

The graph is the tests' chain (a -> b -> c, three command steps, no ML) plus
``--width`` independent copies of it. Each run starts from an empty cache
(a fresh project directory); local and Dask runs are interleaved, so a change
of load hits both alike. The cluster is a real scheduler and ``--workers``
single-threaded worker processes on 127.0.0.1, started once (its start-up is
printed, not counted). Prints a table of medians and the difference per build
and per step. Run:

    .venv/bin/python bench/bench_dask.py [--runs 5] [--workers 1] [--width 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "dask"
sys.path.insert(0, str(HERE.parent))

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--width", type=int, default=1)
    args = ap.parse_args()

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
    print(f"\ncold build of {steps} command steps, -j {jobs}, median of {args.runs} runs")
    print(f"{'executor':<10}{'median s':>10}{'min s':>8}{'max s':>8}")
    for kind, values in times.items():
        print(f"{kind:<10}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    print(f"dask - local: {dask - local:+.2f} s per build, {(dask - local) / steps:+.3f} s per step")


if __name__ == "__main__":
    main()
