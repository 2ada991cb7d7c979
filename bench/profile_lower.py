"""Where a lowering's time goes: one matrix variant under py-spy, its samples by phase.

Profiles, on the SmolLM2 shape of ``bench_export.py``, either modelbuild's
``lower`` step of one variant (``--tool modelbuild``: the step's inputs are
built first, unprofiled, then ``modelbuild build <variant> --no-fuse -j 1``
runs under ``py-spy record --subprocesses``, so the samples are the lower
step's process: loading the saved program, lowering, writing) or the whole
``export_llm`` run of that variant (``--tool export_llm``: export, quantize
and the same lowering). Each sample (a Python stack, on-CPU samples only) is
given to a stage (``STAGES``: edge conversion, partition and lower,
to_executorch, ...) and, inside it, to the first phase in ``PHASES`` that one
of its frames belongs to, so a phase nested in another (``legalize_graph``
inside partitioning, ``recompile`` inside ``legalize_graph``) is counted where
it is named; the seconds of a phase are its samples divided by the rate. The
table is printed, with the run's wall time beside the sampled total.

Usage::

    .venv/bin/python bench/profile_lower.py --variant xnnpack-8da4w --tool modelbuild --workdir /tmp/prof-mb
    .venv/bin/python bench/profile_lower.py --variant xnnpack-8da4w --tool export_llm --workdir /tmp/prof-et
    .venv/bin/python bench/profile_lower.py --size tiny --variant xnnpack-8da4w --workdir /tmp/prof-tiny  # smoke test

``OMP_NUM_THREADS`` is ``--threads`` (default 1: two profiles may run side by
side on two cores). py-spy samples without pausing the process unless
``--blocking`` (py-spy's own default, which stops the process at each
sample). py-spy comes with the ``test`` extra. The raw stacks are
kept in the work directory (``profile-<tool>-<variant>.raw``) for a closer
look (``--from-raw`` re-reads one without running anything).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_inputs  # noqa: E402
from bench_pairs import prepare  # noqa: E402
from llm_inputs import MATRIX, PY, ROOT  # noqa: E402

#: (phase, frame test), most specific first: a sample goes to the first phase any of its frames matches.
#: A frame is ``(function, file)``: the function without its class or enclosing function
#: (py-spy's ``XnnpackBackend.preprocess`` is ``preprocess``), the file with its full path.
PHASES: list[tuple[str, object]] = [
    ("XNNPACK preprocess: its graph passes (each re-traces the partition)",
     lambda f, p: f == "transform" and "xnnpack/_passes/" in p),
    ("XNNPACK preprocess: the rest (weights, serialization)",
     lambda f, p: f == "preprocess" and p.endswith("xnnpack_preprocess.py")),
    ("Core ML preprocess (conversion to a Core ML program)",
     lambda f, p: f == "preprocess" and "backends/apple/coreml" in p),
    ("legalize_graph (a topological sort and copy of the whole graph)", lambda f, p: f == "legalize_graph"),
    ("GraphModule.recompile (Python code of the whole graph)",
     lambda f, p: f == "recompile" and p.endswith("torch/fx/graph_module.py")),
    ("ExportedProgram._validate (the verifier over the whole program)",
     lambda f, p: f == "_validate" and p.endswith("torch/export/exported_program.py")),
    ("the partitioner (which nodes go to the backend)",
     lambda f, p: f == "partition" and ("/partition/" in p or "partitioner" in p)),
    ("per partition: submodule, sub-program, insertion (the rest)",
     lambda f, p: "exir/backend/" in p or p.endswith("exir/lowered_backend_module.py")),
    ("to_executorch (passes, memory planning, emit)", lambda f, p: f == "to_executorch" and "exir/program/" in p),
    ("write the .pte", lambda f, p: f == "write_to_file"),
    ("run_decompositions (a re-trace of the whole program)", lambda f, p: f == "run_decompositions"),
    ("edge dialect conversion and passes",
     lambda f, p: f in {"_gen_edge_manager_for_partitioners", "_generate_edge_program", "to_edge_transform_and_lower",
                        "to_edge"} and "exir/program/" in p),
    ("quantize (torchao)", lambda f, p: f in {"quantize_", "quantize_program"} or "/torchao/quantization/" in p),
    ("torch.export (trace)", lambda f, p: "torch/export/" in p and f in {"export", "_export", "export_for_training"}),
    ("load the saved program",
     lambda f, p: f in {"load_program", "load"} and ("torch/export/" in p or "modelbuild/ml/program.py" in p)),
    ("imports", lambda f, p: f in {"_find_and_load", "_call_with_frames_removed"}),
]
OTHER = "other"

#: The stage a sample is in (first match): the table groups the phases above by it.
STAGES: list[tuple[str, object]] = [
    ("partition and lower (to_backend)", lambda f, p: f == "to_backend" and "exir/" in p),
    ("edge conversion", lambda f, p: f in {"_gen_edge_manager_for_partitioners", "_generate_edge_program", "to_edge"}
     and "exir/program/" in p),
    ("to_executorch", lambda f, p: f == "to_executorch" and "exir/program/" in p),
    ("write", lambda f, p: f == "write_to_file"),
    ("quantize", lambda f, p: f in {"quantize_", "quantize_program"}),
    ("torch.export", lambda f, p: "torch/export/" in p and f in {"export", "_export", "export_for_training"}),
    ("load", lambda f, p: f in {"load_program", "load"} and ("torch/export/" in p or "modelbuild/ml/program.py" in p)),
]

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<path>.+?):\d+\)$")


def first_match(rules: list[tuple[str, object]], stack: list[tuple[str, str]]) -> str:
    for name, test in rules:
        if any(test(f, p) for f, p in stack):
            return name
    return OTHER


def waiting(innermost: tuple[str, str]) -> bool:
    """A thread blocked in ``threading`` (the build's main thread waiting for its step), which
    py-spy can count as active: not part of any phase."""
    f, p = innermost
    return p.endswith("threading.py") and f in {"wait", "_wait_for_tstate_lock", "acquire"}


def classify(stack: list[tuple[str, str]]) -> tuple[str, str]:
    """(stage, phase) of one sample."""
    return first_match(STAGES, stack), first_match(PHASES, stack)


def read_raw(path: Path) -> Counter:
    """Samples per phase from py-spy's raw (collapsed) output: ``frame;frame;... count`` per line."""
    phases: Counter = Counter()
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for frame in stack_text.split(";"):
            m = _FRAME.match(frame)
            if m:  # "process N:..." frames (--subprocesses) name no function
                frames.append((m["func"].rsplit(".", 1)[-1], m["path"]))
        if frames and not waiting(frames[-1]):
            phases[classify(frames)] += int(count)
    return phases


def table(phases: Counter, rate: float, wall: float | None, title: str) -> list[str]:
    """Seconds and share per stage, and per phase inside each stage, largest first."""
    total = sum(phases.values())
    stages: Counter = Counter()
    for (stage, _), n in phases.items():
        stages[stage] += n
    lines = [f"== {title} ==",
             f"  {'stage / phase':<78} {'seconds':>8} {'share':>6}"]
    for stage in sorted(stages, key=lambda s: -stages[s]):
        lines.append(f"  {stage:<78} {stages[stage] / rate:8.1f} {100 * stages[stage] / total:5.1f}%")
        inside = sorted(((ph, n) for (st, ph), n in phases.items() if st == stage), key=lambda x: -x[1])
        for phase, n in inside:
            lines.append(f"    {phase:<76} {n / rate:8.1f} {100 * n / total:5.1f}%")
    lines.append(f"  {'sampled on CPU (all stages)':<78} {total / rate:8.1f}")
    if wall is not None:
        lines.append(f"  {'wall time of the profiled run':<76} {wall:8.1f}")
    return lines


def producers_of(recipe: str, target: str) -> list[str]:
    inputs = tomllib.loads(recipe)["targets"][target].get("inputs", {})
    return [v for v in inputs.values() if isinstance(v, str)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=MATRIX, default="xnnpack-8da4w")
    parser.add_argument("--tool", choices=("modelbuild", "export_llm"), default="modelbuild")
    parser.add_argument("--size", default="135m")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="py-spy samples per second")
    parser.add_argument("--blocking", action="store_true",
                        help="pause the process for each sample (py-spy's default; a little slower)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--from-raw", type=Path, help="only read this raw profile (written by an earlier run)")
    args = parser.parse_args(argv)

    title = (f"{args.tool}, {args.variant} ({args.size}), py-spy at {args.rate:g} Hz"
             f"{' (blocking)' if args.blocking else ''}, OMP_NUM_THREADS={args.threads}")
    if args.from_raw:
        print("\n".join(table(read_raw(args.from_raw), args.rate, None, title)))
        return 0
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    paths = prepare("smollm2-fp32", args.size, work)
    raw, log = work / f"profile-{args.tool}-{args.variant}.raw", work / f"profile-{args.tool}-{args.variant}.log"
    if args.tool == "modelbuild":
        project = Path(paths["project"])
        recipe = llm_inputs.write_recipe(project, args.max_seq_len)
        cache, out = work / "cache", work / "out"
        for d in (cache, out):
            shutil.rmtree(d, ignore_errors=True)
        base = [PY, "-m", "modelbuild.cli", "build", "--project", str(project), "--cache-dir", str(cache),
                "--out-dir", str(out), "-q"]
        subprocess.run([*base, *producers_of(recipe, args.variant)], cwd=ROOT, env=env, check=True)
        cmd, cwd = [*base, args.variant, "--no-fuse", "-j", "1"], ROOT
    else:
        out = work / "out-et"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cmd = llm_inputs.export_llm_cmd(args.variant, Path(paths["meta"]), out, paths["metadata"],
                                        args.max_seq_len, "smollm2")
        cwd = out
    start = time.perf_counter()
    with open(log, "w") as f:
        spy_args = ["record", "--rate", f"{args.rate:g}", "--format", "raw", "--full-filenames", "--subprocesses",
                    "--output", str(raw)] + ([] if args.blocking else ["--nonblocking"])
        done = subprocess.run([spy, *spy_args, "--", *cmd],
                              cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(f"the profiled run failed (exit {done.returncode}); see {log}", file=sys.stderr)
        return 1
    print("\n".join(table(read_raw(raw), args.rate, wall, title)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
