"""Full-check no-op time at 20, 100 and 1,000 `command` targets.

`modelbuild build --full-check` when nothing changed is what every
edit-and-rebuild pays before any step runs: parse the recipes, import the step
plugins the graph uses, build the graph, fingerprint the step code, and read
the stat cache and the action cache for every target. This prints, for each
graph size, the median (and min, max) wall time of that no-op beside
`python -c pass` measured in the same run (interleaved), the fast-path no-op
for reference, and the time the step-code fingerprints take in a fresh
process (what the automatic import closure adds to a full-check no-op).

Graph: chains of 10 `command` targets, each chain's head declaring a small
source file, and one target `all` consuming every chain's tail (so the default
target's closure is the whole graph). Run:

    .venv/bin/python bench/bench_fullcheck.py [--sizes 20 100 1000] [--runs 9] [--keep] [--no-bytecode]
        [--baseline-src DIR]

``--baseline-src DIR`` measures another source tree of modelbuild (say the
last commit: ``git archive HEAD modelbuild | tar -x -C DIR``) on its own copy
of the projects, interleaved with this one, so both see the same load.

Child processes run with Python's default bytecode caching unless
``--no-bytecode`` (PYTHONDONTWRITEBYTECODE=1, as some CI setups do: every
module is then compiled from source in every process).

The cold build of the 1,000-target graph runs 1,000 steps (a few minutes on
2 cores); ``--keep`` reuses the projects and caches of an earlier run.
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
WORK = HERE / "_work" / "fullcheck"


def make_project(n: int, work: Path = WORK) -> Path:
    root = work / f"n{n}"
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    lines = ['default = "all"\n']
    tails = []
    for i in range(n - 1):
        name = f"t{i:04d}"
        if i % 10 == 0:
            src = root / "src" / f"s{i // 10:03d}.txt"
            if not src.exists():
                src.write_text(f"chain {i // 10}\n")
            lines.append(f'[targets.{name}]\nstep = "command"\ndeps = ["src/{src.name}"]\n'
                         f'command = "cat {{project}}/src/{src.name} > $MODELBUILD_OUT/o"\n')
        else:
            lines.append(f'[targets.{name}]\nstep = "command"\ninputs = {{ prev = "t{i - 1:04d}" }}\n'
                         f'command = "cat $MODELBUILD_INPUT_PREV/o > $MODELBUILD_OUT/o; echo {i} >> $MODELBUILD_OUT/o"\n')
        if i % 10 == 9 or i == n - 2:
            tails.append(name)
    parts = ", ".join(f'"{t}"' for t in tails)
    lines.append(f'[targets.all]\nstep = "command"\ninputs = {{ parts = [{parts}] }}\n'
                 """command = 'for d in $(echo "$MODELBUILD_INPUT_PARTS" | tr : " "); do cat "$d/o"; done > "$MODELBUILD_OUT/o"'\n""")
    text = "\n".join(lines)
    recipe = root / "recipes" / "graph.toml"
    if not recipe.exists() or recipe.read_text() != text:
        recipe.write_text(text)
    return root


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr[-2000:]}")
    return elapsed


#: In a fresh process, as the engine does it for a graph of ``command``
#: targets (step class imported, parse index in the store warm): the step-code
#: fingerprint (the import closure), and for comparison what the hand-written
#: fingerprint it replaced cost (hashing the step's module file alone), and the
#: closure of every built-in step (a graph that uses them all).
FINGERPRINT_PROBE = """
import sys, time
from pathlib import Path
import blake3
from modelbuild.plugins import Registry
from modelbuild.store import Store
store = Store(Path(sys.argv[1]))
reg = Registry.discover()
steps = sys.argv[2:]
rest = [i for i in reg if i.name not in steps]
for info in reg:
    info.cls  # the engine has every used step class imported already (the graph binds them)
t0 = time.perf_counter()
for name in steps:
    blake3.blake3(Path(sys.modules[reg.get(name).module].__file__).read_bytes()).hexdigest()
t1 = time.perf_counter()
for name in steps:
    reg.get(name).code(store.cache)
