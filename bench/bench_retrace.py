"""Benchmark: XNNPACK lowering with and without skipping idle re-traces, in interleaved pairs.

``modelbuild.ml.retrace.skip_idle_retraces`` (on in every XNNPACK lowering)
returns a partition's graph instead of re-tracing it when no XNNPACK pass
changed it since the last re-trace. This script lowers the same program (the
SmolLM2 shape of ``bench_export.py``: the ``q8da4w`` program for
``xnnpack-8da4w``, the ``export`` program for ``xnnpack-fp32``) with the
``lower`` step, once with the skip (``skip``) and once with
``MODELBUILD_XNNPACK_SKIP_RETRACES=0`` (``every``), in interleaved pairs (A B,
B A, ...), each run a fresh process measured as ``bench_pairs.measure``
measures (wall, CPU-seconds of the process tree, the largest process peak,
load average before and after), with the same ``OMP_NUM_THREADS``. It prints
each run, the per-pair ratios skip / every with their median, min and max,
how many re-traces the skip saved, and whether the two ``.pte`` files are the
same bytes (they must be).

The program to lower is built once, unmeasured, with ``modelbuild build``.

Usage::

    .venv/bin/python bench/bench_retrace.py --variant xnnpack-8da4w --pairs 1 --workdir /tmp/retrace
    .venv/bin/python bench/bench_retrace.py --size tiny --pairs 1 --workdir /tmp/retrace-tiny   # smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_inputs  # noqa: E402
from bench_pairs import measure, prepare, ratio_lines, run_line  # noqa: E402
from llm_inputs import PY, ROOT  # noqa: E402

from modelbuild.ml.download import file_sha256  # noqa: E402

#: Runs the lower step on a built program: argv = program dir, its target, out dir, backend.
LOWER = """
import sys
from pathlib import Path
from modelbuild.artifacts import Artifact
from modelbuild.steps.lower import LowerStep
from modelbuild.testing import run_step
program, target, out, backend = sys.argv[1:]
art = Artifact(kind="exported-program", path=Path(program), digest="bench:" + target, target=target)
run_step(LowerStep, {"backend": backend}, {"program": art}, Path(out))
"""

PROGRAM_OF = {"xnnpack-8da4w": "q8da4w", "xnnpack-fp32": "export"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(PROGRAM_OF), default="xnnpack-8da4w")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--size", default="135m")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare("smollm2-fp32", args.size, work)
    project = Path(paths["project"])
    llm_inputs.write_recipe(project, args.max_seq_len)
    target = PROGRAM_OF[args.variant]
    built = work / "out-program"
    if not (built / target).exists():
        subprocess.run([PY, "-m", "modelbuild.cli", "build", target, "--project", str(project), "--cache-dir",
                        str(work / "cache"), "--out-dir", str(built), "-q"], cwd=ROOT, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    print(f"work dir {work}; {os.cpu_count()} cores; lowering {target} for {args.variant} ({args.size}), "
          f"OMP_NUM_THREADS={args.threads}", flush=True)
    print(f"  {'':6} {'run':<10} {'wall s':>8} {'cpu s':>8} {'proc pk':>9} {'tree pk':>9} {'raw sum':>9} "
          f"{'cgroup':>9} {'load<':>6} {'load>':>6}   (memory in MB)", flush=True)
    pairs, digests, notes = [], {}, {}
    for i in range(args.pairs):
        runs = {}
        for label in (("skip", "every") if i % 2 == 0 else ("every", "skip")):
            out = work / f"pte-{label}"
            shutil.rmtree(out, ignore_errors=True)
            log = work / f"log-{i}-{label}.txt"
            run_env = {**env, "MODELBUILD_XNNPACK_SKIP_RETRACES": "1" if label == "skip" else "0"}
            run = measure(label, [PY, "-c", LOWER, str(built / target), target, str(out), "xnnpack"], ROOT, log,
                          run_env, None)
            runs[label] = run
            print(run_line(i, run), flush=True)
            if run.ok:
                digests.setdefault(label, set()).add(file_sha256(out / "model.pte"))
                notes[label] = [line for line in log.read_text().splitlines() if "re-traces skipped" in line]
        if runs["skip"].ok and runs["every"].ok:
            pairs.append((runs["skip"], runs["every"]))
    if pairs:
        print("\n".join(ratio_lines(pairs, "skip / every")))
    print("  the skip's log: " + ("; ".join(notes.get("skip", [])) or "no line"))
    print("  without it: " + ("; ".join(notes.get("every", [])) or "no line (as expected)"))
    same = len(digests.get("skip", set()) | digests.get("every", set())) == 1
    print(f"  .pte of every run the same bytes: {'yes' if same else 'NO'} "
          f"({', '.join(sorted(d[:12] for d in digests.get('skip', set()) | digests.get('every', set())))})")
    return 0 if same and len(pairs) == args.pairs else 1


if __name__ == "__main__":
    sys.exit(main())
