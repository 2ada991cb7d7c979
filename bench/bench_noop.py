"""No-op build time on a 20-target graph whose leaf input is a 2 GB file.

Prints a table: median wall time of `modelbuild build` when nothing changed,
through the fast path (stat checks only) and with --full-check (every action
key recomputed: recipes parsed, graph built, stat cache and action cache read),
beside `python -c pass` for Python's own start-up (the three are interleaved,
so that a change of load hits them alike; the "x pass" column is the ratio of
medians). Run:

    .venv/bin/python bench/bench_noop.py [--size-gb 2] [--runs 15] [--no-bytecode]

Child processes run with Python's default bytecode caching unless
``--no-bytecode`` (PYTHONDONTWRITEBYTECODE=1: every module is compiled from
source in every process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "noop"


def make_project(size_gb: float) -> Path:
    root = WORK
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    data = root / "data" / "weights.bin"
    size = int(size_gb * (1 << 30))
    if not data.exists() or data.stat().st_size != size:
        data.parent.mkdir(parents=True, exist_ok=True)
        with open(data, "wb") as fh:
            chunk = os.urandom(1 << 20)
            for _ in range(size // len(chunk)):
                fh.write(chunk)
    lines = ['default = "t19"\n']
    lines.append('[targets.t00]\nstep = "command"\ndeps = ["data/weights.bin"]\n'
                 'command = "stat -c %s {project}/data/weights.bin > $MODELBUILD_OUT/size"\n')
    for i in range(1, 20):
        lines.append(f'[targets.t{i:02d}]\nstep = "command"\ninputs = {{ prev = "t{i - 1:02d}" }}\n'
                     f'command = "cat $MODELBUILD_INPUT_PREV/* > $MODELBUILD_OUT/out{i}; echo {i} >> $MODELBUILD_OUT/out{i}"\n')
    (root / "recipes" / "chain.toml").write_text("\n".join(lines))
    return root


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--no-bytecode", action="store_true", help="run every process with PYTHONDONTWRITEBYTECODE=1")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    root = make_project(args.size_gb)
    for leftover in ("cache", "out"):  # a truly cold first build
        shutil.rmtree(root / leftover, ignore_errors=True)
    mb = [sys.executable, "-m", "modelbuild.cli", "build", "-q"]
    first = timed(mb + ["--full-check"], root, env)  # cold: hashes the 2 GB input once, runs 20 steps
    time.sleep(2.2)  # leave the racy-file window of the outputs just written
    timed(mb + ["--full-check"], root, env)
    timed(mb, root, env)  # records the fast-path state after the racy window
    commands = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("modelbuild build (no-op)", mb),
        ("modelbuild build --full-check (no-op)", mb + ["--full-check"]),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in commands}
    for _ in range(args.runs):
        for label, cmd in commands:
            samples[label].append(timed(cmd, root, env))
    mode = "PYTHONDONTWRITEBYTECODE=1" if args.no_bytecode else "bytecode cached (Python's default)"
    print(f"20-target chain, leaf input {args.size_gb:g} GB; first (cold) build {first:.2f} s; "
          f"{args.runs} runs each; {mode}")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'x pass':>6}")
    base = statistics.median(samples["python -c pass"])
    for label, _ in commands:
        got = samples[label]
        med = statistics.median(got)
        print(f"{label:<40} {med:9.3f} {min(got):7.3f} {max(got):7.3f} {med / base:6.1f}")


if __name__ == "__main__":
    main()