t2 = time.perf_counter()
for info in rest:
    info.code(store.cache)
t3 = time.perf_counter()
store.close()
print(f"{(t1 - t0) * 1000:.3f} {(t2 - t1) * 1000:.3f} {(t3 - t2) * 1000:.3f}")
"""


def fingerprint_ms(cache: Path, runs: int, env: dict[str, str]) -> tuple[float, float, float]:
    samples = []
    for _ in range(runs + 1):  # the first run fills the parse index of the other steps
        out = subprocess.run([sys.executable, "-c", FINGERPRINT_PROBE, str(cache), "command"],
                             capture_output=True, text=True, check=True, env=env)
        samples.append([float(x) for x in out.stdout.split()])
    return tuple(statistics.median(col) for col in zip(*samples[1:]))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--keep", action="store_true", help="reuse projects and caches from an earlier run")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="run every process with PYTHONDONTWRITEBYTECODE=1 (modules compiled from source each time)")
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="also measure another modelbuild source tree (DIR holds its modelbuild/, e.g. from "
                         "`git archive <commit> modelbuild | tar -x -C DIR`), interleaved with this one")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # Python's default: .pyc files cached
    trees = [("now", WORK, env)]
    if args.baseline_src is not None:
        other = {**env, "PYTHONPATH": os.pathsep.join([str(args.baseline_src.resolve()), env.get("PYTHONPATH", "")])}
        trees.append(("baseline", WORK / "baseline", other))
    mb = [sys.executable, "-m", "modelbuild.cli", "build", "-q", "-j", "2"]
    quick = [sys.executable, "-m", "modelbuild.cli", "build", "-q"]  # the fast path's own command line
    rows = []
    for n in args.sizes:
        roots = []
        for label, work, tree_env in trees:
            root = make_project(n, work)
            if not args.keep:
                for leftover in ("cache", "out"):
                    shutil.rmtree(root / leftover, ignore_errors=True)
            cold = timed(mb + ["--full-check"], root, tree_env)
            roots.append((label, root, tree_env, cold))
        time.sleep(2.2)  # leave the racy-file window of the outputs just written
        for label, root, tree_env, cold in roots:
            timed(mb + ["--full-check"], root, tree_env)
            timed(quick, root, tree_env)  # records the fast-path state
        samples = {label: ([], [], []) for label, *_ in roots}
        for _ in range(args.runs):  # interleaved, so that load changes hit all alike
            for label, root, tree_env, cold in roots:
                baseline, full, fast = samples[label]
                baseline.append(timed([sys.executable, "-c", "pass"], root, env))
                full.append(timed(mb + ["--full-check"], root, tree_env))
                fast.append(timed(quick, root, tree_env))
        for label, root, tree_env, cold in roots:
            rows.append((label, n, cold, *samples[label]))
    fp = fingerprint_ms(WORK / f"n{args.sizes[0]}" / "cache", args.runs, env)
    mode = "PYTHONDONTWRITEBYTECODE=1" if args.no_bytecode else "bytecode cached (Python's default)"
    print(f"no-op builds, median of {args.runs} runs each; {mode}; "
          "full check: build -q -j 2 --full-check; fast path: build -q")
    print(f"{'tree':<12} {'targets':>7} {'cold build s':>12} {'python -c pass s':>16} {'full-check s':>12} {'min s':>7} "
          f"{'max s':>7} {'x pass':>6} {'fast path s':>11} {'x pass':>6}")
    for label, n, cold, baseline, full, fast in rows:
        py, med, fast_med = statistics.median(baseline), statistics.median(full), statistics.median(fast)
        print(f"{label:<12} {n:>7} {cold:12.2f} {py:16.3f} {med:12.3f} {min(full):7.3f} {max(full):7.3f} "
              f"{med / py:6.1f} {fast_med:11.3f} {fast_med / py:6.1f}")
    print(f"step-code fingerprint in a fresh process (median): command {fp[1]:.2f} ms "
          f"(the hand-written fingerprint it replaced: {fp[0]:.2f} ms); every other built-in step {fp[2]:.2f} ms")


if __name__ == "__main__":
    main()
