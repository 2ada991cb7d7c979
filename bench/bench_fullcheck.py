"""Full-check no-op time at 20, 100 and 1,000 `command` targets.

`modelbuild build --full-check` when nothing changed is what every
edit-and-rebuild pays before any step runs: bind the graph (from the
bound-graph cache when its recipes, overrides and code are unchanged:
modelbuild/graph_cache.py; else parse the recipes, import the step plugins
the graph uses and validate every target's params), fingerprint the step
code, and read the stat cache and the action cache for every target. This
prints, for each graph size, the median (and min, max) wall time of that
no-op beside `python -c pass` measured in the same run (interleaved), the
same no-op with the bound-graph cache switched off (``MODELBUILD_BOUND_CACHE=0``:
the graph bound afresh, as before), the fast-path no-op for reference, and the
time the code fingerprints take in a fresh process (what the automatic import
closure adds to a full-check no-op). ``--breakdown`` adds where the time of
one full-check no-op goes (imports, phases).

Graph: chains of 10 `command` targets, each chain's head declaring a small
source file, and one target `all` consuming every chain's tail (so the default
target's closure is the whole graph). Run:

    .venv/bin/python bench/bench_fullcheck.py [--sizes 20 100 1000] [--runs 9] [--keep] [--no-bytecode]
        [--baseline-src DIR] [--breakdown] [--no-unbound]

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
import resource
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


def timed(cmd: list[str], cwd: Path, env: dict[str, str], cpu: list[float] | None = None) -> float:
    """Wall time of ``cmd``; its CPU time (user + system; steadier than wall time on a loaded machine) goes to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr[-2000:]}")
    return elapsed


#: In a fresh process, the code fingerprints of a full-check no-op of ``command``
#: targets, each as the build computes it: the step's import closure with the
#: bound-graph cache's parse index (no module parsed, every file read and hashed:
#: graph_cache.py), the binding code's closure (part of that cache's key), and
#: for comparison the hand-written fingerprint the closure replaced (the step's
#: module file alone) and the closures of every other built-in step.
FINGERPRINT_PROBE = """
import sys, time
from pathlib import Path
import blake3
from modelbuild.fingerprint import step_code
from modelbuild.graph_cache import CodeIndex
from modelbuild.plugins import Registry
import importlib.util
reg = Registry.discover()
index = CodeIndex(Path(sys.argv[1]) / "bound" / "imports.json")
info = reg.get("command")
origin = Path(importlib.util.find_spec(info.module).origin)
others = [i for i in reg if i.name != "command"]
declared = [(i.module, i.cls.code_modules, i.cls.code_files) for i in others]  # imports them, untimed
t0 = time.perf_counter()
blake3.blake3(origin.read_bytes()).hexdigest()
t1 = time.perf_counter()
step_code(info.module, (), (), index=index)  # what the bound graph's check computes for the command step
t2 = time.perf_counter()
step_code("modelbuild.graph_cache", index=index)
t3 = time.perf_counter()
for module, modules, files in declared:
    step_code(module, modules, files, index=index)
t4 = time.perf_counter()
index.save()
print(f"{(t1 - t0) * 1000:.3f} {(t2 - t1) * 1000:.3f} {(t3 - t2) * 1000:.3f} {(t4 - t3) * 1000:.3f}")
"""


def fingerprint_ms(cache: Path, runs: int, env: dict[str, str]) -> tuple[float, ...]:
    samples = []
    for _ in range(runs + 1):  # the first run fills the parse index of the other steps
        out = subprocess.run([sys.executable, "-c", FINGERPRINT_PROBE, str(cache)],
                             capture_output=True, text=True, check=True, env=env)
        samples.append([float(x) for x in out.stdout.split()])
    return tuple(statistics.median(col) for col in zip(*samples[1:]))


#: One full-check no-op, in process, with the time of its phases (each wraps the
#: function that does it) and of the imports done before the build starts.
PHASES_PROBE = """
import sys, time
t0 = time.perf_counter()
from modelbuild import cli, graph_cache, fingerprint, plugins, engine, store, fastpath
import modelbuild.build_verb, modelbuild.api.build, modelbuild.progress, modelbuild.dask_executor, modelbuild.remote
t_imports = time.perf_counter() - t0
spent = {}
def wrap(owner, name, label):
    real = getattr(owner, name)
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, timed)
wrap(plugins.Registry, "discover", "plugin discovery")
wrap(graph_cache, "step_code", "code fingerprints (bound-graph key)")
wrap(plugins.StepInfo, "code_if", "code fingerprints (steps used)")
wrap(graph_cache, "_load", "bound graph: read the entry")
wrap(graph_cache.BuildGraph, "build", "bind afresh (parse, import steps, validate)")
wrap(store, "Store", "open the store")
wrap(engine.Engine, "build", "per-target check (hash sources, keys, records, out/)")
wrap(fastpath, "record_noop", "record the fast-path state")
t1 = time.perf_counter()
code = cli.main(["build", "-q", "-j", "2", "--full-check"])
total = time.perf_counter() - t1
assert code == 0, code
print(f"imports before the build (cli, api, engine, store; no click)\\t{t_imports * 1000:.1f}")
for label, secs in spent.items():
    print(f"{label}\\t{secs * 1000:.1f}")
print(f"the build command, all told\\t{total * 1000:.1f}")
"""


def breakdown(root: Path, env: dict[str, str]) -> None:
    """Where one full-check no-op's time goes: phases (median of 5) and the largest imports."""
    rows: dict[str, list[float]] = {}
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", PHASES_PROBE], cwd=root, env=env, capture_output=True, text=True,
                             check=True)
        for line in out.stdout.splitlines():
            label, ms = line.rsplit("\t", 1)
            rows.setdefault(label, []).append(float(ms))
    print(f"where a full-check no-op's time goes ({root.name}, in process, median of 5; a phase that did not "
          "happen in every run says in how many it did):")
    for label, got in rows.items():
        runs = "" if len(got) == 5 else f"  (in {len(got)} of 5 runs)"
        print(f"  {label:<58} {statistics.median(got):8.1f} ms{runs}")
    imports: dict[str, list[float]] = {}
    for _ in range(5):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "modelbuild.cli", "build", "-q", "-j", "2",
                              "--full-check"], cwd=root, env=env, capture_output=True, text=True, check=True)
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
                continue
            _, cumulative, name = line.split("|")
            if name.startswith("  "):  # only what the build itself asked for (top level); nested ones are inside
                continue
            imports.setdefault(name.strip(), []).append(int(cumulative) / 1000)
    top = sorted(((statistics.median(v), k) for k, v in imports.items()), reverse=True)
    total = sum(ms for ms, _ in top)
    print(f"  top-level imports (python -X importtime; median of 5): {total:.1f} ms in all; the largest:")
    for ms, name in top[:12]:
        print(f"    {name:<40} {ms:8.1f} ms")


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
    ap.add_argument("--breakdown", action="store_true", help="also print where one full-check no-op's time goes")
    ap.add_argument("--no-unbound", action="store_true",
                    help="skip the MODELBUILD_BOUND_CACHE=0 runs (a quicker now-against-baseline comparison)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # Python's default: .pyc files cached
    env.pop("MODELBUILD_BOUND_CACHE", None)
    unbound_env = {**env, "MODELBUILD_BOUND_CACHE": "0"}
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
            timed(mb + ["--full-check"], root, tree_env)  # keeps the bound graph (the cache exists now)
            timed(quick, root, tree_env)  # records the fast-path state
        samples = {label: ([], [], [], [], [], []) for label, *_ in roots}
        for _ in range(args.runs):  # interleaved, so that load changes hit all alike
            for label, root, tree_env, cold in roots:
                baseline, full, unbound, fast, base_cpu, full_cpu = samples[label]
                baseline.append(timed([sys.executable, "-c", "pass"], root, env, base_cpu))
                full.append(timed(mb + ["--full-check"], root, tree_env, full_cpu))
                if label == "now" and not args.no_unbound:
                    unbound.append(timed(mb + ["--full-check"], root, unbound_env))
                fast.append(timed(quick, root, tree_env))
        for label, root, tree_env, cold in roots:
            rows.append((label, n, cold, *samples[label]))
    fp = fingerprint_ms(WORK / f"n{args.sizes[0]}" / "cache", args.runs, env)
    mode = "PYTHONDONTWRITEBYTECODE=1" if args.no_bytecode else "bytecode cached (Python's default)"
    print(f"no-op builds, median of {args.runs} runs each; {mode}; "
          "full check: build -q -j 2 --full-check; unbound: the same with MODELBUILD_BOUND_CACHE=0; fast path: build -q")
    print(f"{'tree':<9} {'targets':>7} {'cold build s':>12} {'python -c pass s':>16} {'full-check s':>12} {'min s':>6} "
          f"{'max s':>6} {'x pass':>6} {'unbound s':>9} {'x pass':>6} {'fast path s':>11} {'x pass':>6} "
          f"{'CPU: pass s':>11} {'full-check s':>12}")
    for label, n, cold, baseline, full, unbound, fast, base_cpu, full_cpu in rows:
        py, med, fast_med = statistics.median(baseline), statistics.median(full), statistics.median(fast)
        ub = f"{statistics.median(unbound):9.3f} {statistics.median(unbound) / py:6.1f}" if unbound else f"{'-':>9} {'-':>6}"
        print(f"{label:<9} {n:>7} {cold:12.2f} {py:16.3f} {med:12.3f} {min(full):6.3f} {max(full):6.3f} "
              f"{med / py:6.1f} {ub} {fast_med:11.3f} {fast_med / py:6.1f} "
              f"{statistics.median(base_cpu):11.3f} {statistics.median(full_cpu):12.3f}")
    small = statistics.median(rows[0][4])
    print(f"code fingerprints in a fresh process (median): command step {fp[1]:.2f} ms + binding code "
          f"{fp[2]:.2f} ms = {fp[1] + fp[2]:.2f} ms, {100 * (fp[1] + fp[2]) / 1000 / small:.1f} % of the "
          f"{rows[0][1]}-target full-check no-op (the hand-written fingerprint it replaced: {fp[0]:.2f} ms); "
          f"every other built-in step {fp[3]:.2f} ms")
    if args.breakdown:
        for n in args.sizes:
            breakdown(WORK / f"n{n}", env)


if __name__ == "__main__":
    main()
